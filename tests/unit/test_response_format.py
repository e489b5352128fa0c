"""shared.response_format: OpenAI's response_format into what a chat job stores, refused when not enforceable."""

from __future__ import annotations

import subprocess
import sys

import pytest

from shared.chat import chat_params, generation_request
from shared.errors import ValidationError
from shared.response_format import parse
from shared.settings import load_settings

SETTINGS = load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None)
SCHEMA = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"],
          "additionalProperties": False}


def schema_format(schema=SCHEMA, **extra) -> dict:
    return {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, **extra}}


def refusal(value) -> str:
    with pytest.raises(ValidationError) as exc:
        parse(value, 20_000)
    assert exc.value.errors[0]["field"] == "response_format"
    return exc.value.errors[0]["message"]


def test_text_is_free_text_and_the_json_kinds_are_stored():
    assert parse(None, 100) is None and parse({"type": "text"}, 100) is None
    assert parse({"type": "json_object"}, 100) == {"type": "json_object"}
    assert parse(schema_format(strict=True), 20_000) == {"type": "json_schema", "name": "answer", "strict": True,
                                                         "schema": SCHEMA}


def test_a_chat_job_stores_it_and_its_request_carries_the_grammar():
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    plain = chat_params(body, SETTINGS)
    assert "response_format" not in plain and generation_request(plain).grammar is None
    constrained = chat_params({**body, "response_format": schema_format()}, SETTINGS)
    assert constrained["response_format"]["schema"] == SCHEMA
    assert '"required":["a"]' in generation_request(constrained).grammar.replace(" ", "")


@pytest.mark.parametrize("schema, construct", [
    ({"type": "string", "pattern": "(?<=a)b"}, "look-around"),
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "properties": {"a": {"not": {"type": "string"}}}}, '"not"'),
    ({"$ref": "#/$defs/missing"}, "/$defs/missing"),
    ({"type": "string", "format": "colour"}, "Unknown format: colour"),
])
def test_a_schema_the_library_cannot_enforce_is_refused_naming_the_construct(schema, construct):
    message = refusal(schema_format(schema))
    assert "cannot be enforced" in message and construct in message


@pytest.mark.parametrize("value, words", [
    ("json", "type is one of text, json_object, json_schema"),
    ({"type": "xml"}, "type is one of"),
    ({"type": "json_object", "schema": {}}, "takes only type"),
    ({"type": "json_schema"}, "json_schema must be an object"),
    (schema_format(colour=1), "unknown key 'colour'"),
    ({"type": "json_schema", "json_schema": {"schema": SCHEMA}}, "name is required"),
    (schema_format(strict="yes"), "strict must be a boolean"),
    ({"type": "json_schema", "json_schema": {"name": "a"}}, "schema is required"),
])
def test_malformed_response_formats_say_what_to_fix(value, words):
    assert words in refusal(value)


def test_a_huge_schema_is_refused_by_size():
    big = {"type": "object", "properties": {f"p{i}": {"type": "string"} for i in range(2000)}}
    with pytest.raises(ValidationError) as exc:
        parse(schema_format(big), 20_000)
    assert "limits.max_text_chars" in exc.value.errors[0]["message"]


NO_TORCH = """
import sys
from shared.chat import chat_params
from shared.settings import load_settings
body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "response_format": {"type": "json_object"}}
chat_params(body, load_settings(env={"INSTABOOST_CONFIG": ""}, dotenv=None))
assert "torch" not in sys.modules, "torch was imported"
"""


def test_validation_needs_no_torch():
    # The web validates schemas with llguidance; it must never import torch.
    done = subprocess.run([sys.executable, "-c", NO_TORCH], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
