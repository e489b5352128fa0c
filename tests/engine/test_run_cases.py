"""The evaluation-case runner on the real model: the comparison CSV `instaboost run-tests` writes."""

import csv

import pytest

from shared.evaluation.cases import load_cases
from shared.spec import BoostSpec, GenerationParams
from worker.cli.run_tests import COLUMNS, run_cases


@pytest.mark.slow
def test_run_cases_writes_the_comparison_csv(tmp_path, fast_engine):
    f = tmp_path / "cases.json"
    f.write_text('[{"name": "fr", "instruction": "Answer only in French.", "query": "=What is the capital of Germany?",'
                 ' "description": "language", "check": {"type": "contains", "value": "Berlin"}},'
                 ' {"name": "plain", "instruction": "Be brief.", "query": "Say hello."}]')
    out = tmp_path / "out" / "results.csv"
    report = run_cases(fast_engine, load_cases(f), BoostSpec(multiplier=10.0), GenerationParams(max_new_tokens=10),
                        num_runs=2, output=out, progress=False)
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0].keys()) == COLUMNS
    assert [(r["test_case"], r["run_index"]) for r in rows] == [("fr", "0"), ("plain", "0"), ("fr", "1"), ("plain", "1")]
    fr = rows[0]
    assert fr["original_output"] and fr["all_layers_output"] and fr["middle_layers_output"]
    assert int(fr["original_length"]) == len(fr["original_output"])
    assert fr["original_pass"] in ("pass", "fail") and rows[1]["original_pass"] == ""
    assert report.summary["original"]["checked"] == 2 and report.rows == 4 and report.failed == 0
    # Greedy: the unboosted output is the plain model's, and the boost changes it.
    assert fr["original_output"] != fr["all_layers_output"]
    assert not (tmp_path / "out" / "results.csv.part").exists()
