"""The test-case runner and its CSV."""

import csv

import pytest

from shared.errors import ValidationError
from shared.evaluation.cases import load_cases, load_pack
from shared.evaluation.checks import Check
from shared.spec import BoostSpec, GenerationParams
from worker.cli.run_tests import COLUMNS, run_cases


def test_default_cases_load_and_cover_the_categories():
    cases = load_pack("default")
    assert len(cases) >= 10
    text = " ".join(c.description.lower() for c in cases)
    for word in ("persona", "format", "refusal", "language"):
        assert word in text
    assert all(c.checks for c in cases)


@pytest.mark.parametrize("check,text,ok", [
    (Check("regex", r"^\W*Yes"), "Yes, it is round.", True),
    (Check("regex", r"^\W*Yes"), "No.", False),
    (Check("contains", "banana"), "I like Bananas", True),
    (Check("not_contains", "weather"), "Sunny weather", False),
    (Check("not_contains_regex", "[0-9]"), "seven days", True),
    (Check("json"), '{"answer": "4"}', True),
    (Check("json"), "four", False),
    (Check("lowercase"), "all quiet here", True),
    (Check("lowercase"), "Not quiet", False),
    (Check("uppercase"), "LOUD!", True),
    (Check("max_words", 2), "Blue.", True),
    (Check("max_words", 2), "It is blue.", False),
])
def test_checks(check, text, ok):
    assert check(text) is ok


@pytest.mark.parametrize("content,message", [
    ("- {name: a, instruction: x}", "missing query"),
    ("- {name: a, instruction: x, query: y, check: {type: vibes}}", "check needs a type"),
    ("- {name: a, instruction: x, query: y, check: {type: regex, value: '('}}", "bad regex"),
    ("- {name: a, instruction: x, query: y}\n- {name: a, instruction: x, query: y}", "duplicate"),
    ("- {name: a, instruction: x, query: y, colour: red}", "unknown keys"),
    ("[]", "non-empty list"),
    ("{{{", "not valid"),
])
def test_bad_case_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "cases.yaml"
    f.write_text(content)
    with pytest.raises(ValidationError, match=message):
        load_cases(f)


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
