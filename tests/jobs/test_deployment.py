"""Two deployments on one Redis (issue 25): workers of another database refuse to start, and a message that
another deployment sent is handed back to the queue, never run nor acknowledged as done.

Before, a second deployment on the same key prefix took the first one's messages, logged "skipped (missing)"
and acknowledged them (or ran its own job of the same id): 16 short jobs had 6 done after 5 minutes.
"""

from __future__ import annotations

import random
import time

import pytest
from sqlalchemy import text

from shared import deployment
from shared.celery_config import PRIORITY_STEPS, TASK_NAME, make_celery, model_queue
from shared.settings import load_settings
from shared.worker_registry import queue_key, redis_client
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL, insert_job, load_job
from tests.fixtures.worker import WorkerProcess

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 4,
        "multipliers": [10], "layer_modes": ["all"]}


@pytest.fixture
def other_db(tmp_path):
    """Another deployment's database: a new SQLite file, migrated (so it has its own identity)."""
    from shared.db import upgrade

    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    return url


def test_a_worker_of_another_database_refuses_to_start_naming_both(celery_worker, other_db, tmp_path):
    second = WorkerProcess(other_db, celery_worker.namespace, tmp_path / "second.log")
    try:
        with pytest.raises(RuntimeError, match="worker exited with 3"):
            second.start(timeout=120)
    finally:
        second.stop()  # when it did start (the defect), it must not go on taking the first worker's jobs
    log = second.log_tail()
    assert "cannot start: the Redis key prefix" in log, log
    assert celery_worker.db_url in log and other_db in log and "INSTABOOST_REDIS_NAMESPACE" in log
    assert "Traceback" not in log
    assert second.heartbeat() is None  # it never advertised itself: no job is routed to it
    client = redis_client(TEST_REDIS_URL)
    try:
        assert deployment.owner_id(client, celery_worker.namespace) == deployment.local_identity(celery_worker.db_url)
    finally:
        client.close()
    assert celery_worker.alive() and celery_worker.heartbeat() is not None


def _same_id_in(urls: list[str]) -> int:
    """Store a queued job in each database, all under one id (job ids mean nothing outside their database)."""
    from shared.db import get_db_engine

    job_id = random.randrange(10**8, 10**9)
    for url in urls:
        stored = insert_job(url, TINY, enqueued=True)
        with get_db_engine(url).begin() as conn:
            conn.execute(text("UPDATE jobs SET id = :new WHERE id = :old"), {"new": job_id, "old": stored})
    return job_id


def _held(client, namespace: str, task_id: str) -> bool:
    """Return True while Redis still holds the message: waiting in a queue list or delivered, unacknowledged."""
    lists = [queue_key(model_queue(DEFAULT_MODEL), p, namespace) for p in PRIORITY_STEPS]
    messages = [m for key in lists for m in client.lrange(key, 0, -1)] + list(client.hvals(f"{namespace}:unacked"))
    return any(task_id in m for m in messages)


def _unchanged(url: str, job_id: int) -> tuple:
    job, runs = load_job(url, job_id)
    return job.status.value, job.attempts, job.worker, len(runs)


def test_a_message_of_another_deployment_is_handed_back_not_run(celery_worker, other_db):
    w = celery_worker
    job_id = _same_id_in([w.db_url, other_db])
    settings = load_settings(overrides={"database.url": other_db, "redis.url": TEST_REDIS_URL,
                                        "redis.namespace": w.namespace})
    # Sent as the other deployment's web app would; it expires so the bouncing message goes away after the test (the
    # test waits for that): 10 s leave room for the two hand-backs asserted below (worker FOREIGN_PAUSE, 2 s each).
    task = make_celery(settings).send_task(TASK_NAME, args=[job_id], queue=model_queue(DEFAULT_MODEL), expires=10)
    line = f"job {job_id}: message of another deployment ({deployment.local_identity(other_db)}) handed back"
    try:
        deadline = time.monotonic() + 120
        while w.log_tail(10**7).count(line) < 2:  # taken, handed back, delivered again: never acknowledged
            assert time.monotonic() < deadline and w.alive(), w.log_tail()
            time.sleep(0.2)
        assert "ERROR" in next(ln for ln in w.log_tail(10**7).splitlines() if line in ln)
        assert "INSTABOOST_REDIS_NAMESPACE" in w.log_tail(10**7)
        # Neither database's job was touched: not run here, not claimed, not marked skipped.
        assert _unchanged(other_db, job_id) == _unchanged(w.db_url, job_id) == ("queued", 0, None, 0)

        client = redis_client(TEST_REDIS_URL)
        try:
            deadline = time.monotonic() + 60
            while not _held(client, w.namespace, task.id):  # still in Redis after two hand-backs
                assert time.monotonic() < deadline, w.log_tail()
                time.sleep(0.05)
            deadline = time.monotonic() + 120
            while _held(client, w.namespace, task.id):
                assert time.monotonic() < deadline and w.alive(), w.log_tail()
                time.sleep(0.5)  # still bouncing until it expires (Celery then discards it)
        finally:
            client.close()
        assert _unchanged(w.db_url, job_id) == ("queued", 0, None, 0)
    finally:
        from shared.db import get_db_engine

        with get_db_engine(w.db_url).begin() as conn:
            conn.execute(text("DELETE FROM jobs WHERE id = :id"), {"id": job_id})
