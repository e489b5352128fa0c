"""Structured output (response_format) through the real clients: the openai SDK, langchain-openai and instructor,
against a live server and a real worker; and on batch lines. Generations stay short (a two-field schema).
"""

from __future__ import annotations

import io
import json
from typing import Literal

import jsonschema
import pytest
from pydantic import BaseModel

from tests.system.test_openai_api import MODEL, TOKEN, client, live_server, stored_job  # noqa: F401  (fixtures)
from tests.system.test_openai_batches import jsonl, line, read_lines, wait_batch

openai = pytest.importorskip("openai")

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["colour", "rare"],
          "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]}, "rare": {"type": "boolean"}}}
STRICT = {"type": "json_schema", "json_schema": {"name": "sky", "schema": SCHEMA, "strict": True}}
MESSAGES = [{"role": "system", "content": "Reply in JSON."},
            {"role": "user", "content": "What colour is the sky? Is that colour rare?"}]


class Sky(BaseModel):
    colour: Literal["red", "green", "blue"]
    rare: bool


@pytest.mark.parametrize("boost", [None, {"multiplier": 10}], ids=["plain", "boosted"])
def test_json_schema_strict_answers_an_object_that_validates(client, pg_url, boost):  # noqa: F811
    extra = {"instaboost": boost} if boost else None
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0,
                                          response_format=STRICT, extra_body=extra)
    jsonschema.validate(json.loads(resp.choices[0].message.content), SCHEMA)
    assert resp.choices[0].finish_reason == "stop"
    status, _, params, runs = stored_job(pg_url, int(resp.id))
    assert status == "succeeded" and params["response_format"]["schema"] == SCHEMA
    if boost:  # the boost applies to the system message that asks for the format, as usual
        assert params["messages"][0]["segments"] == [["Reply in JSON.", 10.0]] and runs[0][1] == 10.0


def test_json_object_answers_parseable_json_and_a_short_budget_is_length(client):  # noqa: F811
    city = [{"role": "system", "content": 'Reply with a JSON object with one key, "city".'},
            {"role": "user", "content": "What is the capital of France?"}]
    resp = client.chat.completions.create(model=MODEL, messages=city, max_tokens=24, temperature=0,
                                          response_format={"type": "json_object"})
    assert isinstance(json.loads(resp.choices[0].message.content), dict)
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=3, temperature=0,
                                         response_format=STRICT)
    assert cut.choices[0].finish_reason == "length" and cut.choices[0].message.content.startswith("{")


def test_a_schema_the_library_cannot_compile_is_a_400_naming_the_construct(client):  # noqa: F811
    bad = {"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "object", "properties": {"code": {"type": "string", "pattern": "(?<=a)b"}}}}}
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, response_format=bad)
    error = exc.value.body if isinstance(exc.value.body, dict) and "param" in exc.value.body else \
        exc.value.body.get("error", {})
    assert error["param"] == "response_format" and "look-around" in error["message"]


def test_langchain_with_structured_output_returns_the_parsed_model(live_server):  # noqa: F811
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(model=MODEL, base_url=live_server[0] + "/v1", api_key=TOKEN, temperature=0, max_tokens=24,
                     max_retries=0, timeout=300)
    got = llm.with_structured_output(Sky, method="json_schema").invoke(
        [("system", "Reply in JSON."), ("user", "What colour is the sky? Is that colour rare?")])
    assert isinstance(got, Sky) and got.colour in ("red", "green", "blue")


def test_instructor_json_schema_mode_returns_a_validated_model(client):  # noqa: F811
    import instructor

    patched = instructor.from_openai(client, mode=instructor.Mode.JSON_SCHEMA)
    got = patched.chat.completions.create(model=MODEL, messages=MESSAGES, response_model=Sky, max_tokens=24,
                                          temperature=0, max_retries=1)
    assert isinstance(got, Sky) and isinstance(got.rare, bool)


def test_response_format_on_a_batch_line_is_enforced(client):  # noqa: F811
    ask = "What colour is the sky? Is that colour rare?"
    lines = [line("schema", ask, max_tokens=24, response_format=STRICT),
             line("free", ask, max_tokens=6),
             line("bad-schema", ask, response_format={"type": "json_schema", "json_schema": {
                 "name": "x", "schema": {"type": "array", "uniqueItems": True}}})]
    f = client.files.create(file=("structured.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_batch(client, batch.id, {"completed", "failed", "cancelled", "expired"}, timeout=600)
    assert done.status == "completed"
    out = {x["custom_id"]: x["response"]["body"]["choices"][0]["message"]["content"]
           for x in read_lines(client, done.output_file_id)}
    jsonschema.validate(json.loads(out["schema"]), SCHEMA)
    with pytest.raises(ValueError):
        json.loads(out["free"])  # the line without response_format stays free text
    err = read_lines(client, done.error_file_id)
    assert [x["custom_id"] for x in err] == ["bad-schema"]
    assert err[0]["response"]["status_code"] == 400 and "uniqueItems" in err[0]["response"]["body"]["error"]["message"]
    assert err[0]["response"]["body"]["error"]["param"] == "response_format"
