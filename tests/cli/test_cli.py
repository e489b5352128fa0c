"""The `instaboost` command as a user runs it: a real subprocess, no services, refusing bad input.

What generates on the real model is in tests/engine/test_cli_generate.py.
"""

import pytest

from tests.helpers import run_cli


def run(*args, cwd=None):
    return run_cli(*args, cwd=cwd, env={"INSTABOOST_GENERATION_MAX_NEW_TOKENS": "12"})


# The one table of bad command-line input (the API's and the form's are in tests/web/test_bad_input.py): each
# exits 2, the message names what to fix, no traceback, nothing on stdout. All but two fail before the model
# loads; those two need its shape, so they load it and are marked slow.
BAD_GENERATE_ARGS = [
    (["--multiplier", "0"], "--multiplier must be in (0, 1e+06]"),
    (["--multiplier", "nan"], "finite"),
    (["--multiplier", "inf"], "--multiplier must be a finite number"),
    (["--multiplier", "ten"], "--multiplier"),
    pytest.param(["--layers", "0,77"], "out of range", marks=pytest.mark.slow),
    (["--layers", "top"], "layers must be"),
    (["--start-layer", "-1"], "--start-layer must be between 0 and"),
    (["--num-middle-layers", "0"], "--num-middle-layers must be between 1 and"),
    (["--heads", "0"], "head_fraction"),
    (["--heads", "1.5"], "head_fraction"),
    (["--heads", "8:x"], "write layer:head"),
    pytest.param(["--heads", "8:12", "--layers", "8"], "head 12 in layer 8 is out of range", marks=pytest.mark.slow),
    (["--model", "not-a-model"], "unknown model"),
    (["--max-new-tokens", "100000"], "--max-new-tokens must be between 1 and 1024"),
    (["--placement", "footer"], "--placement"),
    (["--engine", "turbo"], "--engine"),
    (["--temperature", "-1"], "temperature"),
    (["--top-p", "2"], "--top-p must be in (0, 1]"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--top-k", "-1"], "--top-k must be between 0 and"),
    (["--min-p", "1.5"], "--min-p must be in [0, 1]"),
    (["--repetition-penalty", "0"], "--repetition-penalty must be in (0, 10]"),
    (["--presence-penalty", "3"], "--presence-penalty must be in [-2, 2]"),
    (["--frequency-penalty", "x"], "--frequency-penalty must be a number"),
    (["--dtype", "float8"], "unknown dtype 'float8'"),
    (["--device", "tpu"], "unknown device 'tpu'"),
    (["--query", "   "], "query"),
]


@pytest.mark.parametrize("args,message", BAD_GENERATE_ARGS,
                         ids=[" ".join(getattr(case, "values", case)[0]) for case in BAD_GENERATE_ARGS])
def test_generate_bad_input_exits_nonzero_with_a_message(args, message):
    # No --model unless the case names one: the default; each case fails before it loads.
    res = run("generate", "--instruction", "Answer in French.", "--query", "Hello?", *args)
    assert res.returncode == 2, res.stderr
    assert message in res.stderr and "Traceback" not in res.stderr and res.stdout == ""


def test_missing_arguments_and_empty_text():
    res = run("generate", "--instruction", "x")
    assert res.returncode == 2 and "--query" in res.stderr
    res = run("generate", "--instruction", "  ", "--query", "y")
    assert res.returncode == 2 and "--instruction is required and must not be blank" in res.stderr


def test_run_tests_bad_cases_file(tmp_path):
    res = run("run-tests", "--cases", str(tmp_path / "nope.yaml"))
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_settings_command_masks_secrets():
    res = run_cli("settings", env={"HF_TOKEN": "hf_topsecret"}, timeout=60)
    assert res.returncode == 0
    assert "hf_topsecret" not in res.stdout and 'hf.token = "***"' in res.stdout
