"""/metrics and the queue page with the real worker: its own numbers travel in its heartbeat to the web app."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.store.tables import Job, JobStatus, Run
from tests.fixtures.store import DEFAULT_MODEL, make_test_app
from tests.jobs.test_e2e import TINY, wait_for
from tests.web.test_monitoring import families


@pytest.fixture(scope="module")
def web(celery_worker, pg_url):
    return make_test_app(pg_url, celery_worker.namespace).test_client()


def worker_numbers(web, worker_id: str) -> dict:
    """Return this worker's samples from /metrics: {sample name (and status/le): value}."""
    out = {}
    for name, samples in families(web.get("/metrics")).items():
        for labels, value in samples.items():
            labels = dict(labels)
            if labels.pop("worker", None) == worker_id:
                labels.pop("hostname", None)
                out[(name, *labels.values())] = value
    return out


def delta(after: dict, before: dict, *key) -> float:
    return after.get(key, 0.0) - before.get(key, 0.0)


def test_metrics_carry_the_real_workers_numbers_after_a_job_and_a_completion(web, celery_worker, pg_url):
    wid = celery_worker.worker_id
    before = worker_numbers(web, wid)
    assert before[("instaboost_worker_up",)] == 1
    with session_scope(pg_url) as s:
        last_run = s.scalar(select(func.coalesce(func.max(Run.id), 0)))
    job_id = web.post("/api/jobs", json=TINY).get_json()["id"]  # two rows: original and all_x10
    resp = web.post("/v1/chat/completions", json={"model": DEFAULT_MODEL, "max_tokens": 4, "stream": True,
                                                  "messages": [{"role": "user", "content": "Say hi."}]})
    assert resp.status_code == 200 and "[DONE]" in resp.get_data(as_text=True)  # read to its end
    assert wait_for(web, job_id, {"succeeded", "failed", "cancelled"})["status"] == "succeeded"

    deadline = time.monotonic() + 60  # each job's end beats at once; a slow machine may lag a little
    while True:
        after = worker_numbers(web, wid)
        done = delta(after, before, "instaboost_worker_jobs_total", "succeeded") >= 2
        if done and delta(after, before, "instaboost_completion_ttft_seconds_count") >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    with session_scope(pg_url) as s:
        rows, tokens = s.execute(select(func.count(), func.coalesce(func.sum(Run.output_tokens), 0))
                                 .join(Job, Run.job_id == Job.id).where(Run.id > last_run, Job.worker == wid)).one()
        succeeded = s.scalar(select(func.count()).where(Job.status == JobStatus.succeeded, Job.model == DEFAULT_MODEL))
    assert rows == 3 and tokens > 0
    assert delta(after, before, "instaboost_worker_jobs_total", "succeeded") == 2
    assert delta(after, before, "instaboost_worker_rows_total") == rows
    assert delta(after, before, "instaboost_worker_tokens_total") == tokens
    steps = delta(after, before, "instaboost_worker_steps_total")
    assert 1 <= steps <= 3 and delta(after, before, "instaboost_worker_step_rows_count") == steps
    assert delta(after, before, "instaboost_worker_step_rows_sum") == rows
    assert delta(after, before, "instaboost_worker_busy_seconds_total") > 0
    assert after[("instaboost_worker_tokens_per_second",)] > 0
    assert delta(after, before, "instaboost_job_queue_wait_seconds_count") == 2
    assert delta(after, before, "instaboost_job_run_seconds_count") == 2
    assert delta(after, before, "instaboost_completion_ttft_seconds_count") == 1
    assert delta(after, before, "instaboost_job_run_seconds_bucket", "+Inf") == 2
    m = families(web.get("/metrics"))
    assert m["instaboost_jobs"][(("model", DEFAULT_MODEL), ("status", "succeeded"))] == succeeded
    assert m["instaboost_model_workers"][(("model", DEFAULT_MODEL),)] == 1
    assert m["instaboost_throughput_rows_per_second"][(("model", DEFAULT_MODEL),)] > 0


def test_queue_page_shows_the_live_worker_and_its_model(web, celery_worker):
    page = web.get("/queue").get_data(as_text=True)
    assert celery_worker.hostname in page and celery_worker.worker_id in page
    body = web.get("/api/queue").get_json()
    worker = next(w for w in body["workers"] if w["worker"] == celery_worker.worker_id)
    assert worker["models"] == [DEFAULT_MODEL] and worker["pid"] == celery_worker.pid
    assert worker["heartbeat_age_seconds"] is not None and worker["started_at"]
    row = next(m for m in body["models"] if m["model"] == DEFAULT_MODEL)
    assert row["workers"] == 1 and row["queue"] == "models.smollm2-135m-instruct"
