"""Bad input to POST /v1/responses: every case is answered 4xx in OpenAI's error shape, names the field in param,
and stores nothing (no job, no broker message). Real PostgreSQL and Redis, a heartbeat announcing the default model,
no worker (a valid request is queued and waits out v1.wait_seconds: the 504 names the response to poll).
"""

from __future__ import annotations

import pytest

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app
from tests.web.test_openai_inputs import snapshot


def body(**over) -> dict:
    out = {"model": DEFAULT_MODEL, "input": "What is the capital of Italy?", "instructions": "Answer in French.",
           "max_output_tokens": 4}
    out.update(over)
    return {k: v for k, v in out.items() if v is not ...}


def item(content, role="user", **kw) -> dict:
    return body(input=[{"role": role, "content": content, **kw}])


# (id, body, status, param)
CASES = [
    ("no-input", body(input=...), 400, "input"),
    ("no-model", body(model=...), 400, "model"),
    ("input-number", body(input=42), 400, "input"),
    ("input-empty-list", body(input=[]), 400, "input"),
    ("input-item-string", body(input=["hi"]), 400, "input[0]"),
    ("content-number", item(7), 400, "input[0].content"),
    ("image-part", item([{"type": "input_image", "image_url": "https://example.com/a.png"}]), 400,
     "input[0].content[0]"),
    ("file-part", item([{"type": "input_text", "text": "see"}, {"type": "input_file", "file_id": "file-1"}]), 400,
     "input[0].content[1]"),
    ("function-call-output", body(input=[{"type": "function_call_output", "call_id": "c", "output": "x"}]), 400,
     "input[0].type"),
    ("item-reference", body(input=[{"type": "item_reference", "id": "msg_1"}]), 400, "input[0].type"),
    ("tool-role", item("x", role="tool"), 400, "input[0].role"),
    ("item-unknown-key", item("x", colour="red"), 400, "input[0]"),
    ("instructions-number", body(instructions=5), 400, "instructions"),
    ("instructions-unclosed-boost", body(instructions="Be <boost>brief"), 400, "instructions"),
    ("input-unclosed-boost", item("Hi <boost>there"), 400, "input[0].content"),
    ("all-empty", body(input="", instructions=...), 400, "input"),
    ("tools", body(tools=[{"type": "function", "name": "f", "parameters": {}}]), 400, "tools"),
    ("tool-choice", body(tool_choice="required"), 400, "tool_choice"),
    ("reasoning", body(reasoning={"effort": "low"}), 400, "reasoning"),
    ("include-logprobs", body(include=["message.output_text.logprobs"]), 400, "include[0]"),
    ("include-string", body(include="reasoning.encrypted_content"), 400, "include"),
    ("text-json-schema", body(text={"format": {"type": "json_schema", "name": "x", "schema": {}}}), 400, "text"),
    ("background", body(background=True), 400, "background"),
    ("max-output-tokens-zero", body(max_output_tokens=0), 400, "max_output_tokens"),
    ("max-output-tokens-string", body(max_output_tokens="4"), 400, "max_output_tokens"),
    ("temperature-negative", body(temperature=-1), 400, "temperature"),
    ("top-p-zero", body(top_p=0), 400, "top_p"),
    ("stream-string", body(stream="yes"), 400, "stream"),
    ("store-string", body(store="no"), 400, "store"),
    ("metadata-number-value", body(metadata={"k": 1}), 400, "metadata"),
    ("user-number", body(user=5), 400, "user"),
    ("boost-zero", body(instaboost={"multiplier": 0}), 400, "instaboost.multiplier"),
    ("layers-past-model", body(instaboost={"layers": [0, 30]}), 400, "instaboost.layers"),
    ("boost-unknown-key", body(instaboost={"colour": "red"}), 400, "instaboost.colour"),
    ("previous-malformed", body(previous_response_id="chatcmpl-1"), 400, "previous_response_id"),
    ("previous-unknown", body(previous_response_id="resp_987654321"), 400, "previous_response_id"),
    ("unknown-field", body(frequency_penalty=1), 400, "frequency_penalty"),
    ("model-unserved", body(model="no-such-model"), 404, "model"),
]


@pytest.fixture(scope="module")
def responses_app(pg_url, redis_namespace):
    model_info = {DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}}
    with live_heartbeat(redis_namespace, "responses-worker", [DEFAULT_MODEL], model_info=model_info):
        yield make_test_app(pg_url, redis_namespace, SETTINGS={"v1.wait_seconds": 0.5})


@pytest.mark.parametrize("name, payload, status, param", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_openai_shape_naming_the_field(responses_app, pg_url, redis_client, redis_namespace,
                                                               name, payload, status, param):
    before = snapshot(pg_url, redis_client, redis_namespace)
    resp = responses_app.test_client().post("/v1/responses", json=payload)
    error = resp.get_json()
    assert resp.status_code == status, error
    assert set(error) == {"error"} and set(error["error"]) == {"message", "type", "param", "code"}, error
    assert error["error"]["type"] == "invalid_request_error" and error["error"]["message"]
    assert error["error"]["param"] == param, error
    assert snapshot(pg_url, redis_client, redis_namespace) == before


def test_an_unknown_previous_response_is_named_as_openai_does(responses_app):
    error = responses_app.test_client().post("/v1/responses", json=body(previous_response_id="resp_987654321"))
    assert error.get_json()["error"]["code"] == "previous_response_not_found"
    assert "resp_987654321" in error.get_json()["error"]["message"]


def test_chat_errors_are_named_as_the_responses_request_spells_them():
    from shared.errors import ValidationError
    from shared.responses import renamed

    exc = renamed(ValidationError("max_tokens 9000 does not fit", errors=[
        {"field": "max_tokens", "message": "max_tokens 9000 does not fit"},
        {"field": "messages[1].content", "message": "messages[1].content has an unclosed <boost>"}]), lead=1)
    assert [e["field"] for e in exc.errors] == ["max_output_tokens", "input[0].content"]
    assert exc.errors[0]["message"] == "max_output_tokens 9000 does not fit"
    assert exc.errors[1]["message"] == "input[0].content has an unclosed <boost>"


def test_an_unknown_response_is_a_404(responses_app):
    web = responses_app.test_client()
    for rid in ("resp_987654321", "resp_x", "42"):
        resp = web.get(f"/v1/responses/{rid}")
        assert resp.status_code == 404 and resp.get_json()["error"]["param"] == "response_id"


def test_a_wait_past_the_limit_names_the_response_to_poll(responses_app, pg_url):
    """No worker runs here: the job is stored and queued; GET /v1/responses/<id> shows it queued, a chat job is none."""
    web = responses_app.test_client()
    resp = web.post("/v1/responses", json=body(metadata={"run": "a"}, user="u1", store=False,
                                                include=["reasoning.encrypted_content"], tools=[],
                                                tool_choice="none"))
    assert resp.status_code == 504 and resp.headers["x-should-retry"] == "false"
    rid = resp.headers["Location"].rsplit("/", 1)[1]
    assert rid.startswith("resp_") and f"/v1/responses/{rid}" in resp.get_json()["error"]["message"]
    job_id = int(rid[5:])
    got = web.get(f"/v1/responses/{rid}").get_json()
    assert (got["id"], got["object"], got["status"], got["output"]) == (rid, "response", "queued", [])
    assert got["metadata"] == {"run": "a"} and got["user"] == "u1" and got["store"] is False
    assert got["instructions"] == "Answer in French." and got["max_output_tokens"] == 4
    job = web.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["params"]["kind"] == "chat" and job["params"]["api"] == "responses"
    # Its instructions are the system message; without instaboost nothing is boosted.
    assert job["params"]["messages"][0] == {"role": "system", "segments": [["Answer in French.", None]]}
    # A response that is still queued cannot be continued yet.
    cont = web.post("/v1/responses", json=body(previous_response_id=rid))
    assert cont.status_code == 409 and cont.get_json()["error"]["param"] == "previous_response_id"
    web.post(f"/api/jobs/{job_id}/cancel", json={})
    assert web.get(f"/v1/responses/{rid}").get_json()["status"] == "cancelled"
    # A chat completion is not a response.
    chat = web.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "max_tokens": 2,
                                                  "messages": [{"role": "user", "content": "Hi"}]})
    chat_id = int(chat.headers["Location"].rsplit("/", 1)[1])
    assert web.get(f"/v1/responses/resp_{chat_id}").status_code == 404
    web.post(f"/api/jobs/{chat_id}/cancel", json={})


def test_instructions_are_what_the_boost_boosts(responses_app, pg_url):
    web = responses_app.test_client()
    resp = web.post("/v1/responses", json=body(instaboost={"multiplier": 7}))
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1][5:])
    params = web.get(f"/api/jobs/{job_id}").get_json()["params"]
    assert [m["segments"] for m in params["messages"]] == [[["Answer in French.", 7.0]],
                                                          [["What is the capital of Italy?", None]]]
    web.post(f"/api/jobs/{job_id}/cancel", json={})


def test_a_stream_that_stalls_ends_with_an_error_event_then_response_failed(responses_app):
    """No worker: no text comes within v1.wait_seconds; the stream ends as OpenAI's does when a response fails."""
    import json

    web = responses_app.test_client()
    resp = web.post("/v1/responses", json=body(stream=True))
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    frames = [f for f in resp.get_data(as_text=True).split("\n\n") if f.startswith("event: ")]
    events = [(f.split("\n")[0][7:], json.loads(f.split("\n")[1][6:])) for f in frames]
    assert [name for name, _ in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                            "response.content_part.added", "error", "response.failed"]
    assert all(name == data["type"] for name, data in events)
    assert [data["sequence_number"] for _, data in events] == list(range(6))
    assert events[4][1]["code"] == "timeout" and "/v1/responses/resp_" in events[4][1]["message"]
    failed = events[5][1]["response"]
    assert failed["status"] == "failed" and failed["error"]["code"] == "server_error"
    assert failed["id"] == events[0][1]["response"]["id"]
    web.post(f"/api/jobs/{resp.headers['X-InstaBoost-Job-Id']}/cancel", json={})
