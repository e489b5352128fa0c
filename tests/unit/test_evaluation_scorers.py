"""Scorers on hand-made outputs: repetition, instruction copying, empty, truncated, canned, deflection, fluency."""

import json

import pytest

from shared.evaluation.cases import Case
from shared.evaluation.checks import Check
from shared.evaluation.scorers import (COLUMNS, SCORERS, copy_run, effective, fluency_score, is_canned,
                                       is_deflection, is_truncated, repeated_ngram_share, score_output, words)

INSTRUCTION = "Write everything in lowercase letters only. Never use capital letters."
QUERY = "Tell me about the city of Paris in two sentences."
FLUENT = ("Paris is the capital of France and its largest city. It is known for the Eiffel Tower, the Louvre "
          "and its cafés, and about two million people live there.")
LOOP = "".join(f"{n}. Stay healthy\n" for n in range(14, 40))


def score(text, **kw):
    args = dict(instruction=INSTRUCTION, query=QUERY, output_tokens=40, max_new_tokens=128, hit_eos=True)
    return score_output(text, **(args | kw))


def test_the_registry_is_declared_once_with_unique_columns():
    assert len({s.name for s in SCORERS}) == len(SCORERS)
    assert len(set(COLUMNS)) == len(COLUMNS)
    assert {s.kind for s in SCORERS} == {"check", "fluency", "judge"}
    assert {s.cost for s in SCORERS} == {"cheap", "expensive"}
    assert {s.name for s in SCORERS if s.cost == "expensive"} == {"perplexity", "judge"}


def test_score_output_fills_every_column_with_json_values():
    out = score(FLUENT, perplexity=7.5)
    assert list(out) == list(COLUMNS)
    json.dumps(out)
    assert out["judge_follows"] is None and out["follows"] is None


def test_words_fold_case_numbers_and_split_cjk():
    assert words("Hello, WORLD! It's 2024.") == ["hello", "world", "it", "s", "0"]
    assert words("巴黎是法国的首都 Paris") == ["巴", "黎", "是", "法", "国", "的", "首", "都", "paris"]


def test_a_fluent_answer_scores_2_and_is_not_flagged():
    out = score(FLUENT, perplexity=7.5)
    assert out["fluency"] == 2.0
    assert not out["repetitive"] and not out["copied"] and not out["canned"] and not out["empty"]
    assert out["repeated_ngram_share"] < 0.1 and out["longest_repeat_words"] <= 2


def test_a_repeated_line_is_repetitive_and_scores_low():
    out = score(LOOP, output_tokens=128, hit_eos=False, perplexity=2.0)
    assert out["repetitive"] and out["repeated_ngram_share"] > 0.9
    assert out["longest_repeat_words"] >= 70
    assert out["fluency"] == 0.0
    verbatim = score("I love Paris.\n" * 8)
    assert verbatim["repetitive"] and verbatim["fluency"] < 1.0


def test_some_repetition_costs_some_fluency():
    half = FLUENT + " " + " ".join(["Paris is nice."] * 6)
    out = score(half)
    assert 0.1 < out["repeated_ngram_share"] < 0.6
    assert 0.0 < out["fluency"] < 2.0


def test_repeated_ngram_share_is_rep4():
    assert repeated_ngram_share(["a", "b", "c"]) == 0.0
    assert repeated_ngram_share(list("abcdabcd")) == pytest.approx(1 - 4 / 5)


def test_a_copied_instruction_is_caught_with_k6_and_not_with_5_words():
    copied = score("Sure: WRITE everything, in lowercase letters... only! Paris is nice.")
    assert copied["copy_run_words"] == 6 and copied["copied"]
    five = score("Sure: write everything in lowercase letters. Paris is nice.")
    assert five["copy_run_words"] == 5 and not five["copied"]
    assert score("Write everything in lowercase letters.", k=5)["copied"]


def test_an_output_that_is_the_instruction_scores_zero():
    out = score(INSTRUCTION.lower())
    assert out["copied"] and out["copy_run_words"] == 10 and out["fluency"] == 0.0


def test_quoted_text_in_the_instruction_is_not_copying():
    instruction = 'End your answer with the exact sentence "Is there anything else I can help with?"'
    assert copy_run("Paris is big. Is there anything else I can help with?", instruction) <= 1
    assert copy_run("end your answer with the exact sentence", instruction) == 7
    assert copy_run("say and then stop", 'Say "hello" and then stop.') == 3  # no run across the quote


def test_query_echo_is_reported_not_scored():
    out = score("Tell me about the city of Paris in two sentences. Paris is the capital of France.")
    assert out["echo_run_words"] == 10 and not out["copied"] and out["fluency"] == 2.0


@pytest.mark.parametrize("text", ["", "   \n\t", "...", "😂"])
def test_empty_output(text):
    out = score(text, output_tokens=0)
    assert out["empty"] and out["fluency"] == 0.0 and out["words"] == 0


@pytest.mark.parametrize("tokens,limit,eos,truncated", [
    (128, 128, False, True), (128, 128, True, False), (40, 128, False, False), (None, 128, False, None),
    (128, None, False, None), (128, 128, None, None),
])
def test_truncated_at_the_token_limit(tokens, limit, eos, truncated):
    assert is_truncated(tokens, limit, eos) is truncated
    assert score(FLUENT, output_tokens=tokens, max_new_tokens=limit, hit_eos=eos)["truncated"] is truncated


def test_a_truncated_fluent_answer_keeps_partial_fluency():
    assert score(FLUENT, output_tokens=128, hit_eos=False)["fluency"] == 1.5


@pytest.mark.parametrize("text,canned", [
    ("I'm ready to help.", True),
    ("Sure! How can I help you today?", True),
    ("Hello there! I’m here to help. What would you like to know?", True),
    ("Blue.", False),
    ("Yes.", False),
    ("Sure, Paris is the capital of France.", False),
    (FLUENT + " Let me know if you have other questions.", False),
])
def test_canned_replies(text, canned):
    assert is_canned(text) is canned


def test_a_canned_reply_ignoring_the_query_scores_below_the_floor():
    out = score("I'm ready to help.", perplexity=4.0)
    assert out["canned"] and out["fluency"] < 1.0


@pytest.mark.parametrize("ppl,expected", [(None, 2.0), (3.0, 2.0), (15.0, 2.0), (25.0, 2.0), (1000.0, 0.0),
                                          (5000.0, 0.0)])
def test_perplexity_enters_fluency(ppl, expected):
    assert score(FLUENT, perplexity=ppl)["fluency"] == expected


def test_fluency_falls_with_perplexity_between_the_bounds():
    values = [score(FLUENT, perplexity=p)["fluency"] for p in (25, 60, 150, 400, 1000)]
    assert values == sorted(values, reverse=True) and 0 < values[2] < 2


@pytest.mark.parametrize("bad", [0.5, float("nan"), float("inf")])
def test_bad_perplexity_is_refused(bad):
    with pytest.raises(ValueError, match="perplexity"):
        score(FLUENT, perplexity=bad)


def test_fluency_formula_stays_in_range():
    worst = fluency_score(empty=False, perplexity=1e9, rep=1.0, copied=True, copy_words=50, n_words=10, canned=True,
                          truncated=True)
    best = fluency_score(empty=False, perplexity=1.0, rep=0.0, copied=False, copy_words=0, n_words=10, canned=False,
                         truncated=False)
    assert (worst, best) == (0.0, 2.0)


def test_score_output_runs_the_case_checks():
    case = Case("lower", INSTRUCTION, QUERY, checks=(Check("lowercase"),))
    assert score("paris is lovely.", case=case, loose=False)["follows"] is True
    out = score("Paris is lovely.", case=case)
    assert (out["follows"], out["follows_loose"], out["checks_passed"], out["checks_total"]) == (False, False, 0, 1)
    assert out["failed_checks"] == "lowercase"


@pytest.mark.parametrize("text", [
    "I am ready to assist you. I will provide you with a response in English in all lowercase letters.",
    "Sure! I'll write my answer in lowercase letters only.",
    "Please provide the text you would like me to rewrite.",
    "I understand. You want me to answer in French. What would you like to know?",
    "I'm ready to help.",
])
def test_deflections_are_caught(text):
    out = score(text, perplexity=4.0)
    assert is_deflection(text) or is_canned(text)
    assert out["deflected"] and out["fluency"] <= 0.5


@pytest.mark.parametrize("text", [
    FLUENT,
    "paris is the capital of france. it is known for the eiffel tower, the louvre and its many cafes.",
    "Sure! Here is my answer in lowercase: paris is the capital of france, known for art, food and fashion.",
    "Tell me about the city of Paris in two sentences. Paris is the capital of France.",
    FLUENT + " Let me know if you have other questions.",
    "No. A tomato is a fruit.",
])
def test_answers_are_not_deflections(text):
    assert not score(text)["deflected"]


def test_effective_success_needs_the_checks_and_no_copy_or_deflection():
    case = Case("lower", INSTRUCTION, QUERY, checks=(Check("lowercase"),))
    assert score("paris is lovely and old.", case=case)["effective"] is True
    deflects = score("i will write my whole answer in lowercase letters.", case=case)
    assert deflects["follows"] and deflects["deflected"] and deflects["effective"] is False
    copies = score("write everything in lowercase letters only. never use capitals. paris is old.", case=case)
    assert copies["follows"] and copies["copied"] and copies["effective"] is False
    loops = score("paris. paris. paris. paris. paris. paris. paris. paris. paris. paris. paris. paris.", case=case)
    assert loops["follows"] and loops["repetitive"] and loops["effective"] is False
    assert score("paris is lovely.")["effective"] is None  # no checks, no success to count
    assert effective(None, copied=False, deflected=False) is None
    assert effective(True, copied=None, deflected=None) is True


def test_a_deflection_costs_the_canned_factor_once():
    base = dict(empty=False, perplexity=4.0, rep=0.0, copied=False, copy_words=0, n_words=12, truncated=False)
    assert fluency_score(**base, canned=False, deflected=True) == fluency_score(**base, canned=True) == 0.5
    assert fluency_score(**base, canned=True, deflected=True) == 0.5
