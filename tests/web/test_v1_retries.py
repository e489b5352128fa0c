"""POST /v1/chat/completions under client retries and slow streams (real app, PostgreSQL and Redis; no worker).

A retry (same Idempotency-Key, or an openai SDK retry: x-stainless-retry-count >= 1) answers from the job its
first try created; a stream waits v1.wait_seconds for each next piece of text, not for the whole answer.
Jobs stay queued (a heartbeat advertises the model, no worker runs them); the tests play the worker's part
through the store's own lifecycle functions and the worker's Redis stream (shared.streaming.publish_event).
"""

from __future__ import annotations

import json
import threading
import time

import pytest
from sqlalchemy import func, select

from shared.chat import CHAT_VARIANT
from shared.db import session_scope
from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from shared.streaming import publish_event
from shared.worker_registry import stream_key
from tests.fixtures.store import DEFAULT_MODEL, make_test_app

BODY = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "What is the capital of Italy?"}],
        "max_tokens": 4}


@pytest.fixture
def v1(clean_db, redis_namespace, heartbeat):
    heartbeat(DEFAULT_MODEL)
    return make_test_app(clean_db, redis_namespace, SETTINGS={"v1.wait_seconds": 0.5}).test_client()


def jobs(url: str) -> list[tuple[int, JobStatus]]:
    with session_scope(url) as s:
        return [(j.id, j.status) for j in s.execute(select(Job).order_by(Job.id)).scalars()]


def finish(url: str, job_id: int, text: str = "Rome.") -> None:
    """Do what a worker does for a chat job: claim it, store its run, mark it succeeded."""
    with session_scope(url) as s:
        lifecycle.mark_running(s, job_id, "test-worker")
        lifecycle.record_run(s, job_id, CHAT_VARIANT, multiplier=1.0, layers="none", output_text=text,
                             prompt_tokens=9, output_tokens=2, finish_reason="stop")
        lifecycle.mark_succeeded(s, job_id)


def test_the_same_idempotency_key_gives_the_same_job(v1, clean_db):
    first = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert first.status_code == 504 and first.headers["x-should-retry"] == "false"  # no worker: still queued
    job_id = int(first.headers["Location"].rsplit("/", 1)[1])
    again = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert again.status_code == 504 and again.headers["Location"] == first.headers["Location"]
    assert jobs(clean_db) == [(job_id, JobStatus.queued)]

    finish(clean_db, job_id)
    done = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-1"})
    assert done.status_code == 200 and done.get_json()["id"] == str(job_id)
    assert done.get_json()["choices"][0]["message"]["content"] == "Rome."
    assert len(jobs(clean_db)) == 1

    # Another key is another request; the same key with another body is a 409, OpenAI-shaped, not retried.
    other = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-2"})
    assert other.status_code == 504 and len(jobs(clean_db)) == 2
    reused = v1.post("/v1/chat/completions", json={**BODY, "max_tokens": 5}, headers={"Idempotency-Key": "k-1"})
    assert reused.status_code == 409 and reused.headers["x-should-retry"] == "false"
    assert reused.get_json()["error"]["param"] == "Idempotency-Key" and "different request" in \
        reused.get_json()["error"]["message"]
    assert len(jobs(clean_db)) == 2


def test_a_failed_or_cancelled_job_is_not_reused(v1, clean_db):
    first = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-3"})
    job_id = int(first.headers["Location"].rsplit("/", 1)[1])
    assert v1.post(f"/api/jobs/{job_id}/cancel", json={}).status_code == 200
    retry = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "k-3"})
    assert retry.status_code == 504
    assert [s for _, s in jobs(clean_db)] == [JobStatus.cancelled, JobStatus.queued]
    assert int(retry.headers["Location"].rsplit("/", 1)[1]) != job_id


def test_an_sdk_retry_without_a_key_joins_its_first_try(v1, clean_db):
    first = v1.post("/v1/chat/completions", json=BODY, headers={"x-stainless-retry-count": "0"})
    assert first.status_code == 504
    # The SDK retries a 5xx or a dropped connection with the same body and a retry count: the same job.
    retry = v1.post("/v1/chat/completions", json=BODY, headers={"x-stainless-retry-count": "1"})
    assert retry.headers["Location"] == first.headers["Location"] and len(jobs(clean_db)) == 1
    # A new call (count 0) of the same request is a new job; a retry joins the newest.
    second = v1.post("/v1/chat/completions", json=BODY, headers={"x-stainless-retry-count": "0"})
    assert second.headers["Location"] != first.headers["Location"] and len(jobs(clean_db)) == 2
    retry = v1.post("/v1/chat/completions", json=BODY, headers={"x-stainless-retry-count": "2"})
    assert retry.headers["Location"] == second.headers["Location"] and len(jobs(clean_db)) == 2


def test_a_bad_idempotency_key_is_a_clean_400(v1, clean_db):
    resp = v1.post("/v1/chat/completions", json=BODY, headers={"Idempotency-Key": "x" * 256})
    assert resp.status_code == 400 and resp.get_json()["error"]["param"] == "Idempotency-Key"
    assert jobs(clean_db) == []


def test_a_stream_waits_as_long_as_text_keeps_arriving(clean_db, redis_namespace, heartbeat, redis_client):
    """The stream's deadline (v1.wait_seconds = 2) is a stall bound: text arriving for longer still streams."""
    heartbeat(DEFAULT_MODEL)
    # One wait slot (web.threads 3, 2 kept for other requests): the stream's end must give it back.
    web = make_test_app(clean_db, redis_namespace, SETTINGS={"v1.wait_seconds": 2, "web.threads": 3}).test_client()
    resp = web.post("/v1/chat/completions", json={**BODY, "stream": True}, buffered=False)
    assert resp.status_code == 200
    job_id = int(resp.headers["X-InstaBoost-Job-Id"])
    key = stream_key(redis_namespace, job_id)
    pieces = [f"w{i} " for i in range(16)]

    def worker():  # one piece every 0.4 s: 6.4 s in all, three times the stall bound
        for piece in pieces:
            publish_event(redis_client, key, {"type": "delta", "text": piece, "attempt": 1})
            time.sleep(0.4)
        publish_event(redis_client, key, {"type": "end", "finish_reason": "stop", "prompt_tokens": 9,
                                          "completion_tokens": 16, "attempt": 1})

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        events = [line[6:] for line in b"".join(resp.response).decode().splitlines() if line.startswith("data: ")]
        assert web.post("/v1/chat/completions", json=BODY).status_code == 504  # its slot is free again (not 429)
    finally:
        resp.close()
        thread.join(30)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], chunks
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "".join(pieces)
    assert chunks[-1]["usage"]["completion_tokens"] == 16


def test_a_stream_with_a_gap_takes_its_text_from_the_stored_run(clean_db, redis_namespace, heartbeat, redis_client):
    """Events trimmed from the job's Redis stream (past STREAM_MAXLEN) never garble the text: after a missing
    event number the stream sends the stored run's text."""
    heartbeat(DEFAULT_MODEL)
    web = make_test_app(clean_db, redis_namespace, SETTINGS={"v1.wait_seconds": 5}).test_client()
    resp = web.post("/v1/chat/completions", json={**BODY, "stream": True}, buffered=False)
    job_id = int(resp.headers["X-InstaBoost-Job-Id"])
    key = stream_key(redis_namespace, job_id)
    redis_client.delete(key)  # job ids restart with each test's database; the Redis namespace is the session's
    for event in [{"type": "delta", "text": "Ro", "attempt": 1, "seq": 0},
                  {"type": "delta", "text": "XX", "attempt": 1, "seq": 3},  # 1 and 2 trimmed away
                  {"type": "end", "finish_reason": "stop", "prompt_tokens": 9, "completion_tokens": 2, "attempt": 1,
                   "seq": 4}]:
        publish_event(redis_client, key, event)
    finish(clean_db, job_id, "Rome.")
    try:
        events = [line[6:] for line in b"".join(resp.response).decode().splitlines() if line.startswith("data: ")]
    finally:
        resp.close()
    chunks = [json.loads(e) for e in events[:-1]]
    assert not [c for c in chunks if "error" in c], chunks
    assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"]) == "Rome."
    assert events[-1] == "[DONE]" and chunks[-1]["usage"]["completion_tokens"] == 2


def test_sdk_retries_never_duplicate_jobs_when_many_arrive_at_once(v1, clean_db):
    """Concurrent tries with one key (a client retrying over several connections) still make one job."""
    with session_scope(clean_db) as s:
        before = s.execute(select(func.count()).select_from(Job)).scalar_one()
    app = v1.application
    results = []

    def send():
        results.append(app.test_client().post("/v1/chat/completions", json=BODY,
                                               headers={"Idempotency-Key": "k-race"}).headers.get("Location"))

    threads = [threading.Thread(target=send) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(set(results)) == 1 and None not in results
    assert len(jobs(clean_db)) == before + 1


def test_the_job_api_honours_an_idempotency_key_too(v1, clean_db, redis_client, redis_namespace):
    from shared.celery_config import PRIORITY, model_queue
    from shared.worker_registry import queue_key

    job = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 8}
    first = v1.post("/api/jobs", json=job, headers={"Idempotency-Key": "api-1"})
    again = v1.post("/api/jobs", json=job, headers={"Idempotency-Key": "api-1"})
    assert (first.status_code, again.status_code) == (202, 202)
    assert again.headers["Location"] == first.headers["Location"] and len(jobs(clean_db)) == 1
    queue = queue_key(model_queue(DEFAULT_MODEL), PRIORITY["default"], redis_namespace)
    assert redis_client.llen(queue) == 1  # one message: the retry enqueued nothing
    other = v1.post("/api/jobs", json={**job, "max_new_tokens": 9}, headers={"Idempotency-Key": "api-1"})
    assert other.status_code == 409 and other.mimetype == "application/problem+json"
    assert other.get_json()["errors"][0]["field"] == "Idempotency-Key"
    assert v1.post("/api/jobs", json=job).status_code == 202 and len(jobs(clean_db)) == 2  # no key: a new job
