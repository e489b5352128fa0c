"""End to end: the web app enqueues, a real Celery worker runs the real model, the store keeps the runs.

Real PostgreSQL (and SQLite), real Redis, a real worker subprocess; generations stay tiny.
"""

from __future__ import annotations

import csv
import io
import json
import re
import time

import pytest

from tests.fixtures.store import make_test_app


INSTRUCTION = "Answer only in French."
QUERY = "What is the capital of Italy?"
TINY = {"instruction": INSTRUCTION, "query": QUERY, "max_new_tokens": 8, "multipliers": [10],
        "layer_modes": ["all"]}


def wait_for(client, job_id: int, statuses: set[str], timeout: float = 90) -> dict:
    """Poll the API until the job reaches one of statuses; return its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get(f"/api/jobs/{job_id}").get_json()
        if body["status"] in statuses:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} stuck in {body['status']}: {body}")
        time.sleep(0.2)


def csv_rows(client, job_id: int) -> list[dict]:
    resp = client.get(f"/runs.csv?job_id={job_id}")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    return list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))


def stored_runs(db_url: str, job_id: int):
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.store.tables import Run

    with session_scope(db_url) as s:
        return [(r.variant, r.multiplier, r.layers, r.output_text, r.output_tokens, r.attention_mass)
                for r in s.scalars(select(Run).where(Run.job_id == job_id).order_by(Run.id))]


@pytest.fixture(scope="module")
def pg_app(celery_worker, pg_url):
    return make_test_app(pg_url, celery_worker.namespace)


@pytest.fixture
def web(pg_app):
    return pg_app.test_client()


def check_finished_job(client, db_url: str, job_id: int, variants: list[str], attention: bool = True) -> None:
    body = wait_for(client, job_id, {"succeeded", "failed", "cancelled"})
    assert body["status"] == "succeeded", body["error"]
    assert body["progress"] == {"done": len(variants), "total": len(variants)}
    assert body["attempts"] == 1 and body["worker"].startswith("test-")
    runs = stored_runs(db_url, job_id)
    assert [r[0] for r in runs] == variants
    by_name = {r[0]: r for r in runs}
    assert by_name["original"][1] == 1.0 and by_name["original"][2] == "none"
    for variant, multiplier, layers, text, tokens, mass in runs:
        assert text.strip() and 1 <= tokens <= 8
        if not attention:
            assert mass is None  # the analysis costs two extra passes: only when asked
            continue
        assert set(mass) == {"unboosted", "boosted"} and len(mass["boosted"]) == 30  # SmolLM2: 30 layers
    if "all_x10" in by_name and attention:
        assert by_name["all_x10"][1:3] == (10.0, "all")
        # The boost moves attention onto the instruction: the measured mass must rise.
        mass = by_name["all_x10"][5]
        assert sum(mass["boosted"]) > sum(mass["unboosted"])

    rows = csv_rows(client, job_id)
    assert [r["variant"] for r in rows] == variants
    for row in rows:
        variant, multiplier, layers, text, tokens, _ = by_name[row["variant"]]
        assert row["job_status"] == "succeeded" and row["model"] == "smollm2-135m-instruct"
        assert float(row["multiplier"]) == multiplier and row["layers"] == layers
        assert row["output_text"] == text and int(row["output_tokens"]) == tokens
        assert row["instruction"] == INSTRUCTION and row["max_new_tokens"] == "8"


def test_form_submission_runs_to_success_and_exports(web, pg_url):
    page = web.get("/")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    token = re.search(r'name="csrf_token" value="([^"]+)"', html).group(1)
    assert re.search(r'name="attention" value="on"\s+checked', html)  # the form asks for the analysis
    resp = web.post("/", data={"csrf_token": token, "instruction": INSTRUCTION, "query": QUERY,
                               "model": "smollm2-135m-instruct", "multipliers": "10",
                               "layer_modes": ["all", "middle"], "max_new_tokens": "8", "attention": "on"})
    assert resp.status_code == 303, resp.get_data(as_text=True)[:2000]
    job_id = int(re.search(r"/jobs/(\d+)$", resp.headers["Location"]).group(1))
    check_finished_job(web, pg_url, job_id, ["original", "all_x10", "middle_x10"])
    page = web.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert "succeeded" in page


def test_api_submission_runs_to_success(web, pg_url):
    """The API leaves the attention analysis off unless asked (the form ticks it)."""
    resp = web.post("/api/jobs", json=TINY)
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    check_finished_job(web, pg_url, job_id, ["original", "all_x10"], attention=False)


def test_near_equal_multipliers_each_get_their_own_run(web, pg_url):
    """Issue 9: 2.0000001 and 2.0000002 both formatted as all_x2, and one run was silently dropped."""
    resp = web.post("/api/jobs", json={**TINY, "multipliers": [2.0000001, 2.0000002], "max_new_tokens": 2})
    assert resp.status_code == 202, resp.get_json()
    job_id = resp.get_json()["id"]
    body = wait_for(web, job_id, {"succeeded", "failed", "cancelled"})
    assert body["status"] == "succeeded" and body["progress"] == {"done": 3, "total": 3}, body
    runs = stored_runs(pg_url, job_id)
    assert [(r[0], r[1]) for r in runs] == [("original", 1.0), ("all_x2.0000001", 2.0000001),
                                            ("all_x2.0000002", 2.0000002)]


def test_sqlite_store_end_to_end(sqlite_worker, sqlite_url):
    client = make_test_app(sqlite_url, sqlite_worker.namespace).test_client()
    resp = client.post("/api/jobs", json={**TINY, "attention": True})
    assert resp.status_code == 202, resp.get_json()
    check_finished_job(client, sqlite_url, resp.get_json()["id"], ["original", "all_x10"])


def test_unserved_model_is_refused(web, celery_worker):
    resp = web.post("/api/jobs", json={**TINY, "model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    assert resp.status_code == 422
    assert resp.mimetype == "application/problem+json"
    body = resp.get_json()
    assert [e["field"] for e in body["errors"]] == ["model"]
    assert "smollm2-135m-instruct" in body["detail"]  # says which model is served


def test_live_worker_advertises_model_facts_for_submit_checks(web, celery_worker):
    served = web.get("/api/models").get_json()
    assert any(m["name"] == "smollm2-135m-instruct" for m in served["models"])
    # The real worker's heartbeat carries the model's shape, so a middle block past layer 29 is refused
    # before anything is queued (the worker checks the exact token count against the context itself).
    resp = web.post("/api/jobs", json={**TINY, "layer_modes": ["middle"], "start_layer": 30})
    assert resp.status_code == 422 and [e["field"] for e in resp.get_json()["errors"]] == ["start_layer"]
    assert "30 layers" in resp.get_json()["errors"][0]["message"]


def test_cancel_queued_and_running_jobs(web, pg_url):
    # A long job occupies the (solo) worker, so the second one waits in the queue. It asks for the
    # reference engine, which a batch never takes in (its rows run one at a time): only its own message
    # could start it, and that waits behind the long job.
    long = {**TINY, "max_new_tokens": 96, "multipliers": [2, 5, 10], "layer_modes": ["all", "middle"]}
    running = web.post("/api/jobs", json=long).get_json()["id"]
    queued = web.post("/api/jobs", json={**TINY, "engine": "transformerlens"}).get_json()["id"]

    resp = web.post(f"/api/jobs/{queued}/cancel", json={})
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"

    wait_for(web, running, {"running"})
    # Its seven variants decode as one batch (worker.max_batch_rows): the cancel stops them mid-batch.
    assert web.post(f"/api/jobs/{running}/cancel", json={}).get_json()["status"] in ("cancelling", "cancelled")
    body = wait_for(web, running, {"cancelled", "succeeded", "failed"})
    assert body["status"] == "cancelled"
    assert len(stored_runs(pg_url, running)) < 7 == body["progress"]["total"]

    # The worker reaches the cancelled job's message only now, and must skip it.
    followup = web.post("/api/jobs", json=TINY).get_json()["id"]
    wait_for(web, followup, {"succeeded"})
    q = web.get(f"/api/jobs/{queued}").get_json()
    assert q["status"] == "cancelled" and q["started_at"] is None and q["attempts"] == 0
    assert stored_runs(pg_url, queued) == []


def test_job_waits_visibly_when_no_worker_holds_its_model(web, celery_worker, redis_client):
    # Another (pretend) worker advertises a model ours does not hold: the job is accepted, routed to
    # that model's queue, and our worker must not take it.
    from shared.celery_config import PRIORITY
    from shared.worker_registry import queue_key

    ns = celery_worker.namespace
    key = f"{ns}:worker:pretend@elsewhere"
    redis_client.set(key, json.dumps({"hostname": "pretend@elsewhere", "models": ["some-other-model"], "pid": 1,
                                      "started_at": "2026-01-01T00:00:00+00:00",
                                      "seen_at": "2026-01-01T00:00:00+00:00"}), ex=60)
    try:
        resp = web.post("/api/jobs", json={**TINY, "model": "some-other-model"})
        assert resp.status_code == 202
        job_id = resp.get_json()["id"]
        # An event, not a pause: once a job for our model, sent after it, has finished, our worker has
        # consumed everything it would ever take, and the other model's job must still wait.
        marker = web.post("/api/jobs", json={**TINY, "max_new_tokens": 1}).get_json()["id"]
        assert wait_for(web, marker, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"
        body = web.get(f"/api/jobs/{job_id}").get_json()
        assert body["status"] == "queued" and body["enqueued_at"] is not None
        assert redis_client.llen(queue_key("models.some-other-model", PRIORITY["default"], ns)) == 1
    finally:
        redis_client.delete(key, queue_key("models.some-other-model", PRIORITY["default"], ns))
