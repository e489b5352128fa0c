"""The `instaboost` command generating on the real model, as a user runs it: a real subprocess, no services."""

import csv
import json

import pytest

from tests.helpers import run_cli


def run(*args, cwd=None):
    return run_cli(*args, cwd=cwd, env={"INSTABOOST_GENERATION_MAX_NEW_TOKENS": "12"})


@pytest.mark.slow
def test_generate_json_and_identity(tmp_path):
    base = ["generate", "--instruction", "Answer only in French.", "--query", "What is the capital of Germany?"]
    boosted = run(*base, "--multiplier", "10", "--json", "--attention")
    assert boosted.returncode == 0, boosted.stderr
    obj = json.loads(boosted.stdout)
    for key in ("text", "prompt_tokens", "output_tokens", "span", "span_text", "seconds", "attention_mass"):
        assert key in obj
    assert obj["span_text"] == "Answer only in French."
    assert obj["placement"] == "system"  # the placement used (a model without a chat template reports raw)
    assert len(obj["attention_mass"]["boosted"]) == 30
    plain = run(*base, "--multiplier", "1", "--engine", "transformerlens")
    unboosted = run(*base, "--multiplier", "1")
    assert plain.returncode == unboosted.returncode == 0
    assert plain.stdout == unboosted.stdout and plain.stdout.strip()
    assert plain.stdout.strip() != obj["text"]
    assert "Traceback" not in boosted.stderr + plain.stderr


@pytest.mark.slow
def test_run_tests_writes_csv(tmp_path):
    cases = tmp_path / "cases.yaml"
    cases.write_text("- name: fr\n  instruction: Answer only in French.\n  query: Name a city.\n"
                     "  check: {type: regex, value: '.'}\n")
    res = run("run-tests", "--cases", str(cases), "--num-runs", "1", "--multiplier", "5", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    written = list((tmp_path / "results").glob("instaboost_results_*.csv"))
    assert len(written) == 1
    rows = list(csv.DictReader(written[0].open()))
    assert len(rows) == 1 and rows[0]["multiplier"] == "5.0" and rows[0]["original_pass"] == "pass"
    assert "checks passed" in res.stdout
