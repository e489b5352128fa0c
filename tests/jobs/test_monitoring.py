"""/metrics and the queue page with the real worker: its own numbers travel in its heartbeat to the web app."""

from __future__ import annotations

import time

import pytest
from sqlalchemy import func, select

from shared.db import session_scope
from shared.store.tables import Job, JobStatus, Run
from tests.fixtures.store import DEFAULT_MODEL, make_test_app
from tests.fixtures.worker import WorkerProcess, purge_namespace
from tests.jobs.test_e2e import TINY, wait_for
from tests.web.test_monitoring import families


@pytest.fixture(scope="module", params=["static", "continuous"])
def worker(request, celery_worker, pg_url, redis_namespace, tmp_path_factory):
    """The session's worker (the continuous runner, the default), or one with static steps (worker.continuous: 0)."""
    if request.param == "continuous":
        yield celery_worker
        return
    namespace = f"{redis_namespace}_static"
    static = WorkerProcess(pg_url, namespace, tmp_path_factory.mktemp("worker") / "static.log",
                           env={"INSTABOOST_WORKER_CONTINUOUS": "0"}).start()
    yield static
    static.stop()
    purge_namespace(namespace)


@pytest.fixture(scope="module")
def web(worker, pg_url):
    return make_test_app(pg_url, worker.namespace).test_client()


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


def test_metrics_carry_the_real_workers_numbers_after_a_job_and_a_completion(web, worker, pg_url):
    wid = worker.worker_id
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
        rows, tokens, longest = s.execute(
            select(func.count(), func.coalesce(func.sum(Run.output_tokens), 0), func.max(Run.output_tokens))
            .join(Job, Run.job_id == Job.id).where(Run.id > last_run, Job.worker == wid)).one()
        succeeded = s.scalar(select(func.count()).where(Job.status == JobStatus.succeeded, Job.model == DEFAULT_MODEL))
    assert rows == 3 and tokens > 0
    assert delta(after, before, "instaboost_worker_jobs_total", "succeeded") == 2
    assert delta(after, before, "instaboost_worker_rows_total") == rows
    assert delta(after, before, "instaboost_worker_tokens_total") == tokens
    steps = delta(after, before, "instaboost_worker_steps_total")
    assert steps >= 1 and delta(after, before, "instaboost_worker_step_rows_count") == steps
    row_steps = delta(after, before, "instaboost_worker_step_rows_sum")
    if worker.env.get("INSTABOOST_WORKER_CONTINUOUS") != "0":  # continuous: one token per running row a step
        # A row makes its first token in the step it joins (not yet running there), then one per step while it runs;
        # the longest run took at least as many steps as its tokens, and every step made a token.
        assert row_steps == tokens - rows and longest <= steps <= tokens, (steps, row_steps, rows, tokens, longest)
    else:  # static: a step decodes its rows to the end (the job's two rows and the chat's, together or not)
        assert steps <= 3 and row_steps == rows
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


def test_queue_page_shows_the_live_worker_and_its_model(web, worker):
    page = web.get("/queue").get_data(as_text=True)
    assert worker.hostname in page and worker.worker_id in page
    body = web.get("/api/queue").get_json()
    shown = next(w for w in body["workers"] if w["worker"] == worker.worker_id)
    assert shown["models"] == [DEFAULT_MODEL] and shown["pid"] == worker.pid
    assert shown["heartbeat_age_seconds"] is not None and shown["started_at"]
    row = next(m for m in body["models"] if m["model"] == DEFAULT_MODEL)
    assert row["workers"] == 1 and row["queue"] == "models.smollm2-135m-instruct"
