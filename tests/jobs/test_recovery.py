"""Issue 18: a restarted worker takes its dead predecessor's jobs back at once, and queued jobs of a model no
worker serves expire. In-process on real PostgreSQL and Redis: the recovery loop and the takeover act on rows and
heartbeats written here; the end-to-end kill under `instaboost serve` is in tests/system/test_serve.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta

import pytest
from sqlalchemy import text, update

from shared.celery_config import model_queue
from shared.db import session_scope
from shared.settings import load_settings
from shared.store.submission import queued_count
from shared.store.tables import Job, JobStatus, utcnow
from shared.worker_registry import waiting_job_ids
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL, insert_job, migrated_pg_database, write_heartbeat
from tests.fixtures.worker import purge_namespace
from worker.jobs.recovery import JobRecovery
from worker.jobs.takeover import Takeover, process_facts, process_start

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 4,
        "multipliers": [10], "layer_modes": ["all"]}
NODE = "serve@box"
INTERVAL, TTL = 0.5, 3.0  # a live heartbeat here is refreshed every 0.5 s and lives 3 s


@pytest.fixture(scope="module")
def db():
    """A database of its own: these recovery loops act on every row they see."""
    yield from migrated_pg_database("instaboost_test_recovery")


@pytest.fixture
def ns(db, redis_namespace):
    from shared.db import get_db_engine

    with get_db_engine(db).begin() as conn:
        conn.execute(text("TRUNCATE runs, jobs RESTART IDENTITY CASCADE"))
    namespace = f"{redis_namespace}_rc{uuid.uuid4().hex[:4]}"
    yield namespace
    purge_namespace(namespace)


def recovery(db: str, namespace: str, own: str | None = None, **overrides) -> JobRecovery:
    settings = load_settings(overrides={"database.url": db, "redis.url": TEST_REDIS_URL, "redis.namespace": namespace,
                                        "worker.heartbeat_interval": INTERVAL, "worker.heartbeat_ttl": TTL,
                                        **overrides})
    return JobRecovery(settings, own_worker=own)


def job(db: str, job_id: int) -> Job:
    with session_scope(db) as s:
        row = s.get(Job, job_id)
        s.expunge(row)
        return row


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def takeover(sw: JobRecovery, own: str) -> Takeover:
    return Takeover(sw, NODE, own, INTERVAL, TTL, poll=0.1)


def test_a_dead_predecessor_on_this_machine_is_known_dead_at_once(db, ns, redis_client):
    """kill -9 under serve: the old process's heartbeat still lives (here for 10 minutes), its jobs go back now."""
    pid = dead_pid()
    old = f"{NODE}:{pid}:aa"
    key = write_heartbeat(redis_client, ns, old, [DEFAULT_MODEL], ttl=600,
                          **{**process_facts(), "pid": pid, "worker": old})
    running = insert_job(db, TINY, JobStatus.running, old, attempts=1)
    cancelling = insert_job(db, TINY, JobStatus.cancelling, old, attempts=1)
    other = insert_job(db, TINY, JobStatus.running, f"worker@elsewhere:{pid}:bb", attempts=1)  # not its name
    own = f"{NODE}:{os.getpid()}:cc"
    assert sorted(takeover(recovery(db, ns, own), own).run()) == [running, cancelling]
    back = job(db, running)
    assert back.status is JobStatus.queued and back.attempts == 1 and "took over" in back.error
    assert back.enqueued_at is not None  # sent again: its message waits on the model's queue
    assert running in waiting_job_ids(redis_client, model_queue(DEFAULT_MODEL), ns)
    assert job(db, cancelling).status is JobStatus.cancelled
    assert job(db, other).status is JobStatus.running
    assert not redis_client.exists(key)  # the web app no longer counts the dead worker


def test_a_live_worker_sharing_the_name_by_mistake_keeps_its_jobs(db, ns, redis_client, caplog):
    """Two workers started with one -n on this machine: the other one is alive, its job is left to it."""
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])  # stands for the other worker
    try:
        alive = f"{NODE}:{other.pid}:dd"
        facts = {**process_facts(), "pid": other.pid, "pid_start": process_start(other.pid), "worker": alive}
        write_heartbeat(redis_client, ns, alive, [DEFAULT_MODEL], ttl=600, **facts)
        job_id = insert_job(db, TINY, JobStatus.running, alive, attempts=1)
        own = f"{NODE}:{os.getpid()}:ee"
        assert takeover(recovery(db, ns, own), own).run() == []
        assert job(db, job_id).status is JobStatus.running
        assert "two workers share one name" in caplog.text
        # A heartbeat whose pid is now another process (reused) counts as dead.
        write_heartbeat(redis_client, ns, alive, [DEFAULT_MODEL], ttl=600, **{**facts, "pid_start": "1"})
        assert takeover(recovery(db, ns, own), own).run() == [job_id]
    finally:
        other.kill()
        other.wait()


def test_a_predecessor_elsewhere_is_dead_once_its_heartbeat_misses_two_beats(db, ns, redis_client, caplog):
    """A restarted container (another pid namespace): judged by its heartbeat's remaining TTL, not the pid."""
    elsewhere = {"boot_id": "another-machine", "pid_ns": "pid:[1]", "pid_start": "5"}
    dead, live = f"{NODE}:7:ff", f"{NODE}:8:gg"
    write_heartbeat(redis_client, ns, dead, [DEFAULT_MODEL], ttl=int(TTL), **elsewhere, pid=7)
    stale = insert_job(db, TINY, JobStatus.running, dead, attempts=1)
    stop = threading.Event()

    def beating():  # a live worker elsewhere that shares the name: it keeps refreshing its heartbeat
        while not stop.is_set():
            write_heartbeat(redis_client, ns, live, [DEFAULT_MODEL], ttl=int(TTL), **elsewhere, pid=8)
            stop.wait(INTERVAL)

    thread = threading.Thread(target=beating, daemon=True)
    thread.start()
    try:
        time.sleep(0.1)
        kept = insert_job(db, TINY, JobStatus.running, live, attempts=1)
        own = f"{NODE}:9:hh"
        assert takeover(recovery(db, ns, own), own).run() == [stale]
    finally:
        stop.set()
        thread.join()
    assert job(db, stale).status is JobStatus.queued
    assert job(db, kept).status is JobStatus.running and f"worker {live} runs under" in caplog.text


def test_queued_jobs_of_a_model_no_worker_serves_expire_with_a_clear_error(db, ns, redis_client):
    """They waited for ever and counted against limits.max_queued_jobs."""
    write_heartbeat(redis_client, ns, "w@box:1:aa", [DEFAULT_MODEL], ttl=600)
    orphan = insert_job(db, {**TINY, "model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    served = insert_job(db, TINY)
    with session_scope(db) as s:  # both have waited an hour
        s.execute(update(Job).where(Job.id.in_([orphan, served])).values(created_at=utcnow() - timedelta(hours=1)))
    sw = recovery(db, ns, **{"limits.queued_without_worker_seconds": 3})
    assert sw.run_pass()["expired"] == []  # the recovery loop has not yet seen the model unserved for 3 s
    deadline = time.monotonic() + 60
    while not (expired := sw.run_pass()["expired"]):
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert expired == [orphan]
    failed = job(db, orphan)
    assert failed.status is JobStatus.failed and failed.finished_at is not None
    assert "no live worker served model 'HuggingFaceTB/SmolLM2-360M-Instruct' for 3 s" in failed.error
    assert "INSTABOOST_WORKER_MODELS=HuggingFaceTB/SmolLM2-360M-Instruct" in failed.error
    assert job(db, served).status is JobStatus.queued  # its model has a live worker
    with session_scope(db) as s:
        assert queued_count(s) == 1  # no longer counted against the cap
    fresh = insert_job(db, {**TINY, "model": "HuggingFaceTB/SmolLM2-360M-Instruct"})
    assert sw.run_pass()["expired"] == [] and job(db, fresh).status is JobStatus.queued  # not waited 3 s itself yet
    never = recovery(db, ns, **{"limits.queued_without_worker_seconds": 0})
    with session_scope(db) as s:
        s.execute(update(Job).where(Job.id == fresh).values(created_at=utcnow() - timedelta(hours=2)))
    assert never.run_pass()["expired"] == [] and never.run_pass()["expired"] == []  # 0: never
