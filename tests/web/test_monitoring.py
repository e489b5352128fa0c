"""GET /metrics (Prometheus text format), the queue page and /api/queue, on real PostgreSQL and Redis.

Workers here are heartbeats written as test data (the real worker's numbers are in tests/jobs/test_monitoring.py).
"""

from __future__ import annotations

import json
import uuid
from datetime import timedelta

import pytest
from prometheus_client.parser import text_string_to_metric_families

from shared.celery_config import model_queue
from shared.metrics import WorkerMetrics
from shared.store.tables import Job, JobStatus, utcnow
from tests.fixtures.store import DEFAULT_MODEL, make_test_app, write_heartbeat

PARAMS = {"instruction": "Be brief.", "query": "Hi?", "max_new_tokens": 8, "multipliers": [10.0], "layer_modes": ["all"]}


def families(resp) -> dict:
    """Parse a /metrics answer: {sample name: {labels as a sorted tuple: value}}."""
    assert resp.status_code == 200 and resp.mimetype == "text/plain", resp.get_data(as_text=True)[:500]
    out: dict = {}
    for family in text_string_to_metric_families(resp.get_data(as_text=True)):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def add_jobs(session, status: JobStatus, n: int, model: str = DEFAULT_MODEL, error: str | None = None,
             finished_ago: float | None = None, created_ago: float = 0.0) -> list[int]:
    now = utcnow()
    jobs = [Job(status=status, model=model, params=PARAMS, error=error, created_at=now - timedelta(seconds=created_ago),
                finished_at=None if finished_ago is None else now - timedelta(seconds=finished_ago)) for _ in range(n)]
    session.add_all(jobs)
    session.commit()
    return [j.id for j in jobs]


def test_metrics_count_jobs_failures_queue_and_worker_numbers(client, db_session, redis_client, redis_namespace):
    add_jobs(db_session, JobStatus.queued, 3, created_ago=30)
    add_jobs(db_session, JobStatus.succeeded, 6, finished_ago=60)
    add_jobs(db_session, JobStatus.failed, 2, error="time limit: the job ran longer than 9 s", finished_ago=60)
    add_jobs(db_session, JobStatus.failed, 1, error="poison job: delivered 4 times", finished_ago=60)
    add_jobs(db_session, JobStatus.failed, 1, error="prompt too long for the model", finished_ago=60)
    redis_client.lpush(f"{redis_namespace}:{model_queue(DEFAULT_MODEL)}", "m1", "m2")
    redis_client.lpush(f"{redis_namespace}:{model_queue(DEFAULT_MODEL)}\x06\x166", "m3")
    numbers = WorkerMetrics()
    numbers.job_started(1, utcnow() - timedelta(seconds=3), utcnow(), completion=True)
    numbers.first_token(1)
    numbers.step(rows=5, tokens=40, seconds=2.0)
    numbers.job_ended(1, "succeeded")
    host = f"test-{uuid.uuid4().hex[:6]}"
    key = write_heartbeat(redis_client, redis_namespace, host, [DEFAULT_MODEL], worker=f"{host}:1:ab", jobs=[],
                          metrics=numbers.snapshot())
    try:
        m = families(client.get("/metrics"))
    finally:
        redis_client.delete(key, f"{redis_namespace}:{model_queue(DEFAULT_MODEL)}",
                            f"{redis_namespace}:{model_queue(DEFAULT_MODEL)}\x06\x166")
    model = (("model", DEFAULT_MODEL),)
    assert m["instaboost_source_up"] == {(("source", "broker"),): 1.0, (("source", "database"),): 1.0}
    assert m["instaboost_jobs"][(("model", DEFAULT_MODEL), ("status", "queued"))] == 3
    assert m["instaboost_jobs"][(("model", DEFAULT_MODEL), ("status", "failed"))] == 4
    assert m["instaboost_queue_jobs"][model] == 3
    assert m["instaboost_queue_messages"][model] == 3  # every priority step
    assert m["instaboost_model_workers"][model] == 1
    assert m["instaboost_queue_oldest_age_seconds"][model] >= 30
    assert m["instaboost_throughput_jobs_per_second"][model] == 10 / 600  # 10 finished in the 600 s window
    assert m["instaboost_queue_wait_estimate_seconds"][model] == 180.0  # 3 queued at 1 job/min
    failed = {dict(k)["kind"]: v for k, v in m["instaboost_failed_jobs"].items()}
    assert failed["time_limit"] == 2 and failed["poison"] == 1 and failed["job_error"] == 1
    assert failed["worker_error"] == 0
    w = (("worker", f"{host}:1:ab"),)
    assert m["instaboost_worker_up"][(("hostname", host), ("worker", f"{host}:1:ab"))] == 1
    assert m["instaboost_worker_jobs_total"][(("status", "succeeded"), ("worker", f"{host}:1:ab"))] == 1
    assert m["instaboost_worker_rows_total"][w] == 5 and m["instaboost_worker_tokens_total"][w] == 40
    assert m["instaboost_worker_tokens_per_second"][w] == 20.0
    assert m["instaboost_worker_step_rows_bucket"][(("le", "4.0"),) + w] == 0
    assert m["instaboost_worker_step_rows_bucket"][(("le", "8.0"),) + w] == 1
    assert m["instaboost_worker_step_rows_count"][w] == 1 and m["instaboost_worker_step_rows_sum"][w] == 5
    assert m["instaboost_job_queue_wait_seconds_bucket"][(("le", "+Inf"),) + w] == 1
    assert m["instaboost_job_queue_wait_seconds_sum"][w] == pytest.approx(3.0, abs=0.5)  # created 3 s before its claim
    assert m["instaboost_job_run_seconds_count"][w] == 1
    assert m["instaboost_completion_ttft_seconds_count"][w] == 1
    assert m["instaboost_completion_ttft_seconds_sum"][w] >= 2.5  # from submission, not from the claim


def test_metrics_need_the_token_when_one_is_set(clean_db, redis_namespace):
    token = "tok-" + uuid.uuid4().hex
    client = make_test_app(clean_db, redis_namespace, API_TOKEN=token).test_client()
    assert client.get("/metrics").status_code == 401
    assert client.get("/api/queue").status_code == 401
    assert client.get("/queue", headers={"Accept": "text/html"}).status_code == 302  # to the login form
    m = families(client.get("/metrics", headers={"Authorization": f"Bearer {token}"}))
    assert set(m["instaboost_source_up"].values()) == {1.0} and "instaboost_queue_messages" in m


def test_queue_page_lists_workers_what_they_run_and_the_wait(client, db_session, redis_client, redis_namespace):
    running = add_jobs(db_session, JobStatus.running, 1)[0]
    add_jobs(db_session, JobStatus.queued, 2)
    host = f"test-{uuid.uuid4().hex[:6]}"
    key = write_heartbeat(redis_client, redis_namespace, host, [DEFAULT_MODEL], worker=f"{host}:7:cd", jobs=[running])
    try:
        page = client.get("/queue").get_data(as_text=True)
        body = client.get("/api/queue").get_json()
    finally:
        redis_client.delete(key)
    assert 'aria-current="page">Queue</a>' in page and host in page and DEFAULT_MODEL in page
    assert f'href="/jobs/{running}">job {running}</a>' in page
    worker = next(w for w in body["workers"] if w["hostname"] == host)
    assert worker["models"] == [DEFAULT_MODEL] and [j["id"] for j in worker["running"]] == [running]
    row = next(m for m in body["models"] if m["model"] == DEFAULT_MODEL)
    assert (row["workers"], row["queued"], row["running"], row["idle_workers"]) == (1, 2, 1, 0)
    # Nothing finished recently: no basis for a number, and the page says why.
    assert row["wait"]["seconds"] is None and "no job of this model finished" in row["wait"]["basis"]
    assert json.dumps(body)  # plain JSON: timestamps as ISO text


def test_queue_page_says_when_no_worker_serves_a_waiting_model(client, db_session):
    add_jobs(db_session, JobStatus.queued, 1, model="nobody-serves-this")
    body = client.get("/api/queue").get_json()
    assert body["workers"] == []
    row = next(m for m in body["models"] if m["model"] == "nobody-serves-this")
    assert row["wait"]["seconds"] is None and "INSTABOOST_WORKER_MODELS=nobody-serves-this" in row["wait"]["basis"]
    assert 'id="no-workers"' in client.get("/queue").get_data(as_text=True)


def test_metrics_answer_what_remains_when_the_broker_is_down(clean_db, redis_namespace, db_session):
    add_jobs(db_session, JobStatus.failed, 1, error="internal error in the worker: KeyError: 'x'")
    client = make_test_app(clean_db, redis_namespace, REDIS_URL="redis://127.0.0.1:1/0").test_client()
    m = families(client.get("/metrics"))
    assert m["instaboost_source_up"] == {(("source", "broker"),): 0.0, (("source", "database"),): 1.0}
    assert m["instaboost_failed_jobs"][(("kind", "worker_error"),)] == 1  # the store's numbers still come
    assert "instaboost_queue_messages" not in m
    resp = client.get("/api/queue")
    assert resp.status_code == 503 and resp.mimetype == "application/problem+json" and resp.headers["Retry-After"]
