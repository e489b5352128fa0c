"""Bad input to /v1: every case is answered 4xx in OpenAI's error shape and stores nothing (no job, file, batch or
broker message). Real PostgreSQL and Redis, a heartbeat announcing the default model (30 layers), no worker.
"""

from __future__ import annotations

import io
import json

import pytest

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app

MAX_FILE = 2000
SYSTEM = {"role": "system", "content": "Answer in French."}
USER = {"role": "user", "content": "What is the capital of Italy?"}


def chat(**over) -> dict:
    body = {"model": DEFAULT_MODEL, "messages": [SYSTEM, USER], "max_tokens": 4}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


def boost(**kw) -> dict:
    return chat(instaboost=kw)


def user(content) -> dict:
    return chat(messages=[{"role": "user", "content": content}])


LINE = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": chat()}

# (id, method, path, how: json | raw | multipart, payload, status)
CASES = [
    ("not-json", "POST", "/v1/chat/completions", "raw", (b"{", "application/json"), 400),
    ("text-plain", "POST", "/v1/chat/completions", "raw", (b"hello", "text/plain"), 415),
    ("body-array", "POST", "/v1/chat/completions", "json", [], 400),
    ("no-model", "POST", "/v1/chat/completions", "json", chat(model=...), 400),
    ("no-messages", "POST", "/v1/chat/completions", "json", chat(messages=...), 400),
    ("empty-messages", "POST", "/v1/chat/completions", "json", chat(messages=[]), 400),
    ("tool-role", "POST", "/v1/chat/completions", "json", chat(messages=[{"role": "tool", "content": "x"}]), 400),
    ("content-number", "POST", "/v1/chat/completions", "json", user(42), 400),
    ("image-part", "POST", "/v1/chat/completions", "json", user([{"type": "image_url", "image_url": {}}]), 400),
    ("unclosed-boost", "POST", "/v1/chat/completions", "json", user("Hi <boost>there"), 400),
    ("stray-close", "POST", "/v1/chat/completions", "json", user("Hi</boost> there"), 400),
    ("nested-boost", "POST", "/v1/chat/completions", "json", user("<boost>a <boost>b</boost></boost>"), 400),
    ("empty-boost", "POST", "/v1/chat/completions", "json", user("a <boost></boost> b"), 400),
    ("nul-content", "POST", "/v1/chat/completions", "json", user("a\x00b"), 400),
    ("all-empty", "POST", "/v1/chat/completions", "json", user(""), 400),
    ("m-zero", "POST", "/v1/chat/completions", "json", boost(multiplier=0), 400),
    ("m-negative", "POST", "/v1/chat/completions", "json", boost(multiplier=-2), 400),
    ("m-string", "POST", "/v1/chat/completions", "json", boost(multiplier="ten"), 400),
    ("m-huge", "POST", "/v1/chat/completions", "json", boost(multiplier=1e7), 400),
    ("message-boost-zero", "POST", "/v1/chat/completions", "json",
     chat(messages=[{**SYSTEM, "boost": 0}, USER]), 400),
    ("layers-word", "POST", "/v1/chat/completions", "json", boost(layers="some"), 400),
    ("layers-negative", "POST", "/v1/chat/completions", "json", boost(layers=[-1]), 400),
    ("layers-past-model", "POST", "/v1/chat/completions", "json", boost(layers=[0, 30]), 400),
    ("start-layer-negative", "POST", "/v1/chat/completions", "json", boost(start_layer=-1), 400),
    ("start-layer-past-model", "POST", "/v1/chat/completions", "json", boost(layers="middle", start_layer=99), 400),
    ("heads-zero", "POST", "/v1/chat/completions", "json", boost(heads=0), 400),
    ("heads-over-100", "POST", "/v1/chat/completions", "json", boost(heads=150), 400),
    ("heads-bad-map", "POST", "/v1/chat/completions", "json", boost(heads={"x": [1]}), 400),
    ("heads-past-model", "POST", "/v1/chat/completions", "json", boost(heads={"3": [9]}), 400),
    ("placement", "POST", "/v1/chat/completions", "json", boost(placement="nowhere"), 400),
    ("boost-unknown-key", "POST", "/v1/chat/completions", "json", boost(colour="red"), 400),
    ("boost-not-object", "POST", "/v1/chat/completions", "json", chat(instaboost=5), 400),
    ("n-zero", "POST", "/v1/chat/completions", "json", chat(n=0), 400),
    ("n-past-max", "POST", "/v1/chat/completions", "json", chat(n=9), 400),
    ("n-string", "POST", "/v1/chat/completions", "json", chat(n="2"), 400),
    ("top-k-negative", "POST", "/v1/chat/completions", "json", chat(top_k=-1), 400),
    ("top-k-float", "POST", "/v1/chat/completions", "json", chat(top_k=2.5), 400),
    ("min-p-over-1", "POST", "/v1/chat/completions", "json", chat(min_p=1.5), 400),
    ("min-p-string", "POST", "/v1/chat/completions", "json", chat(min_p="0.1"), 400),
    ("repetition-penalty-zero", "POST", "/v1/chat/completions", "json", chat(repetition_penalty=0), 400),
    ("repetition-penalty-bool", "POST", "/v1/chat/completions", "json", chat(repetition_penalty=True), 400),
    ("presence-penalty-3", "POST", "/v1/chat/completions", "json", chat(presence_penalty=3), 400),
    ("frequency-penalty-minus-3", "POST", "/v1/chat/completions", "json", chat(frequency_penalty=-3), 400),
    ("frequency-penalty-list", "POST", "/v1/chat/completions", "json", chat(frequency_penalty=[1]), 400),
    ("logit-bias-over-100", "POST", "/v1/chat/completions", "json", chat(logit_bias={"5": 101}), 400),
    ("logit-bias-word-key", "POST", "/v1/chat/completions", "json", chat(logit_bias={"cat": 1}), 400),
    ("logit-bias-string-value", "POST", "/v1/chat/completions", "json", chat(logit_bias={"5": "1"}), 400),
    ("logit-bias-list", "POST", "/v1/chat/completions", "json", chat(logit_bias=[5]), 400),
    ("logit-bias-301", "POST", "/v1/chat/completions", "json",
     chat(logit_bias={str(k): 1 for k in range(301)}), 400),
    ("user-number", "POST", "/v1/chat/completions", "json", chat(user=5), 400),
    ("user-too-long", "POST", "/v1/chat/completions", "json", chat(user="u" * 513), 400),
    ("user-nul", "POST", "/v1/chat/completions", "json", chat(user="a\x00b"), 400),
    ("metadata-nul", "POST", "/v1/chat/completions", "json", chat(metadata={"k": "a\x00b"}), 400),
    ("metadata-17-pairs", "POST", "/v1/chat/completions", "json", chat(metadata={f"k{i}": "v" for i in range(17)}),
     400),
    ("metadata-number-value", "POST", "/v1/chat/completions", "json", chat(metadata={"k": 1}), 400),
    ("metadata-long-key", "POST", "/v1/chat/completions", "json", chat(metadata={"k" * 65: "v"}), 400),
    ("metadata-long-value", "POST", "/v1/chat/completions", "json", chat(metadata={"k": "v" * 513}), 400),
    ("max-tokens-zero", "POST", "/v1/chat/completions", "json", chat(max_tokens=0), 400),
    ("max-tokens-huge", "POST", "/v1/chat/completions", "json", chat(max_tokens=10**6), 400),
    ("max-completion-tokens-string", "POST", "/v1/chat/completions", "json", chat(max_completion_tokens="4"), 400),
    ("temperature-negative", "POST", "/v1/chat/completions", "json", chat(temperature=-1), 400),
    ("top-p-zero", "POST", "/v1/chat/completions", "json", chat(top_p=0), 400),
    ("seed-negative", "POST", "/v1/chat/completions", "json", chat(seed=-5), 400),
    ("stop-five", "POST", "/v1/chat/completions", "json", chat(stop=["a", "b", "c", "d", "e"]), 400),
    ("stop-empty-string", "POST", "/v1/chat/completions", "json", chat(stop=""), 400),
    ("stream-string", "POST", "/v1/chat/completions", "json", chat(stream="yes"), 400),
    ("unknown-field", "POST", "/v1/chat/completions", "json", chat(foo=1), 400),
    ("logprobs-string", "POST", "/v1/chat/completions", "json", chat(logprobs="yes"), 400),
    ("top-logprobs-21", "POST", "/v1/chat/completions", "json", chat(logprobs=True, top_logprobs=21), 400),
    ("top-logprobs-negative", "POST", "/v1/chat/completions", "json", chat(logprobs=True, top_logprobs=-1), 400),
    ("top-logprobs-float", "POST", "/v1/chat/completions", "json", chat(logprobs=True, top_logprobs=1.5), 400),
    ("top-logprobs-alone", "POST", "/v1/chat/completions", "json", chat(top_logprobs=2), 400),
    ("presence-penalty-false", "POST", "/v1/chat/completions", "json", chat(presence_penalty=False), 400),
    ("tools", "POST", "/v1/chat/completions", "json", chat(tools=[{"type": "function"}]), 400),
    ("response-format-string", "POST", "/v1/chat/completions", "json", chat(response_format="json"), 400),
    ("response-format-type", "POST", "/v1/chat/completions", "json", chat(response_format={"type": "xml"}), 400),
    ("response-format-no-schema", "POST", "/v1/chat/completions", "json",
     chat(response_format={"type": "json_schema", "json_schema": {"name": "a"}}), 400),
    ("response-format-lookbehind", "POST", "/v1/chat/completions", "json", chat(response_format={
        "type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "string", "pattern": "(?<=a)b"}}}), 400),
    ("model-unserved", "POST", "/v1/chat/completions", "json", chat(model="no-such-model"), 404),
    ("model-with-space", "POST", "/v1/chat/completions", "json", chat(model="a b"), 400),
    # Files.
    ("file-wrong-purpose", "POST", "/v1/files", "multipart", ({"purpose": "fine-tune"}, b'{"a": 1}\n'), 400),
    ("file-no-purpose", "POST", "/v1/files", "multipart", ({}, b'{"a": 1}\n'), 400),
    ("file-missing", "POST", "/v1/files", "multipart", ({"purpose": "batch"}, None), 400),
    ("file-bad-jsonl", "POST", "/v1/files", "multipart", ({"purpose": "batch"}, b'{"a": 1}\n{"b":\n'), 400),
    ("file-line-array", "POST", "/v1/files", "multipart", ({"purpose": "batch"}, b'{"a": 1}\n[1, 2]\n'), 400),
    ("file-empty", "POST", "/v1/files", "multipart", ({"purpose": "batch"}, b"\n\n"), 400),
    ("file-not-utf8", "POST", "/v1/files", "multipart", ({"purpose": "batch"}, b'{"a": "\xff"}\n'), 400),
    ("file-oversize", "POST", "/v1/files", "multipart",
     ({"purpose": "batch"}, (json.dumps(LINE) + "\n").encode() * 20), 413),
    ("file-as-json", "POST", "/v1/files", "json", {"purpose": "batch", "file": "x"}, 415),
    ("file-unknown", "GET", "/v1/files/file-nope", "none", None, 404),
    ("file-content-unknown", "GET", "/v1/files/file-nope/content", "none", None, 404),
    ("file-delete-unknown", "DELETE", "/v1/files/file-nope", "json", {}, 404),
    # Batches.
    ("batch-unknown-file", "POST", "/v1/batches", "json",
     {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 404),
    ("batch-wrong-endpoint", "POST", "/v1/batches", "json",
     {"input_file_id": "{good}", "endpoint": "/v1/embeddings", "completion_window": "24h"}, 400),
    ("batch-wrong-window", "POST", "/v1/batches", "json",
     {"input_file_id": "{good}", "endpoint": "/v1/chat/completions", "completion_window": "48h"}, 400),
    ("batch-no-file", "POST", "/v1/batches", "json",
     {"endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400),
    ("batch-output-file-as-input", "POST", "/v1/batches", "json",
     {"input_file_id": "{output}", "endpoint": "/v1/chat/completions", "completion_window": "24h"}, 400),
    ("batch-bad-metadata", "POST", "/v1/batches", "json",
     {"input_file_id": "{good}", "endpoint": "/v1/chat/completions", "completion_window": "24h",
      "metadata": {"k": 1}}, 400),
    ("batch-unknown-field", "POST", "/v1/batches", "json",
     {"input_file_id": "{good}", "endpoint": "/v1/chat/completions", "completion_window": "24h", "x": 1}, 400),
    ("batch-not-json", "POST", "/v1/batches", "raw", (b"input_file_id=x", "application/x-www-form-urlencoded"),
     415),
    ("batch-get-unknown", "GET", "/v1/batches/batch_nope", "none", None, 404),
    ("batch-cancel-unknown", "POST", "/v1/batches/batch_nope/cancel", "json", {}, 404),
    ("batch-list-after-unknown", "GET", "/v1/batches?after=batch_nope", "none", None, 404),
    ("batch-list-limit", "GET", "/v1/batches?limit=0", "none", None, 400),
    ("unknown-route", "GET", "/v1/embeddings", "none", None, 404),
    ("method-not-allowed", "PUT", "/v1/batches", "json", {}, 405),
]


@pytest.fixture(scope="module")
def v1_app(pg_url, redis_namespace):
    model_info = {DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}}
    with live_heartbeat(redis_namespace, "inputs-worker", [DEFAULT_MODEL], model_info=model_info):
        yield make_test_app(pg_url, redis_namespace, SETTINGS={"limits.max_file_bytes": MAX_FILE,
                                                               "v1.wait_seconds": 0.5})


@pytest.fixture(scope="module")
def stored_files(v1_app, pg_url):
    """Ids of a valid batch input and of a batch_output file (which cannot be a batch's input)."""
    from shared.db import session_scope
    from shared.store import files

    web = v1_app.test_client()
    resp = web.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(json.dumps(LINE).encode()), "g.jsonl")},
                    content_type="multipart/form-data", headers={"Authorization": "Bearer any"})
    assert resp.status_code == 200, resp.get_json()
    with session_scope(pg_url) as s:
        output = files.store_file(s, "batch_output", "o.jsonl", b"{}\n", settings=v1_app.extensions["instaboost"].settings).id
    return {"good": resp.get_json()["id"], "output": output}


def snapshot(db_url: str, redis_client, namespace: str) -> tuple:
    from sqlalchemy import text

    from shared.db import get_db_engine

    with get_db_engine(db_url).connect() as conn:
        counts = tuple(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()
                       for t in ("jobs", "runs", "files", "batches"))
    messages = sum(redis_client.llen(k) for k in redis_client.scan_iter(match=f"{namespace}:*")
                   if redis_client.type(k) == "list")
    return counts + (messages,)


def send(web, method: str, path: str, how: str, payload, files: dict):
    if how == "json":
        payload = json.loads(json.dumps(payload).replace("{good}", files["good"]).replace("{output}", files["output"]))
        return web.open(path, method=method, json=payload)
    if how == "raw":
        data, ctype = payload
        return web.open(path, method=method, data=data, content_type=ctype)
    if how == "multipart":
        form, content = payload
        data = dict(form)
        if content is not None:
            data["file"] = (io.BytesIO(content), "in.jsonl")
        return web.open(path, method=method, data=data, content_type="multipart/form-data",
                        headers={"Authorization": "Bearer x"})
    return web.open(path, method=method)


def test_the_table_is_large_enough():
    assert len(CASES) >= 30 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name, method, path, how, payload, status", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_refused_in_openai_shape_and_stores_nothing(v1_app, stored_files, pg_url, redis_client,
                                                                 redis_namespace, name, method, path, how, payload,
                                                                 status):
    web = v1_app.test_client()
    before = snapshot(pg_url, redis_client, redis_namespace)
    resp = send(web, method, path, how, payload, stored_files)
    body = resp.get_json()
    assert resp.status_code == status, body
    assert resp.mimetype == "application/json"
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
    assert body["error"]["message"] and body["error"]["type"] in ("invalid_request_error",)
    assert snapshot(pg_url, redis_client, redis_namespace) == before


def test_tools_are_refused_naming_the_chat_template(v1_app):
    body = v1_app.test_client().post("/v1/chat/completions", json=chat(tools=[{"type": "function"}])).get_json()
    assert body["error"]["param"] == "tools" and "chat template declares no tool support" in body["error"]["message"]


def test_a_boost_error_names_the_field_as_openai_does(v1_app):
    body = v1_app.test_client().post("/v1/chat/completions", json=boost(multiplier=0)).get_json()["error"]
    assert body["param"] == "instaboost.multiplier" and body["code"] == "invalid_value"
    assert "1 = no boost" in body["message"]
    body = v1_app.test_client().post("/v1/chat/completions", json=user("x <boost>y")).get_json()["error"]
    assert body["param"] == "messages[0].content" and "unclosed <boost>" in body["message"]


def test_a_wait_past_the_limit_names_the_job_to_poll(v1_app, pg_url):
    """No worker runs here: the job is stored and queued, and the answer says which job to poll."""
    web = v1_app.test_client()
    resp = web.post("/v1/chat/completions", json=chat())
    assert resp.status_code == 504 and resp.headers["x-should-retry"] == "false"  # the SDK must not resubmit
    error = resp.get_json()["error"]
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    assert f"job {job_id}" in error["message"] and f"/v1/chat/completions/{job_id}" in error["message"]
    poll = web.get(f"/v1/chat/completions/{job_id}")
    assert poll.status_code == 409 and poll.get_json()["error"]["code"] == "not_finished"
    job = web.get(f"/api/jobs/{job_id}").get_json()
    assert job["status"] == "queued" and job["params"]["kind"] == "chat"
    web.post(f"/api/jobs/{job_id}/cancel", json={})


def test_a_database_outage_is_a_503_in_openai_shape(redis_namespace):
    app = make_test_app("postgresql+psycopg://postgres@127.0.0.1:1/none", redis_namespace)
    resp = app.test_client().get("/v1/batches")
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    error = resp.get_json()["error"]
    assert error["type"] == "server_error" and error["code"] == "service_unavailable" and "database" in error["message"]


def batch_line(cid: str, **body) -> dict:
    return {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": chat(**body)}


def create_batch(web, lines: list[dict], raw: bytes | None = None) -> dict:
    data = raw if raw is not None else "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in lines).encode()
    up = web.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(data), "b.jsonl")},
                  content_type="multipart/form-data", headers={"Authorization": "Bearer any"})
    assert up.status_code == 200, up.get_json()
    resp = web.post("/v1/batches", json={"input_file_id": up.get_json()["id"], "endpoint": "/v1/chat/completions",
                                         "completion_window": "24h"})
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def batch_jobs(db_url: str, batch_id: str) -> list:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(db_url) as s:
        return list(s.execute(select(Job.custom_id, Job.status).where(Job.batch_id == batch_id).order_by(Job.id)))


def test_line_separators_inside_json_strings_stay_in_their_line(v1_app, pg_url):
    """U+2028, U+2029 and U+0085 are legal inside JSON strings; str.splitlines() split lines on them."""
    web = v1_app.test_client()
    lines = [batch_line(f"sep-{k}", messages=[{"role": "user", "content": f"one{sep}two"}])
             for k, sep in enumerate(("\u2028", "\u2029", "\u0085"))]
    raw = "".join(json.dumps(x, ensure_ascii=False) + "\r\n" for x in lines).encode()  # \r\n ends lines too
    batch = create_batch(web, lines, raw)
    assert batch["status"] == "in_progress", batch
    assert batch["request_counts"] == {"total": 3, "completed": 0, "failed": 0}
    assert [cid for cid, _ in batch_jobs(pg_url, batch["id"])] == ["sep-0", "sep-1", "sep-2"]
    web.post(f"/v1/batches/{batch['id']}/cancel", json={})


def test_a_batch_line_that_cannot_fit_the_model_is_refused_at_creation(v1_app, pg_url):
    """The model-fit check of POST /v1/chat/completions (30 layers, 9 heads here) applies to every batch line: a
    line that cannot fit is answered in the error file (status 400) and never becomes a job."""
    web = v1_app.test_client()
    batch = create_batch(web, [batch_line("fits", instaboost={"multiplier": 5}),
                               batch_line("layer-40", instaboost={"multiplier": 5, "layers": [40]}),
                               batch_line("head-12", instaboost={"multiplier": 5, "heads": {"0": [12]}})])
    assert batch["status"] == "in_progress" and batch["request_counts"] == {"total": 3, "completed": 0, "failed": 2}
    assert [cid for cid, _ in batch_jobs(pg_url, batch["id"])] == ["fits"]
    cancelled = web.post(f"/v1/batches/{batch['id']}/cancel", json={}).get_json()
    assert cancelled["status"] == "cancelled"
    errors = {x["custom_id"]: x["response"] for x in map(json.loads, web.get(
        f"/v1/files/{cancelled['error_file_id']}/content").get_data().splitlines())}
    assert errors["layer-40"]["status_code"] == 400 and errors["head-12"]["status_code"] == 400
    assert errors["layer-40"]["body"]["error"]["param"] == "instaboost.layers"
    assert "has 30 layers" in errors["layer-40"]["body"]["error"]["message"]
    assert "9 heads per layer" in errors["head-12"]["body"]["error"]["message"]


def test_a_repeated_create_returns_the_batch_the_first_one_stored(v1_app, pg_url):
    """By Idempotency-Key, or for a keyless retry of the openai SDK (x-stainless-retry-count)."""
    web = v1_app.test_client()
    first = create_batch(web, [batch_line("once")])
    body = {"input_file_id": first["input_file_id"], "endpoint": "/v1/chat/completions", "completion_window": "24h"}
    retried = web.post("/v1/batches", json=body, headers={"x-stainless-retry-count": "1"}).get_json()
    keyed = [web.post("/v1/batches", json=body, headers={"Idempotency-Key": "create-7"}).get_json()["id"]
             for _ in range(2)]
    other = web.post("/v1/batches", json={**body, "metadata": {"x": "y"}}, headers={"Idempotency-Key": "create-7"})
    assert retried["id"] == first["id"] and keyed[0] == keyed[1] != first["id"]
    assert other.status_code == 400 and other.get_json()["error"]["param"] == "Idempotency-Key"
    assert len(batch_jobs(pg_url, first["id"])) == len(batch_jobs(pg_url, keyed[0])) == 1
    for batch_id in (first["id"], keyed[0]):
        web.post(f"/v1/batches/{batch_id}/cancel", json={})


def test_a_schema_the_grammar_library_cannot_enforce_names_the_construct(v1_app):
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "strict": True, "schema": {
        "type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}}}
    resp = v1_app.test_client().post("/v1/chat/completions", json=chat(response_format=fmt))
    body = resp.get_json()["error"]
    assert resp.status_code == 400 and body["param"] == "response_format" and body["code"] == "invalid_value"
    assert "uniqueItems" in body["message"] and "cannot be enforced" in body["message"]


def test_a_job_the_worker_could_not_compile_the_schema_for_answers_400(v1_app, pg_url):
    # A schema the web accepts but the model's tokenizer cannot serve fails its job in the worker with the code
    # response_format (tests/engine/test_grammar.py); /v1 answers it as the request's fault.
    from shared.chat import chat_params
    from shared.db import session_scope
    from shared.errors import JobErrorCode
    from shared.store.tables import Job, JobStatus

    params = chat_params(chat(response_format={"type": "json_object"}), v1_app.extensions["instaboost"].settings)
    error = "response_format: the schema cannot be enforced with this model's tokenizer: no token spells it"
    with session_scope(pg_url) as s:
        job = Job(status=JobStatus.failed, model=DEFAULT_MODEL, params=params, kind="chat", error=error,
                  error_code=JobErrorCode.response_format)
        s.add(job)
        s.flush()
        job_id = job.id
    resp = v1_app.test_client().get(f"/v1/chat/completions/{job_id}")
    body = resp.get_json()["error"]
    assert resp.status_code == 400 and body["param"] == "response_format" and "no token spells it" in body["message"]
