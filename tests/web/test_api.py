"""The JSON API against real PostgreSQL and Redis: submit, read, list, cancel, export, errors, OpenAPI."""

from __future__ import annotations

import re

import csv
import io
import json

import pytest

from shared.celery_config import model_queue
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from tests.fixtures.store import DEFAULT_MODEL, make_test_app
from tests.helpers import assert_problem

BODY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 8}


def submit(client, **fields):
    return client.post("/api/jobs", json={**BODY, **fields})


def test_submit_enqueues_and_answers_202(client, heartbeat, redis_client, redis_namespace):
    heartbeat(DEFAULT_MODEL)
    resp = submit(client, multipliers=[2, 10], layer_modes=["all"])
    assert resp.status_code == 202
    job = resp.get_json()
    assert resp.headers["Location"] == f"/api/jobs/{job['id']}"
    assert job["status"] == "queued" and job["enqueued_at"] and job["progress"] == {"done": 0, "total": 3}
    assert job["params"]["multipliers"] == [2.0, 10.0] and job["params"]["instruction"] == BODY["instruction"]
    # The real Celery producer put exactly one message for this job on the model's queue.
    from shared.celery_config import PRIORITY
    from shared.worker_registry import queue_key

    raw = redis_client.lrange(queue_key(model_queue(DEFAULT_MODEL), PRIORITY["default"], redis_namespace), 0, -1)
    assert len(raw) == 1
    message = json.loads(raw[0])
    assert message["headers"]["task"] == "instaboost.run_job"
    assert message["headers"]["argsrepr"] == f"[{job['id']}]"


def test_submit_refuses_a_model_no_worker_serves(client, heartbeat):
    heartbeat("some-other-model")
    body = assert_problem(submit(client), 422, "model")
    assert "some-other-model" in body["detail"]
    assert client.get("/api/jobs").get_json()["items"] == []  # no half-written job


def test_no_heartbeat_at_all_is_a_transient_503_not_a_bad_request(client):
    """Issue 25: right after Redis came back empty, every submit got 422 until the worker's next heartbeat."""
    resp = submit(client)
    body = assert_problem(resp, 503, "model")
    assert int(resp.headers["Retry-After"]) == 10  # worker.heartbeat_interval: a live worker beats by then
    assert f"INSTABOOST_WORKER_MODELS={DEFAULT_MODEL}" in body["detail"]
    chat = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    v1 = client.post("/v1/chat/completions", json=chat)
    # OpenAI's shape: the openai SDK retries a 503, honouring Retry-After.
    assert v1.status_code == 503 and v1.get_json()["error"]["type"] == "server_error", v1.get_json()
    assert int(v1.headers["Retry-After"]) == 10
    assert client.get("/api/jobs").get_json()["items"] == []


def test_a_model_run_minutes_ago_but_unserved_now_is_503(client, heartbeat, db_session):
    """Another worker beat first after a Redis restart: the model whose worker has not beaten yet is not refused."""
    from shared.store.tables import utcnow

    heartbeat("some-other-model")
    db_session.add(Job(status=JobStatus.succeeded, model=DEFAULT_MODEL, params={}, progress_total=1,
                       started_at=utcnow()))
    db_session.commit()
    resp = submit(client)
    assert_problem(resp, 503, "model")
    assert int(resp.headers["Retry-After"]) > 0
    assert_problem(submit(client, model="never-served-model"), 422, "model")  # a model nobody ran: the input


def test_submit_validation_errors_name_every_field(client, heartbeat):
    heartbeat()
    body = assert_problem(submit(client, query="", multipliers=[0], top_p=2, nonsense=1), 422)
    assert {e["field"] for e in body["errors"]} == {"query", "multipliers[0]", "top_p", "nonsense"}


def test_submit_wrong_content_type_is_415(client):
    assert_problem(client.post("/api/jobs", data=json.dumps(BODY), content_type="text/plain"), 415)
    assert_problem(client.post("/api/jobs", data={"instruction": "x"}), 415)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"\xff\xfe"])
def test_submit_malformed_json_is_400(client, raw):
    assert_problem(client.post("/api/jobs", data=raw, content_type="application/json"), 400, "body")


def test_submit_non_object_json_is_422(client):
    assert_problem(client.post("/api/jobs", json=[1, 2]), 422, "body")


def test_too_large_body_is_413(clean_db, redis_namespace):
    app = make_test_app(clean_db, redis_namespace, SETTINGS={"limits.max_request_bytes": 1000})
    resp = app.test_client().post("/api/jobs", json={**BODY, "query": "x" * 5000})
    assert_problem(resp, 413)


def test_full_queue_is_429(clean_db, redis_namespace, heartbeat):
    heartbeat()
    client = make_test_app(clean_db, redis_namespace, SETTINGS={"limits.max_queued_jobs": 1}).test_client()
    assert submit(client).status_code == 202
    resp = submit(client)
    assert_problem(resp, 429)
    assert int(resp.headers["Retry-After"]) > 0


def test_unreachable_broker_is_503(clean_db, redis_namespace):
    client = make_test_app(clean_db, redis_namespace, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    resp = submit(client)
    assert_problem(resp, 503)
    assert resp.headers["Retry-After"]
    assert client.get("/api/jobs").get_json()["items"] == []


def test_near_equal_multipliers_are_accepted_as_distinct_variants(client, heartbeat, db_session):
    from shared.job_request import JobRequest

    heartbeat()
    resp = submit(client, multipliers=[2.0000001, 2.0000002], layer_modes=["all"])
    assert resp.status_code == 202 and resp.get_json()["progress"]["total"] == 3
    job = db_session.get(Job, resp.get_json()["id"])
    names = [v.name for v in JobRequest.from_params(job.params).variants()]
    assert names == ["original", "all_x2.0000001", "all_x2.0000002"]


def test_get_job_and_404(client, heartbeat, db_session):
    heartbeat()
    job_id = submit(client).get_json()["id"]
    lifecycle.record_run(db_session, job_id, "original", multiplier=1, layers="none", output_text="Roma",
                    output_tokens=2)
    got = client.get(f"/api/jobs/{job_id}").get_json()
    assert got["id"] == job_id and [r["output_text"] for r in got["runs"]] == ["Roma"]
    assert got["progress"]["done"] == 1
    for missing in ("999999", "abc", "0", "99999999999999"):
        assert_problem(client.get(f"/api/jobs/{missing}"), 404)


def test_list_filters_and_cursor_pagination(client, db_session):
    for i in range(5):
        db_session.add(Job(status=JobStatus.queued if i % 2 else JobStatus.succeeded, model=f"m{i % 2}",
                           params={"instruction": "i", "query": "q"}, progress_total=1))
    db_session.commit()
    seen, url = [], "/api/jobs?limit=2"
    while url:
        page = client.get(url).get_json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        url = page["next"]
    assert seen == sorted(seen, reverse=True) and len(set(seen)) == 5
    queued = client.get("/api/jobs?status=queued").get_json()["items"]
    assert len(queued) == 2 and {j["model"] for j in queued} == {"m1"}
    assert len(client.get("/api/jobs?model=m0").get_json()["items"]) == 3


@pytest.mark.parametrize("query, status, field", [
    ("cursor=garbage!", 400, "cursor"),
    ("cursor=r1a", 400, "cursor"),  # a runs cursor used on jobs
    ("cursor=j", 400, "cursor"),
    ("status=done", 422, "status"),
    ("limit=0", 422, "limit"),
    ("limit=ten", 422, "limit"),
    ("limit=100000", 422, "limit"),
    ("model=a%00b", 422, "model"),
])
def test_bad_list_parameters(client, query, status, field):
    assert_problem(client.get(f"/api/jobs?{query}"), status, field)


def test_cancel_queued_job(client, heartbeat):
    heartbeat()
    job_id = submit(client).get_json()["id"]
    resp = client.post(f"/api/jobs/{job_id}/cancel", json={})
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert resp.get_json()["finished_at"]
    assert client.post(f"/api/jobs/{job_id}/cancel", json={}).get_json()["status"] == "cancelled"
    assert client.get(f"/api/jobs/{job_id}").get_json()["status"] == "cancelled"


def test_cancel_running_and_finished_jobs(client, heartbeat, db_session):
    heartbeat()
    running, done = submit(client).get_json()["id"], submit(client).get_json()["id"]
    lifecycle.mark_running(db_session, running, "w")
    lifecycle.mark_running(db_session, done, "w")
    lifecycle.mark_succeeded(db_session, done)
    assert client.post(f"/api/jobs/{running}/cancel", json={}).get_json()["status"] == "cancelling"
    assert_problem(client.post(f"/api/jobs/{done}/cancel", json={}), 409, "status")
    assert_problem(client.post("/api/jobs/4242/cancel", json={}), 404)


def _job_with_runs(db_session, outputs: dict[str, str], model="m", instruction="Be brief.") -> int:
    job = Job(status=JobStatus.running, model=model, progress_total=len(outputs),
              params={"instruction": instruction, "query": "=cmd|' /C calc'!A0", "engine": "fast",
                      "placement": "system", "max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 42,
                      "start_layer": 8, "num_middle_layers": 5, "head_boost_percentage": 100.0})
    db_session.add(job)
    db_session.commit()
    for variant, text in outputs.items():
        lifecycle.record_run(db_session, job.id, variant, multiplier=1 if variant == "original" else 10,
                        layers="none" if variant == "original" else variant.split("_")[0], output_text=text)
    return job.id


def test_runs_listing_filters(client, db_session):
    a = _job_with_runs(db_session, {"original": "a", "all_x10": "b", "middle_x10": "c"}, model="m1")
    _job_with_runs(db_session, {"original": "d"}, model="m2")
    assert len(client.get("/api/runs").get_json()["items"]) == 4
    assert [r["variant"] for r in client.get(f"/api/runs?job_id={a}").get_json()["items"]] == \
        ["middle_x10", "all_x10", "original"]
    assert [r["output_text"] for r in client.get("/api/runs?model=m2").get_json()["items"]] == ["d"]
    assert len(client.get("/api/runs?variant=all_x10").get_json()["items"]) == 1
    assert client.get("/api/runs?status=succeeded").get_json()["items"] == []
    page = client.get("/api/runs?limit=3").get_json()
    assert len(page["items"]) == 3 and len(client.get(page["next"]).get_json()["items"]) == 1
    assert_problem(client.get("/api/runs?job_id=x"), 422, "job_id")


def test_csv_export_content_and_injection(client, db_session):
    a = _job_with_runs(db_session, {"original": "=1+2", "all_x10": "-3 degrees\nnext line",
                                    "middle_x10": "@SUM(A1)"}, instruction="+Answer\tplease")
    _job_with_runs(db_session, {"original": "other job"})
    resp = client.get(f"/api/runs.csv?job_id={a}")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    assert "attachment" in resp.headers["Content-Disposition"]
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert [r["variant"] for r in rows] == ["original", "all_x10", "middle_x10"]
    assert [r["output_text"] for r in rows] == ["'=1+2", "'-3 degrees\nnext line", "'@SUM(A1)"]
    assert rows[0]["instruction"] == "'+Answer\tplease" and rows[0]["query"].startswith("'=cmd")
    assert rows[0]["model"] == "m" and rows[0]["max_new_tokens"] == "8" and rows[0]["seed"] == "42"
    assert rows[1]["multiplier"] == "10.0" and rows[1]["layers"] == "all"
    everything = list(csv.reader(io.StringIO(client.get("/api/runs.csv").get_data(as_text=True))))
    assert len(everything) == 1 + 4
    assert_problem(client.get("/api/runs.csv?status=bogus"), 422, "status")


def test_csv_export_summarizes_attention_on_the_instruction(client, db_session):
    job_id = _job_with_runs(db_session, {"original": "plain"})
    lifecycle.record_run(db_session, job_id, "all_x10", multiplier=10, layers="all", output_text="boosted",
                    attention_mass={"unboosted": [0.1, 0.3], "boosted": [0.5, 0.7]})
    rows = list(csv.DictReader(io.StringIO(client.get(f"/api/runs.csv?job_id={job_id}").get_data(as_text=True))))
    assert [(r["attention_unboosted"], r["attention_boosted"]) for r in rows] == [("", ""), ("0.2", "0.6")]


def test_csv_export_streams_many_rows(client, db_session):
    job_id = _job_with_runs(db_session, {})
    from shared.store.tables import Run, utcnow
    db_session.add_all(Run(job_id=job_id, variant=f"v{i}", multiplier=2, layers="all", output_text="x" * 200,
                           created_at=utcnow()) for i in range(3000))
    db_session.commit()
    resp = client.get("/api/runs.csv")
    assert resp.is_streamed
    chunks = list(resp.response)
    assert len(chunks) > 3  # flushed in pieces, not built in memory
    assert sum(c.count(b"\n") for c in chunks) == 3001


def test_the_wide_csv_is_one_snapshot_so_a_variant_stored_meanwhile_is_never_dropped(client, db_session):
    done = _job_with_runs(db_session, {"original": "a" * 70_000, "all_x10": "b"})  # more than one 64 KB chunk
    late = _job_with_runs(db_session, {"original": "c"})
    resp = client.get("/api/jobs.csv")
    # While the export streams, the second job stores two more variants (a main column and an extra one).
    lifecycle.record_run(db_session, late, "all_x10", multiplier=10, layers="all", output_text="d")
    lifecycle.record_run(db_session, late, "all_x20", multiplier=20, layers="all", output_text="late text")
    db_session.commit()
    rows = list(csv.DictReader(io.StringIO(b"".join(resp.response).decode())))
    assert [r["job_id"] for r in rows] == [str(done), str(late)]
    # The export shows the database as of one moment: both new variants, or neither (here: as of the request).
    assert (rows[1]["all_layers_output"], rows[1].get("all_x20_output")) == ("", None), rows[1]
    after = list(csv.DictReader(io.StringIO(client.get("/api/jobs.csv").get_data(as_text=True))))
    assert [(r["all_layers_output"], r["all_x20_output"]) for r in after] == [("b", ""), ("d", "late text")]


def test_the_wide_csv_streams_every_variant_without_loading_every_run_first(client, db_session):
    import tracemalloc

    from sqlalchemy import insert

    from shared.store.export import WIDE_BATCH
    from shared.store.tables import Run, utcnow

    n, size = 8 * WIDE_BATCH, 8000
    params = {"instruction": "Be brief.", "query": "Hi?", "multipliers": [10.0]}
    ids = db_session.execute(insert(Job).returning(Job.id), [
        {"status": JobStatus.succeeded, "model": "m", "params": params, "progress_done": 3, "progress_total": 3,
         "created_at": utcnow()} for _ in range(n)]).scalars().all()
    # The last job alone has a third variant: its column must still be in the header.
    db_session.execute(insert(Run), [
        {"job_id": job_id, "variant": variant, "multiplier": m, "layers": layers, "output_text": f"{variant} " * (size // 8),
         "created_at": utcnow()}
        for job_id in ids for variant, m, layers in (("original", 1, "none"), ("all_x10", 10, "all"),
                                                     ("all_x20", 20, "all"))
        if variant != "all_x20" or job_id == ids[-1]])
    db_session.commit()
    tracemalloc.start()
    try:
        resp = client.get("/api/jobs.csv")
        chunks = iter(resp.response)
        first = next(chunks)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    total = 2 * n * size
    assert peak < total / 3, f"{peak} bytes allocated before the first chunk, for {total} bytes of outputs"
    rows = list(csv.DictReader(io.StringIO((first + b"".join(chunks)).decode())))
    assert [r["job_id"] for r in rows] == [str(i) for i in ids]
    assert rows[-1]["all_x20_output"].startswith("all_x20 ") and rows[0]["all_x20_output"] == ""


def test_models_lists_heartbeats(client, heartbeat):
    heartbeat("a-model", DEFAULT_MODEL, hostname="w1")
    heartbeat(DEFAULT_MODEL, hostname="w2")
    body = client.get("/api/models").get_json()
    assert body["default"] == DEFAULT_MODEL
    # Live facts are here, not in the OpenAPI document: whether a sweep recommends a boost (and, when the workers
    # advertise them, n_layers, n_heads and max_context).
    assert body["models"] == [{"name": "a-model", "workers": 1, "starting": 0, "status": "ready", "recommended": False},
                              {"name": DEFAULT_MODEL, "workers": 2, "starting": 0, "status": "ready",
                               "recommended": False}]
    assert sorted(w["hostname"] for w in body["workers"]) == ["w1", "w2"]


def test_models_carry_the_live_facts_the_document_leaves_out(client, redis_client, redis_namespace):
    """What the workers advertise (layers, context) is in /api/models; the document bounds only the deployment's."""
    from tests.fixtures.store import write_heartbeat

    key = write_heartbeat(redis_client, redis_namespace, "w-facts", [DEFAULT_MODEL], 60,
                          model_info={DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}})
    try:
        served = client.get("/api/models").get_json()["models"]
        assert served == [{"name": DEFAULT_MODEL, "workers": 1, "starting": 0, "status": "ready", "n_layers": 30,
                           "n_heads": 9, "max_context": 8192, "recommended": False}]
        props = client.get("/api/openapi.json").get_json()["components"]["schemas"]["JobRequest"]["properties"]
        assert props["start_layer"]["maximum"] > 29 and "enum" not in props["model"]
    finally:
        redis_client.delete(key)


def test_every_resource_schema_in_the_document_is_its_models(client):
    """The response schemas are the pydantic models the serializers build: none is shadowed by a namesake."""
    from pydantic import BaseModel

    from shared.resources import base, jobs, openai

    schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    models = {name: m for mod in (base, jobs, openai) for name, m in vars(mod).items()
              if isinstance(m, type) and issubclass(m, BaseModel) and m.__module__ == mod.__name__}
    shown = [name for name in models if name in schemas]
    assert {"Job", "Run", "Sweep", "Batch", "File", "Problem", "OpenAIError"} <= set(shown)
    for name in shown:
        mine = models[name].model_json_schema(mode="serialization")
        assert set(schemas[name].get("properties", {})) == set(mine.get("properties", {})), name


def test_healthz(client, clean_db, redis_namespace):
    resp = client.get("/healthz")
    assert resp.status_code == 200 and resp.get_json() == {"status": "ok", "database": "ok", "broker": "ok"}
    down = make_test_app(clean_db, redis_namespace, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    resp = down.get("/healthz")
    assert resp.status_code == 503 and resp.get_json()["broker"].startswith("unreachable")
    assert resp.get_json()["database"] == "ok"


def test_unknown_route_and_method_are_problems(client):
    assert_problem(client.get("/api/nothing-here"), 404)
    resp = client.delete("/api/jobs")
    assert_problem(resp, 405)
    assert "POST" in resp.headers["Allow"]


def test_api_token(clean_db, redis_namespace, heartbeat):
    heartbeat()
    client = make_test_app(clean_db, redis_namespace, API_TOKEN="s3cret-token").test_client()
    resp = client.get("/api/jobs")
    assert_problem(resp, 401, "Authorization")
    assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    assert_problem(client.get("/api/jobs", headers={"Authorization": "Bearer wrong"}), 401)
    assert_problem(client.post("/api/jobs", json=BODY, headers={"Authorization": "Basic s3cret-token"}), 401)
    ok = {"Authorization": "Bearer s3cret-token"}
    assert client.get("/api/jobs", headers=ok).status_code == 200
    assert client.post("/api/jobs", json=BODY, headers=ok).status_code == 202
    assert client.get("/healthz").status_code == 200  # stays open
    assert client.get("/jobs").status_code == 401  # pages too (issue 9)
    assert client.get("/jobs", headers=ok).status_code == 200
    assert client.get("/api/openapi.json").status_code == 200


def test_openapi_document_is_valid_and_matches_responses(client, heartbeat):
    from jsonschema import Draft202012Validator
    from openapi_spec_validator import validate

    doc = client.get("/api/openapi.json").get_json()
    validate(doc)
    assert doc["openapi"].startswith("3.1") and doc["security"] == [{}]  # no token configured: open
    # What the workers serve now is live (GET /api/models), not the schema: any model name, or null for the default.
    assert doc["components"]["schemas"]["JobRequest"]["properties"]["model"]["type"] == ["string", "null"]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    routes = {(m, re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule)) for r in client.application.url_map.iter_rules()
              if r.rule.startswith(("/api", "/v1/")) or r.rule in ("/healthz", "/readyz")
              for m in r.methods - {"HEAD", "OPTIONS"}}
    assert routes == documented

    def check(resp, path, method):
        op = doc["paths"][path][method]
        spec = op["responses"][str(resp.status_code)]
        media = next(iter(spec["content"]))
        assert resp.mimetype == media
        schema = {**spec["content"][media]["schema"], "components": doc["components"]}
        errors = list(Draft202012Validator(schema).iter_errors(resp.get_json(force=True)))
        assert not errors, errors

    heartbeat()
    resp = submit(client)
    check(resp, "/api/jobs", "post")
    job_id = resp.get_json()["id"]
    check(client.get(f"/api/jobs/{job_id}"), "/api/jobs/{job_id}", "get")
    check(client.get("/api/jobs?limit=1"), "/api/jobs", "get")
    check(client.get("/api/runs"), "/api/runs", "get")
    check(client.get("/api/models"), "/api/models", "get")
    check(client.get("/healthz"), "/healthz", "get")
    check(client.get("/readyz"), "/readyz", "get")
    check(client.post(f"/api/jobs/{job_id}/cancel", data={"x": "1"}), "/api/jobs/{job_id}/cancel", "post")
    check(client.post("/api/jobs", json={}, headers={"Sec-Fetch-Site": "cross-site"}), "/api/jobs", "post")
    check(client.post(f"/api/jobs/{job_id}/cancel", json={}), "/api/jobs/{job_id}/cancel", "post")
    check(client.post(f"/api/jobs/{job_id}/cancel", json={}), "/api/jobs/{job_id}/cancel", "post")
    check(submit(client, query=""), "/api/jobs", "post")
    check(client.get("/api/jobs/999"), "/api/jobs/{job_id}", "get")
    check(client.get("/api/jobs?cursor=zz"), "/api/jobs", "get")


def test_scope_and_target_mass_are_stored_and_shown_on_runs(client, heartbeat, db_session):
    """Issue 21: the two knobs are job fields; the runs show them (the original boosts nothing)."""
    heartbeat(DEFAULT_MODEL)
    resp = submit(client, target_mass=0.4, scope="generated", layer_modes=["all"])
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["params"]["target_mass"] == 0.4 and job["params"]["scope"] == "generated"
    assert job["params"]["multipliers"] == [1.0]  # a target alone: no fixed M on top
    lifecycle.record_run(db_session, job["id"], "original", multiplier=1.0, layers="none", output_text="a")
    lifecycle.record_run(db_session, job["id"], "all_x1", multiplier=1.0, layers="all", output_text="b")
    runs = {r["variant"]: r for r in client.get(f"/api/jobs/{job['id']}").get_json()["runs"]}
    assert (runs["all_x1"]["scope"], runs["all_x1"]["target_mass"]) == ("generated", 0.4)
    assert runs["original"]["target_mass"] is None


def test_bad_scope_and_target_mass_are_422_naming_the_field(client, heartbeat):
    heartbeat()
    assert_problem(submit(client, target_mass=1.0), 422, "target_mass")
    assert_problem(submit(client, scope="decode"), 422, "scope")
    body = assert_problem(submit(client, target_mass=0.5, multipliers=[0.5]), 422, "target_mass")
    assert "below 1" in body["errors"][0]["message"]


def test_boilerplate_multiplier_is_stored_and_shown_on_runs(client, heartbeat, db_session):
    """Issue 21: the boilerplate de-boost is a job field; the runs show it (the original de-boosts nothing)."""
    heartbeat(DEFAULT_MODEL)
    resp = submit(client, multipliers=[5], boilerplate_multiplier=0.5, layer_modes=["all"])
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["params"]["boilerplate_multiplier"] == 0.5
    lifecycle.record_run(db_session, job["id"], "original", multiplier=1.0, layers="none", output_text="a")
    lifecycle.record_run(db_session, job["id"], "all_x5", multiplier=5.0, layers="all", output_text="b")
    runs = {r["variant"]: r for r in client.get(f"/api/jobs/{job['id']}").get_json()["runs"]}
    assert (runs["all_x5"]["boilerplate_multiplier"], runs["original"]["boilerplate_multiplier"]) == (0.5, 1.0)


@pytest.mark.parametrize("bad", [0, 1.5, "x", -0.5])
def test_bad_boilerplate_multiplier_is_422_saying_how_to_fix_it(client, heartbeat, bad):
    heartbeat()
    body = assert_problem(submit(client, boilerplate_multiplier=bad), 422, "boilerplate_multiplier")
    message = body["errors"][0]["message"]
    assert "boilerplate_multiplier" in message and ("(0, 1]" in message or "number" in message), message
