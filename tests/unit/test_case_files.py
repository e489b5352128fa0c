"""Evaluation case files and the simple checks, no model (the runner and its CSV: tests/engine/test_run_cases.py)."""

import pytest

from shared.errors import ValidationError
from shared.evaluation.cases import load_cases, load_pack
from shared.evaluation.checks import Check


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
