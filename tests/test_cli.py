"""The `instaboost` command as a user runs it: a real subprocess, the real model, no services."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ENV = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "HF_HUB_OFFLINE": "1", "INSTABOOST_GENERATION_MAX_NEW_TOKENS": "12"}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


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


@pytest.mark.parametrize("args,message", [
    (["--multiplier", "0"], "--multiplier must be in (0, 1e+06]"),
    (["--multiplier", "nan"], "finite"),
    (["--layers", "0,77"], "out of range"),
    (["--layers", "top"], "layers must be"),
    (["--heads", "1.5"], "head_fraction"),
    (["--heads", "8:x"], "write layer:head"),
    (["--heads", "8:12", "--layers", "8"], "head 12 in layer 8 is out of range"),
    (["--model", "not-a-model"], "unknown model"),
    (["--max-new-tokens", "100000"], "--max-new-tokens must be between 1 and 1024"),
    (["--temperature", "-1"], "temperature"),
])
def test_generate_bad_input_exits_nonzero_with_a_message(args, message):
    res = run("generate", "--instruction", "x", "--query", "y", *args)
    assert res.returncode == 2
    assert message in res.stderr and "Traceback" not in res.stderr


def test_missing_arguments_and_empty_text():
    res = run("generate", "--instruction", "x")
    assert res.returncode == 2 and "--query" in res.stderr
    res = run("generate", "--instruction", "  ", "--query", "y")
    assert res.returncode == 2 and "--instruction is required and must not be blank" in res.stderr


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


def test_run_tests_bad_cases_file(tmp_path):
    res = run("run-tests", "--cases", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_settings_command_masks_secrets():
    res = subprocess.run([sys.executable, "-m", "worker.cli", "settings"], capture_output=True, text=True,
                         env={**ENV, "HF_TOKEN": "hf_topsecret"}, timeout=60)
    assert res.returncode == 0
    assert "hf_topsecret" not in res.stdout and 'hf.token = "***"' in res.stdout
