"""`instaboost calibrate` and its local sweep on the real default model: the table, the stop rule, the CSV."""

from __future__ import annotations

import csv
import json

import pytest

from shared.calibration import format_table, sweep_settings, table_csv
from shared.errors import ValidationError
from shared.evaluation.cases import parse_cases
from shared.spec import GenerationParams

CASES = """
- name: lower
  instruction: Write everything in lowercase letters only.
  query: Name two colours.
  check: {type: lowercase}
- name: french
  instruction: Answer only in French.
  query: What is the capital of Italy?
  check: {type: regex, value: "(?i)\\\\b(le|la|est|capitale)\\\\b"}
- name: short
  instruction: Answer in at most five words.
  query: What is the sun?
  check: {type: max_words, value: 5}
"""


def test_settings_are_layer_modes_times_head_fractions_and_bad_ones_are_refused():
    assert [s.label for s in sweep_settings(["all", "middle"], [1, 0.5])] == \
        ["all", "middle", "all, 50% heads", "middle, 50% heads"]
    with pytest.raises(ValidationError) as exc:
        sweep_settings(["al"], [0])
    assert {e["field"] for e in exc.value.errors} == {"layer_modes[0]", "head_fractions[0]"}


def test_the_local_sweep_walks_the_grid_and_the_stop_rule_ends_it(fast_engine):
    from worker.calibrate import calibrate_local

    cases = parse_cases(CASES, "yaml")
    params = GenerationParams(max_new_tokens=6)
    # A floor no output can reach: the walk stops at the shared baseline, no boosted M is generated.
    out = calibrate_local(fast_engine, cases, grid=(1, 3, 5), settings=sweep_settings(["all", "middle"]),
                          floor=2.01, params=params, n_boot=50, log=lambda m: None)
    assert out["multipliers_run"] == [1.0]
    assert {r["multiplier"] for r in out["records"]} == {1.0} and len(out["records"]) == 3
    assert out["summary"]["recommended"] is None

    # Floor 0: every M of the grid runs for every setting, both halves, and one M is recommended.
    out = calibrate_local(fast_engine, cases, grid=(1, 3, 5), settings=sweep_settings(["all", "middle"]),
                          floor=0.0, params=params, n_boot=50, log=lambda m: None)
    assert out["multipliers_run"] == [1.0, 3.0, 5.0]
    assert len(out["records"]) == 3 + 2 * 2 * 3
    assert {r["split"] for r in out["records"]} == {"validation", "test"}
    rec = out["summary"]["recommended"]
    assert rec["multiplier"] in (1.0, 3.0, 5.0) and rec["layers"] in ("all", "middle")
    text = format_table(out["summary"])
    assert "recommended: M=" in text and "effective" in text and "strict" in text and "defl" in text
    rows = list(csv.DictReader(table_csv(out["summary"]).splitlines()))
    assert sum(r["recommended"] == "True" for r in rows) >= 1


def test_scope_and_target_mass_are_swept_as_settings(fast_engine):
    from worker.calibrate import calibrate_local

    cases = parse_cases(CASES, "yaml")
    settings = sweep_settings(["all"], [1], ["all", "generated"], [None, 0.5])
    out = calibrate_local(fast_engine, cases, grid=(1, 3), settings=settings, floor=0.0,
                          params=GenerationParams(max_new_tokens=4), n_boot=20, log=lambda m: None)
    assert len(out["records"]) == 3 + 4 * 3  # one shared baseline, then every setting at M = 3
    got = {(r["scope"], r["target_mass"]) for r in out["records"] if r["multiplier"] == 3}
    assert got == {("all", None), ("generated", None), ("all", 0.5), ("generated", 0.5)}
    labels = [s["setting"] for s in out["summary"]["settings"]]
    assert labels == ["all", "all, generated", "all, target 0.5", "all, generated, target 0.5"]
    rec = out["summary"]["recommended"]
    assert rec["scope"] in ("all", "generated") and rec["target_mass"] in (None, 0.5)


def test_the_calibrate_command_prints_the_table_and_writes_the_csv(tmp_path, capsys, fast_engine):
    from worker.cli.main import main

    cases = tmp_path / "cases.yaml"
    cases.write_text(CASES, encoding="utf-8")
    out_csv, records = tmp_path / "table.csv", tmp_path / "records.jsonl"
    rc = main(["calibrate", "--cases", str(cases), "--multipliers", "1,4", "--max-new-tokens", "4",
               "--device", "cpu", "--dtype", "float32", "--fluency-floor", "0", "--test-at", "recommended",
               "--csv", str(out_csv), "--records", str(records)])
    printed = capsys.readouterr()
    assert rc == 0, printed.err
    assert "recommended: M=" in printed.out and "test effective success" in printed.out
    rows = list(csv.DictReader(out_csv.open(encoding="utf-8")))
    assert {r["split"] for r in rows} == {"validation", "test"}
    assert {"success", "effective_success", "effective_success_lo", "copy_rate", "deflection_rate"} <= set(rows[0])
    lines = [json.loads(x) for x in records.read_text(encoding="utf-8").splitlines()]
    assert all({"case", "split", "multiplier", "fluency", "follows", "effective", "deflected", "perplexity",
                "output"} <= set(r) for r in lines)

    # --from-records scores the stored outputs again (no model): the same scorers give the same table.
    again = tmp_path / "again.csv"
    rc = main(["calibrate", "--cases", str(cases), "--multipliers", "1,4", "--max-new-tokens", "4",
               "--fluency-floor", "0", "--from-records", str(records), "--csv", str(again)])
    assert rc == 0
    assert capsys.readouterr().out == printed.out
    assert again.read_text(encoding="utf-8") == out_csv.read_text(encoding="utf-8")


@pytest.mark.parametrize("argv, message", [
    (["calibrate", "--pack", "nope"], "no built-in case pack"),
    (["calibrate", "--pack", "default", "--multipliers", "1,x"], "--multipliers"),
    (["calibrate", "--pack", "default", "--layer-modes", "sideways"], "layer mode"),
    (["calibrate", "--pack", "default", "--fluency-floor", "3"], "0-2"),
    (["calibrate", "--pack", "default", "--limit", "1"], "--limit"),
    (["calibrate", "--pack", "default", "--copy-ceiling", "1.5"], "--copy-ceiling"),
    (["calibrate", "--pack", "default", "--scopes", "all,sideways"], "scope must be one of"),
    (["calibrate", "--pack", "default", "--target-masses", "none,1.5"], "target mass"),
    (["calibrate", "--pack", "default", "--from-records", "/nonexistent/records.jsonl"], "--from-records"),
])
def test_the_calibrate_command_refuses_bad_input_with_a_message(argv, message, capsys):
    from worker.cli.main import main

    assert main(argv) == 2
    assert message in capsys.readouterr().err
