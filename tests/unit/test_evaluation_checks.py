"""The check registry: simple checks, IFEval ids and kwargs, strict and loose evaluation (offline)."""

import inspect

import pytest

from shared.errors import ValidationError
from shared.evaluation import checks as ch
from shared.evaluation.checks import (IFEVAL, LANGUAGES, Check, IfevalCheck, parse_check, parse_checks,
                                      parse_ifeval, run_checks)
from shared.evaluation.verifiers import ifeval_backend

SIMPLE = [
    (Check("regex", r"^\W*Yes"), "Yes, it is round.", True),
    (Check("regex", r"^\W*Yes"), "No.", False),
    (Check("contains", "banana"), "I like Bananas", True),
    (Check("not_contains", "weather"), "Sunny weather", False),
    (Check("not_contains_regex", "[0-9]"), "seven days", True),
    (Check("not_contains_regex", "[0-9]"), "7 days", False),
    (Check("json"), '{"answer": "4"}', True),
    (Check("json"), '```json\n{"answer": "4"}\n```', True),
    (Check("json"), "four", False),
    (Check("lowercase"), "all quiet here", True),
    (Check("lowercase"), "Not quiet", False),
    (Check("lowercase"), "123", False),
    (Check("uppercase"), "LOUD!", True),
    (Check("uppercase"), "Loud", False),
    (Check("max_words", 2), "Blue.", True),
    (Check("max_words", 2), "It is blue.", False),
    (Check("max_words", 2), "   ", False),
]


@pytest.mark.parametrize("check,text,ok", SIMPLE)
def test_simple_checks(check, text, ok):
    assert check(text) is ok


@pytest.mark.parametrize("raw,message", [
    ({"type": "vibes"}, "check needs a type"),
    ("lowercase", "check needs a type"),
    ({"type": "regex", "value": "("}, "bad regex"),
    ({"type": "contains"}, "needs a value"),
    ({"type": "max_words", "value": "two"}, "whole number"),
    ({"type": "max_words", "value": True}, "whole number"),
    ({"type": "json", "value": "x"}, "takes no value"),
    ({"type": "regex", "value": "x", "flags": "i"}, "unknown keys"),
])
def test_bad_simple_checks_say_what_to_fix(raw, message):
    check, problems = parse_check(raw)
    assert check is None and message in problems[0]


def test_values_are_stored_as_their_kind():
    assert parse_check({"type": "contains", "value": 42})[0] == Check("contains", "42")
    assert parse_check({"type": "max_words", "value": "7"})[0] == Check("max_words", 7)


def test_the_ifeval_table_matches_the_package():
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
    from if_verifiable.ifeval.instructions_util import LANGUAGE_CODES

    assert {s.id for s in IFEVAL} == set(INSTRUCTION_DICT)
    for spec in IFEVAL:
        params = [p for p in inspect.signature(INSTRUCTION_DICT[spec.id].build_description).parameters if p != "self"]
        assert set(params) == set(spec.kwargs), spec.id
        assert all(k in ch.IFEVAL_KWARGS for k in spec.kwargs)
    assert set(LANGUAGES) == set(LANGUAGE_CODES)


def ife(id_, **kwargs):
    check, problems = parse_ifeval({"id": id_, "kwargs": kwargs})
    assert not problems, problems
    return check


FOLLOWS = "Paris is the capital of France. It is known for art and food."
IFEVAL_CASES = [
    (ife("change_case:english_lowercase"), "paris is the capital of france and a lovely city to visit.", True),
    (ife("change_case:english_lowercase"), FOLLOWS, False),
    (ife("change_case:english_capital"), "PARIS IS THE CAPITAL OF FRANCE AND A LOVELY CITY TO VISIT.", True),
    (ife("punctuation:no_comma"), FOLLOWS, True),
    (ife("punctuation:no_comma"), "Paris, the capital, is big.", False),
    (ife("detectable_format:number_bullet_lists", num_bullets=3), "* one\n* two\n* three", True),
    (ife("detectable_format:number_bullet_lists", num_bullets=3), "* one\n* two", False),
    (ife("detectable_format:json_format"), '```json\n{"city": "Paris"}\n```', True),
    (ife("detectable_format:json_format"), "city: Paris", False),
    (ife("startend:end_checker", end_phrase="Any other questions?"), "Paris is lovely. Any other questions?", True),
    (ife("startend:end_checker", end_phrase="Any other questions?"), "Any other questions? Paris.", False),
    (ife("length_constraints:number_words", num_words=5, relation="less than"), "Paris is lovely.", True),
    (ife("length_constraints:number_words", num_words=5, relation="less than"), FOLLOWS, False),
    (ife("language:response_language", language="fr"),
     "Paris est la capitale de la France. C'est une ville magnifique.", True),
    (ife("language:response_language", language="fr"), FOLLOWS, False),
    (ife("length_constraints:number_sentences", num_sentences=2, relation="less than"), "Dr. Smith went home.", True),
    (ife("length_constraints:number_sentences", num_sentences=2, relation="less than"), FOLLOWS, False),
    (ife("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"),
     "Paris is VERY old and REALLY big.", True),
    (ife("change_case:capital_word_frequency", capital_frequency=2, capital_relation="at least"), FOLLOWS, False),
    (ife("detectable_format:title"), "<<Paris>>\nA city.", True),
    (ife("detectable_content:postscript", postscript_marker="P.S."), "Paris.\n\nP.S. Visit in spring.", True),
    (ife("startend:quotation"), '"Paris is lovely."', True),
    (ife("keywords:forbidden_words", forbidden_words=["and"]), FOLLOWS, False),
    (ife("keywords:existence", keywords=["capital", "art"]), FOLLOWS, True),
    (ife("combination:repeat_prompt", prompt_to_repeat="Tell me about Paris."),
     "Tell me about Paris. Paris is the capital of France.", True),
    (ife("keywords:frequency", keyword="paris", frequency=2, relation="at least"), "Paris, oh Paris.", True),
    (ife("keywords:letter_frequency", letter="z", let_frequency=1, let_relation="less than"), FOLLOWS, True),
    (ife("length_constraints:number_paragraphs", num_paragraphs=2), "Paris is big.\n***\nIt is old.", True),
    (ife("length_constraints:nth_paragraph_first_word", num_paragraphs=2, nth_paragraph=2, first_word="it"),
     "Paris is big.\n\nIt is old.", True),
    (ife("detectable_content:number_placeholders", num_placeholders=2), "Meet [name] at [address].", True),
    (ife("detectable_format:constrained_response"), "My answer is no.", True),
    (ife("detectable_format:number_highlighted_sections", num_highlights=2), "*Paris* is *old*.", True),
    (ife("detectable_format:multiple_sections", section_spliter="SECTION", num_sections=2),
     "SECTION 1\nParis.\nSECTION 2\nFrance.", True),
    (ife("combination:two_responses"), "Paris is big.\n******\nParis is old.", True),
]


@pytest.mark.parametrize("check,text,ok", IFEVAL_CASES, ids=[f"{c.id}-{ok}" for c, _, ok in IFEVAL_CASES])
def test_ifeval_verifiers_run_offline(check, text, ok):
    result = run_checks([check], text)
    assert result["follows"] is ok
    assert result["results"][0]["error"] is None


def test_every_ifeval_id_is_exercised_offline():
    assert {c.id for c, _, _ in IFEVAL_CASES} == {s.id for s in IFEVAL}


def test_loose_forgives_a_preamble_line_and_markdown():
    lower = parse_ifeval("change_case:english_lowercase")[0]
    text = "**Answer:**\nparis is the capital of france and a lovely city to visit."
    assert run_checks([lower], text) | {"results": None} == {
        "follows": False, "follows_loose": True, "checks_passed": 0, "checks_total": 1,
        "failed_checks": "ifeval:change_case:english_lowercase", "results": None}
    r = run_checks([Check("json")], 'Here is the JSON:\n{"a": 1}')
    assert (r["follows"], r["follows_loose"]) == (False, True)
    assert run_checks([Check("json")], '{"a": 1}', loose=False)["follows_loose"] is None


def test_follows_needs_every_check_and_is_none_without_checks():
    both = [Check("lowercase"), parse_ifeval("punctuation:no_comma")[0]]
    assert run_checks(both, "quiet, please")["follows"] is False
    assert run_checks(both, "quiet please")["follows"] is True
    assert run_checks(both, "")["checks_passed"] == 0
    assert run_checks([], "anything") | {"results": None} == {
        "follows": None, "follows_loose": None, "checks_passed": None, "checks_total": None, "failed_checks": None,
        "results": None}


def test_a_verifier_that_raises_is_a_fail_with_its_error(monkeypatch):
    class Broken:
        def __init__(self, *_):
            pass

        def build_description(self, **_):
            return ""

        def get_instruction_args(self):
            return None

        def check_following(self, value):
            raise RuntimeError("boom")

    registry = ifeval_backend()[0]
    monkeypatch.setitem(registry, "punctuation:no_comma", Broken)
    result = run_checks([IfevalCheck("punctuation:no_comma"), Check("lowercase")], "fine text")
    assert result["results"][0] == {"check": "ifeval:punctuation:no_comma", "pass": False, "loose": False,
                                    "error": "RuntimeError: boom"}
    assert result["checks_passed"] == 1


@pytest.mark.parametrize("raw,message", [
    ("english_lowercase", "did you mean change_case:english_lowercase"),
    ("change_case:english_lowercas", "did you mean change_case:english_lowercase"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 50}}, "missing kwargs relation"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 50, "relation": "fewer"}},
     "'less than' or 'at least'"),
    ({"id": "length_constraints:number_words", "kwargs": {"num_words": 0, "relation": "at least"}}, ">= 1"),
    ({"id": "punctuation:no_comma", "kwargs": {"comma": 1}}, "it takes none"),
    ({"id": "language:response_language", "kwargs": {"language": "french"}}, "ISO 639-1"),
    ({"id": "keywords:existence", "kwargs": {"keywords": "paris"}}, "non-empty list"),
    ({"id": "keywords:existence", "kwargs": {"keywords": ["("]}}, "regular expression"),
    ({"id": "keywords:letter_frequency", "kwargs": {"letter": "ab", "let_frequency": 2, "let_relation": "at least"}},
     "one letter"),
    ({"id": "length_constraints:nth_paragraph_first_word",
      "kwargs": {"num_paragraphs": 2, "nth_paragraph": 3, "first_word": "so"}}, "nth_paragraph must be <="),
    ({"kwargs": {}}, "an id or a mapping"),
])
def test_bad_ifeval_entries_say_what_to_fix(raw, message):
    check, problems = parse_ifeval(raw)
    assert check is None
    assert message in " ".join(problems)


def test_parse_checks_reports_every_problem_at_once():
    with pytest.raises(ValidationError) as err:
        parse_checks([{"type": "regex", "value": "("}, {"type": "lowercase"}], ["nope:nothing", "punctuation:no_comma"])
    assert [e["field"] for e in err.value.errors] == ["check[0]", "ifeval[0]"]
    simple, ifevals = parse_checks({"type": "lowercase"}, ["punctuation:no_comma"])
    assert simple == (Check("lowercase"),) and ifevals == (IfevalCheck("punctuation:no_comma"),)


def test_validation_does_not_import_the_verifiers():
    import subprocess
    import sys

    code = ("import sys; from shared.evaluation.cases import load_pack; load_pack('ifeval'); "
            "assert 'if_verifiable' not in sys.modules and 'nltk' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)
