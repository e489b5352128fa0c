"""Structured output in both engines: a response_format's grammar (llguidance) masks each row's tokens."""

from __future__ import annotations

import json

import jsonschema
import pytest

from shared.errors import ValidationError
from shared.response_format import grammar, parse
from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "rare"],
          "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "rare": {"type": "boolean"}}}
QUESTION = "What colour is the sky? Is that colour rare?"
CITY = ('Reply with a JSON object with one key, "city".', "What is the capital of France?")  # a short object


def request(fmt: dict | None, max_new_tokens: int = 24, boost: float | None = None, system: str = "Reply in JSON.",
            user: str = QUESTION, **params) -> GenerationRequest:
    messages = [ChatMessage.plain("system", system, boost), ChatMessage.plain("user", user)]
    return GenerationRequest.chat(messages, BoostSpec(), GenerationParams(max_new_tokens=max_new_tokens, **params),
                                  grammar=grammar(parse(fmt, 20_000)) if fmt else None)


STRICT = {"type": "json_schema", "json_schema": {"name": "colour", "schema": SCHEMA, "strict": True}}


@pytest.mark.parametrize("boost", [None, 10.0], ids=["plain", "boosted"])
def test_json_schema_output_validates_and_both_engines_agree(fast_engine, tl_engine, boost):
    req = request(STRICT, boost=boost)
    fast, lens = fast_engine.generate([req])[0], tl_engine.generate([req])[0]
    jsonschema.validate(json.loads(fast.text), SCHEMA)
    assert fast.finish_reason == "stop"  # the grammar finished, then EOS was the only token left
    assert (lens.text, lens.output_tokens) == (fast.text, fast.output_tokens)  # greedy: the same tokens


def test_the_grammar_changes_what_plain_decoding_says(fast_engine):
    plain = fast_engine.generate([request(None, max_new_tokens=8)])[0]
    with pytest.raises(ValueError):
        json.loads(plain.text)  # without the grammar the model answers in prose


def test_json_object_returns_an_object_and_a_sampled_row_obeys_too(fast_engine):
    fmt = {"type": "json_object"}
    rows = fast_engine.generate([request(fmt, system=CITY[0], user=CITY[1]), request(STRICT, temperature=1.0, seed=7)])
    assert isinstance(json.loads(rows[0].text), dict)
    jsonschema.validate(json.loads(rows[1].text), SCHEMA)


def test_a_constrained_row_in_a_batch_equals_it_alone(fast_engine):
    alone = fast_engine.generate([request(STRICT)])[0]
    plain = fast_engine.generate([request(None, max_new_tokens=6)])[0]
    both = fast_engine.generate([request(None, max_new_tokens=6), request(STRICT)])
    assert (both[0].text, both[1].text) == (plain.text, alone.text)


def test_running_out_of_tokens_is_length_with_an_incomplete_value(fast_engine):
    got = fast_engine.generate([request(STRICT, max_new_tokens=4)])[0]
    assert got.finish_reason == "length" and got.output_tokens == 4 and got.text.startswith("{")
    with pytest.raises(ValueError):
        json.loads(got.text)


def test_a_grammar_the_tokenizer_cannot_compile_fails_before_any_compute(fast_engine):
    from llguidance import LLMatcher

    bad = GenerationRequest.chat([ChatMessage.plain("user", QUESTION)], grammar=LLMatcher.grammar_from_lark(
        "start: missing_rule"))
    with pytest.raises(ValidationError) as exc:
        fast_engine.generate([bad])
    assert exc.value.field == "response_format" and exc.value.message.startswith("response_format")
    assert "missing_rule" in exc.value.message
