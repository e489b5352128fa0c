"""Concurrent submissions against several web processes: each accepted or cleanly refused, none lost.

The app runs under a real gunicorn with several worker processes (as `instaboost serve` runs it) on a real
socket, once on SQLite and once on PostgreSQL, with real Redis. In each of 5 rounds 32 client threads send
100 submissions; the queued-job cap (limits.max_queued_jobs = 50) must hold across the processes, so both
outcomes happen and exactly 50 are accepted per round. No worker runs: accepted jobs must be queued and
deliverable (one message each); between rounds the test empties the queue as a worker would.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import text

from shared.celery_config import model_queue
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL, release_namespace

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 5
PER_ROUND = 100
THREADS = 32
CAP = 50
WEB_PROCESSES = 4
BODY = json.dumps({"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
                   "max_new_tokens": 8, "multipliers": [2, 10]})


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, redis_namespace):
    """The URL of an emptied SQLite or PostgreSQL job store.

    Both databases take turns on the session's Redis namespace: each is another deployment, so the namespace's
    owner is forgotten before and after (the app refuses a namespace another database owns).
    """
    release_namespace(redis_namespace)
    yield request.getfixturevalue("clean_sqlite" if request.param == "sqlite" else "clean_db")
    release_namespace(redis_namespace)


@pytest.fixture
def gunicorn(store, redis_namespace, tmp_path):
    """The app under gunicorn with WEB_PROCESSES sync workers; yields ((host, port), access log path)."""
    import gunicorn.config

    port = free_port()
    access_log = tmp_path / "access.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("INSTABOOST_")}
    env.update(DATABASE_URL=store, REDIS_URL=TEST_REDIS_URL, INSTABOOST_REDIS_NAMESPACE=redis_namespace,
               INSTABOOST_LIMITS_MAX_QUEUED_JOBS=str(CAP), INSTABOOST_WEB_SECRET_KEY="k" * 32,
               PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", str(WEB_PROCESSES),
           "--access-logfile", str(access_log), "--access-logformat", "%(p)s %(s)s"]
    if any(s.name == "control_socket_disable" for s in gunicorn.config.KNOWN_SETTINGS):
        cmd.append("--no-control-socket")
    log = open(tmp_path / "gunicorn.log", "w+")
    proc = subprocess.Popen(cmd + ["web:create_app()"], cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # Wait until every worker process answers: each logs "Booting worker", then the app serves /healthz.
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "gunicorn.log").read_text()
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
                conn.request("GET", "/healthz")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.2)
        yield ("127.0.0.1", port), access_log
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def post_job(address) -> tuple[int, dict, dict]:
    """Submit one job over a fresh connection; return (status, headers, body)."""
    conn = http.client.HTTPConnection(*address, timeout=60)
    try:
        conn.request("POST", "/api/jobs", body=BODY, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def burst(address) -> list[tuple[int, dict, dict]]:
    """Submit PER_ROUND jobs from THREADS client threads at once."""
    with ThreadPoolExecutor(THREADS) as pool:
        return list(pool.map(lambda _: post_job(address), range(PER_ROUND)))


def test_concurrent_submissions_to_several_processes_respect_the_cap_and_none_is_lost(
        gunicorn, store, heartbeat, redis_client, redis_namespace):
    from shared.db import get_db_engine

    address, access_log = gunicorn
    heartbeat(DEFAULT_MODEL)
    engine = get_db_engine(store)
    from shared.celery_config import PRIORITY
    from shared.worker_registry import queue_key

    queue = queue_key(model_queue(DEFAULT_MODEL), PRIORITY["default"], redis_namespace)
    start = time.monotonic()
    for round_ in range(ROUNDS):
        # Each round crosses the cap once, with every web process busy: the moment a per-process lock overshoots.
        results = burst(address)
        statuses = [s for s, _, _ in results]
        assert all(s in (202, 429, 503) for s in statuses), sorted(set(statuses))
        accepted = [b for s, _, b in results if s == 202]
        refused = [(s, h, b) for s, h, b in results if s != 202]
        for status, headers, body in refused:
            assert headers["content-type"] == "application/problem+json"
            assert body["status"] == status and body["detail"] and int(headers["retry-after"]) > 0
        # The cap is exact across processes: no more than CAP accepted, and no refusal while room remained.
        assert (round_, len(accepted), len(refused)) == (round_, CAP, PER_ROUND - CAP)
        assert {s for s, _, _ in refused} == {429}

        ids = [b["id"] for b in accepted]
        assert len(set(ids)) == len(ids)
        assert all(b["status"] == "queued" and b["enqueued_at"] for b in accepted)
        with engine.begin() as conn:
            rows = dict(conn.execute(text("SELECT id, status FROM jobs WHERE status = 'queued'")).all())
            unenqueued = conn.execute(text("SELECT count(*) FROM jobs WHERE enqueued_at IS NULL")).scalar_one()
            assert set(rows) == set(ids) and unenqueued == 0
            # Deliverable: exactly one message per accepted job on the model's queue, naming that job.
            messages = redis_client.lrange(queue, 0, -1)
            assert sorted(json.loads(json.loads(m)["headers"]["argsrepr"])[0] for m in messages) == sorted(ids)
            # Empty the queue for the next round, as a worker taking every job would.
            conn.execute(text("UPDATE jobs SET status = 'cancelled' WHERE status = 'queued'"))
        redis_client.delete(queue)
    print(f"\n{ROUNDS} x {PER_ROUND} submissions to {WEB_PROCESSES} gunicorn processes on "
          f"{store.split(':')[0]}: {time.monotonic() - start:.1f} s")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM jobs")).scalar_one() == ROUNDS * CAP
    # The cross-process path is the one tested: several gunicorn processes accepted jobs.
    served_by: dict[str, set[str]] = {}
    for line in access_log.read_text().splitlines():
        pid, status = line.split()
        served_by.setdefault(status, set()).add(pid)
    assert len(served_by["202"]) >= 2, served_by
