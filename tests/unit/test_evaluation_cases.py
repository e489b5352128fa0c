"""Case files (YAML, JSON, JSONL), every problem at once, the built-in packs and the fixed split."""

import json
from pathlib import Path

import pytest
import yaml

from shared.errors import NotFound, ValidationError
from shared.evaluation.cases import PACKS, PACKS_DIR, Case, load_cases, load_pack, parse_cases, split
from shared.evaluation.checks import IFEVAL_BY_ID, Check, IfevalCheck
from tests.helpers import alias_bomb

EMOJI = "\U0001F602"
GOOD = {"name": "fr", "instruction": "Answer only in French.", "query": "What is the capital of Germany?",
        "description": "language", "check": {"type": "contains", "value": "Berlin"},
        "ifeval": ["punctuation:no_comma", {"id": "language:response_language", "kwargs": {"language": "fr"}}]}


def errors_of(data, fmt, **kw):
    with pytest.raises(ValidationError) as err:
        parse_cases(data, fmt, source="t." + fmt, **kw)
    return err.value


def test_json_with_an_escaped_surrogate_pair_is_one_emoji(tmp_path):
    f = tmp_path / "cases.json"
    f.write_text(json.dumps([{"name": "laugh", "instruction": f"Laugh {EMOJI}", "query": "Joke?"}]))
    assert "\\ud83d\\ude02" in f.read_text()
    [case] = load_cases(f)
    assert case.instruction == f"Laugh {EMOJI}"


def test_a_lone_surrogate_is_refused_naming_file_case_and_field(tmp_path):
    f = tmp_path / "cases.json"
    f.write_text('[{"name": "ok", "instruction": "x", "query": "y"},'
                 ' {"name": "half", "instruction": "Laugh \\ud83d", "query": "y"}]')
    with pytest.raises(ValidationError) as err:
        load_cases(f)
    [e] = err.value.errors
    assert e["field"] == "cases[1].instruction"
    assert e["message"].startswith("cases.json case 2 (half): instruction is not valid Unicode")
    assert err.value.status == 422


def test_yaml_surrogate_pair_escapes_are_refused_with_the_fix():
    err = errors_of('- {name: a, instruction: "Laugh \\ud83d\\ude02", query: y}', "yaml")
    assert "\\U0001F602" in err.errors[0]["message"]
    [case] = parse_cases(f"- {{name: a, instruction: 'Laugh {EMOJI}', query: y}}", "yaml")
    assert case.instruction == f"Laugh {EMOJI}"


def test_nul_is_refused_in_any_text():
    err = errors_of(json.dumps([{"name": "a", "instruction": "x", "query": "y\x00",
                                 "check": {"type": "contains", "value": "a\x00"}}]), "json")
    assert [e["field"] for e in err.errors] == ["cases[0].query", "cases[0].check.value"]
    assert "NUL" in err.message


def test_jsonl_one_case_per_line_with_bad_lines_numbered(tmp_path):
    f = tmp_path / "cases.jsonl"
    f.write_text(json.dumps(GOOD) + "\n\n" + json.dumps(GOOD | {"name": "b"}) + "\n")
    assert [c.name for c in load_cases(f)] == ["fr", "b"]
    err = errors_of(json.dumps(GOOD) + "\n{not json\n" + json.dumps({"name": "c"}) + "\n", "jsonl")
    assert [e["field"] for e in err.errors] == ["line 2", "cases[1].instruction"]
    assert "t.jsonl line 2 is not valid JSON" in err.message
    assert "t.jsonl line 3 (c): is missing instruction, query" in err.message


def test_jsonl_keeps_line_separators_inside_strings():
    [case] = parse_cases(json.dumps(GOOD | {"query": "a\u2028b"}, ensure_ascii=False), "jsonl")
    assert case.query == "a\u2028b"


def test_yaml_list_or_mapping_with_cases(tmp_path):
    f = tmp_path / "cases.yml"
    f.write_text(yaml.safe_dump({"name": "mine", "description": "d", "cases": [GOOD]}))
    [case] = load_cases(f)
    assert case == Case("fr", GOOD["instruction"], GOOD["query"], "language", (Check("contains", "Berlin"),),
                        (IfevalCheck("punctuation:no_comma"), IfevalCheck("language:response_language",
                                                                          {"language": "fr"})))
    assert parse_cases(yaml.safe_dump([GOOD]), "yaml") == [case]
    assert "unknown top-level keys" in errors_of(yaml.safe_dump({"cases": [GOOD], "pack": 1}), "yaml").message


@pytest.mark.parametrize("fmt,text", [
    ("json", json.dumps([GOOD], indent=2).replace("\n", "\r\n")),
    ("jsonl", json.dumps(GOOD) + "\r\n" + json.dumps(GOOD | {"name": "b"}) + "\r\n"),
    ("yaml", yaml.safe_dump([GOOD]).replace("\n", "\r\n")),
])
def test_crlf_line_ends(fmt, text):
    cases = parse_cases(text.encode(), fmt)
    assert cases[0].instruction == GOOD["instruction"] and cases[0].query == GOOD["query"]
    assert not any("\r" in c.instruction + c.query + c.name for c in cases)


@pytest.mark.parametrize("fmt", ["json", "jsonl", "yaml"])
def test_cjk_text_round_trips(fmt):
    case = {"name": "中文", "instruction": "请只用中文回答。", "query": "東京はどこですか？ 서울은요?"}
    text = {"json": json.dumps([case], ensure_ascii=False), "jsonl": json.dumps(case),
            "yaml": yaml.safe_dump([case], allow_unicode=True)}[fmt]
    [c] = parse_cases(text.encode("utf-8"), fmt)
    assert (c.name, c.instruction, c.query) == (case["name"], case["instruction"], case["query"])


def test_several_bad_cases_are_reported_at_once():
    data = [GOOD,
            {"name": "no_query", "instruction": "x"},
            {"name": "fr", "instruction": "x", "query": "y"},
            {"name": "bad_check", "instruction": "x", "query": "y", "check": [{"type": "regex", "value": "("}],
             "ifeval": ["english_lowercase"], "colour": "red"},
            "just text",
            {"name": 7, "instruction": "x", "query": "y", "split": "train"}]
    err = errors_of(json.dumps(data), "json")
    assert [e["field"] for e in err.errors] == [
        "cases[1].query", "cases[2].name", "cases[3].colour", "cases[3].check[0]", "cases[3].ifeval[0]", "cases[4]",
        "cases[5].name", "cases[5].split"]
    assert err.message.startswith("t.json: 8 problems: ")
    messages = [e["message"] for e in err.errors]
    assert "t.json case 2 (no_query): is missing query" in messages[0]
    assert "duplicate case name 'fr' (also case 1)" in messages[1]
    assert "did you mean change_case:english_lowercase" in messages[4]
    assert "put it in quotes" in messages[6]


@pytest.mark.parametrize("content,message", [  # the old loader's messages still match
    ("- {name: a, instruction: x}", "missing query"),
    ("- {name: a, instruction: x, query: y, check: {type: vibes}}", "check needs a type"),
    ("- {name: a, instruction: x, query: y, check: {type: regex, value: '('}}", "bad regex"),
    ("- {name: a, instruction: x, query: y}\n- {name: a, instruction: x, query: y}", "duplicate"),
    ("- {name: a, instruction: x, query: y, colour: red}", "unknown keys"),
    ("[]", "non-empty list"),
    ("{{{", "not valid"),
    ("- {name: a, instruction: '   ', query: y}", "missing instruction"),
])
def test_bad_case_files_are_clear_errors(tmp_path, content, message):
    f = tmp_path / "cases.yaml"
    f.write_text(content)
    with pytest.raises(ValidationError, match=message):
        load_cases(f)


def test_file_level_problems(tmp_path):
    assert "not UTF-8" in errors_of(b'[{"name": "a\xff"}]', "json").message
    assert "line 2" in errors_of(b'[\n{"name": "\xff"}]', "json").message
    assert "not valid JSON" in errors_of("[{'name': 'a'}]", "json").message
    assert parse_cases("\ufeff" + json.dumps([GOOD]), "json")[0].name == "fr"  # a BOM is dropped
    with pytest.raises(ValidationError, match="name it .yaml, .yml, .json or .jsonl"):
        load_cases(tmp_path / "cases.txt")
    with pytest.raises(ValidationError, match="does not exist"):
        load_cases(tmp_path / "missing.json")
    assert "at most 10 are allowed" in errors_of(json.dumps([GOOD | {"query": "y" * 11}]), "json",
                                                 max_text_chars=10).message


def test_the_default_pack_is_the_twelve_cases():
    cases = load_pack("default")
    assert len(cases) == 12 and all(c.checks for c in cases)
    text = " ".join(c.description.lower() for c in cases)
    assert all(word in text for word in ("persona", "format", "refusal", "language"))
    worker_file = Path(__file__).parents[2] / "worker" / "cases" / "default.yaml"
    if worker_file.is_file():
        assert cases == load_cases(worker_file)
    assert cases[0].passes("Berlin est la capitale de l'Allemagne.") is True


def test_the_ifeval_pack():
    cases = load_pack("ifeval")
    assert len(cases) >= 100 and len({c.name for c in cases}) == len(cases)
    assert all(len(c.ifeval) == 1 and c.ifeval[0].id in IFEVAL_BY_ID for c in cases)
    assert len({c.ifeval[0].id for c in cases}) >= 20
    assert len({c.query for c in cases}) >= 24 and len({c.instruction for c in cases}) >= 20
    repeat = [c for c in cases if c.ifeval[0].id == "combination:repeat_prompt"]
    assert repeat and all(c.ifeval[0].kwargs["prompt_to_repeat"] == c.query for c in repeat)


def test_the_ifeval_pack_file_is_up_to_date():
    from shared.evaluation.packs.make_ifeval import render

    assert (PACKS_DIR / "ifeval.yaml").read_text(encoding="utf-8") == render(), \
        "regenerate: python -m shared.evaluation.packs.make_ifeval > shared/evaluation/packs/ifeval.yaml"


def test_every_pack_loads_and_unknown_packs_are_404():
    for pack in PACKS:
        assert load_pack(pack.name)
    with pytest.raises(NotFound, match="the packs are default, ifeval"):
        load_pack("nope")


@pytest.mark.parametrize("pack", ["default", "ifeval"])
def test_split_is_deterministic_disjoint_and_covers_all(pack):
    cases = load_pack(pack)
    validation, test = split(cases)
    assert split(cases) == (validation, test)
    names_v, names_t = {c.name for c in validation}, {c.name for c in test}
    assert not names_v & names_t and names_v | names_t == {c.name for c in cases}
    assert len(validation) == (len(cases) + 1) // 2
    # Order-independent: the halves depend on names and the seed only.
    rv, rt = split(list(reversed(cases)))
    assert {c.name for c in rv} == names_v and {c.name for c in rt} == names_t
    assert {c.name for c in split(cases, seed=7)[0]} != names_v


def test_split_is_pinned_across_versions():
    # sha256 of "seed\0name": these halves must never change, or stored sweeps would mix halves.
    validation, _ = split(load_pack("default"))
    assert [c.name for c in validation] == ["french_only", "all_lowercase", "all_caps", "json_only", "one_word",
                                            "refuse_weather"]


def test_pinned_cases_stay_in_their_half():
    cases = [Case(f"c{i}", "x", "y") for i in range(6)] + [Case("v", "x", "y", split="validation"),
                                                         Case("t", "x", "y", split="test")]
    validation, test = split(cases)
    assert "v" in {c.name for c in validation} and "t" in {c.name for c in test}
    assert len(validation) == 4 and len(test) == 4


def test_yaml_aliases_are_refused_before_they_expand():
    # 4 levels: a 266-byte file whose errors echoed 10**4-fold expansions (1.7 MB) before aliases were refused.
    err = errors_of(alias_bomb(4), "yaml")
    assert "YAML aliases (*a, line 2) are not allowed in cases files" in err.message, err.message[:300]
    assert len(err.message) < 1000 and sum(len(e["message"]) for e in err.errors) < 1000
    # Even a harmless alias is refused: the rule is simple to state and to check.
    harmless = "- &one {name: a, instruction: Be brief., query: Hi}\n- *one\n"
    assert "aliases (*one, line 2)" in errors_of(harmless, "yaml").message


def test_the_built_in_packs_hold_no_alias():
    for pack in PACKS:
        assert "*id0" not in (PACKS_DIR / pack.file).read_text(encoding="utf-8"), pack.file


def test_an_error_echoing_its_input_is_bounded():
    from shared.errors import MAX_ERRORS, MAX_MESSAGE_CHARS

    err = ValidationError("x" * 100_000, errors=[{"field": "f", "message": "y" * 100_000}] * 1000)
    assert len(err.message) < MAX_MESSAGE_CHARS + 50 and err.message.endswith("(99000 more characters)")
    assert len(err.errors) == MAX_ERRORS and all(len(e["message"]) < MAX_MESSAGE_CHARS + 50 for e in err.errors)
