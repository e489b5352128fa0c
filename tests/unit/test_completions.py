"""shared.completions and shared.logprobs: a completions body into a completion job's rows, and stored logprobs
back into OpenAI's completions and chat shapes."""

from __future__ import annotations

import pytest

from shared.chat import chat_params
from shared.completions import completion_params, openai_request, openai_rows
from shared.errors import ValidationError
from shared.logprobs import chat_logprobs, completion_logprobs
from shared.settings import load_settings

SETTINGS = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)


def params(header=None, **body):
    return completion_params({"model": "m", **body}, SETTINGS, header_boost=header)


def test_each_prompt_is_a_row_and_max_tokens_zero_scores_with_echo():
    p = params(prompt=["a b", [1, 2, 3]], max_tokens=0, echo=True, logprobs=3)
    assert openai_rows(p) == ["p0", "p1"] and p["kind"] == "completion"
    text, ids = openai_request(p, "p0"), openai_request(p, "p1")
    assert text.params.max_new_tokens == 0 and text.prompt_logprobs == 3 and text.logprobs == 3 and text.exact_text
    assert text.messages[0].content == "a b" and text.is_identity and text.spec.placement == "raw"
    assert ids.prompt_ids == (1, 2, 3) and ids.messages is None and ids.prompt_logprobs == 3
    assert openai_request(params(prompt="x", max_tokens=0, echo=True), "p0").prompt_logprobs == 0
    assert openai_request(params(prompt="x", logprobs=2), "p0").prompt_logprobs is None


def test_tags_and_char_spans_boost_the_same_text():
    tagged = openai_request(params(prompt="Be brief. <boost>Answer in French.</boost> Hi",
                                   instaboost={"multiplier": 4}), "p0")
    spans = openai_request(params(prompt="Be brief. Answer in French. Hi", instaboost={"multiplier": 4,
                                                                                      "spans": [[10, 27]]}), "p0")
    assert tagged.messages == spans.messages
    assert [(s.text, s.multiplier) for s in spans.messages[0].segments] == [
        ("Be brief. ", None), ("Answer in French.", 4.0), (" Hi", None)]


def test_token_spans_and_the_header_boost_with_the_body_winning():
    p = params(header={"multiplier": 10, "spans": [[0, 2]]}, prompt=[5, 6, 7])
    assert openai_request(p, "p0").prompt_spans == ((0, 2, 10.0),)
    p = params(header={"multiplier": 10, "spans": [[0, 2]]}, prompt=[5, 6, 7],
               instaboost={"multiplier": 3, "spans": [[1, 3, 2.5]]})
    assert openai_request(p, "p0").prompt_spans == ((1, 3, 2.5),)


def test_n_choices_are_rows_prompt_by_prompt_each_with_seed_plus_choice():
    p = params(prompt=["a", [1, 2]], n=3, seed=2**32 - 2, temperature=1)
    assert openai_rows(p) == ["p0", "p0_1", "p0_2", "p1", "p1_1", "p1_2"]  # choice 0 keeps n = 1's name
    seeds = [openai_request(p, row).params.seed for row in openai_rows(p)]
    assert seeds == [2**32 - 2, 2**32 - 1, 0] * 2
    assert openai_request(p, "p1_2").prompt_ids == (1, 2) and openai_request(p, "p0_1").messages[0].content == "a"
    assert openai_rows(params(prompt="a")) == ["p0"]


def test_every_error_is_reported_at_once():
    with pytest.raises(ValidationError) as exc:
        params(prompt="", logprobs=50, echo=1, n=0)
    assert {e["field"] for e in exc.value.errors} >= {"logprobs", "echo", "n"}


def test_chat_logprobs_need_logprobs_true_and_are_stored_as_k():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    assert chat_params({**body, "logprobs": True, "top_logprobs": 4}, SETTINGS)["logprobs"] == 4
    assert chat_params({**body, "logprobs": True}, SETTINGS)["logprobs"] == 0
    assert chat_params(body, SETTINGS)["logprobs"] is None
    with pytest.raises(ValidationError):
        chat_params({**body, "top_logprobs": 4}, SETTINGS)


def test_stored_sections_in_openai_shapes():
    prompt = {"ids": [1, 2], "tokens": ["The", " cat"], "logprobs": [None, -2.0], "top": [[], [[" dog", -1.0]]]}
    output = {"ids": [3], "tokens": [" sat"], "logprobs": [-0.5], "top": [[[" sat", -0.5], [" ran", -1.5]]]}
    got = completion_logprobs([prompt, output])
    assert got == {"tokens": ["The", " cat", " sat"], "token_logprobs": [None, -2.0, -0.5],
                   "top_logprobs": [None, {" dog": -1.0}, {" sat": -0.5, " ran": -1.5}], "text_offset": [0, 3, 7]}
    chat = chat_logprobs({"prompt": None, "output": output})
    assert chat["content"][0] == {"token": " sat", "logprob": -0.5, "bytes": [32, 115, 97, 116], "top_logprobs": [
        {"token": " sat", "logprob": -0.5, "bytes": [32, 115, 97, 116]},
        {"token": " ran", "logprob": -1.5, "bytes": [32, 114, 97, 110]}]}
    assert chat_logprobs(None) is None and chat_logprobs({"prompt": prompt, "output": None}) is None
