"""500 concurrent submissions against a real HTTP server: each accepted or cleanly refused, none lost.

The app runs in werkzeug's threaded server on 127.0.0.1 (a real socket, real PostgreSQL, real Redis);
32 client threads submit. limits.max_queued_jobs is 300, so both outcomes happen. No worker runs:
accepted jobs must be queued and deliverable (one message each on the model's queue).
"""

from __future__ import annotations

import http.client
import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import text

from shared.celery_config import model_queue
from tests.fixtures.store import DEFAULT_MODEL, make_test_app

pytestmark = pytest.mark.services
SUBMISSIONS = 500
THREADS = 32
CAP = 300
BODY = json.dumps({"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
                   "max_new_tokens": 8, "multipliers": [2, 10]})


@pytest.fixture
def live_server(clean_db, redis_namespace):
    """The app served by werkzeug's threaded server on a free loopback port; yields (host, port)."""
    from werkzeug.serving import make_server

    app = make_test_app(clean_db, redis_namespace, SETTINGS={"limits.max_queued_jobs": CAP})
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="load-server", daemon=True)
    thread.start()
    yield server.server_address[:2]
    server.shutdown()
    thread.join(10)


def post_job(address) -> tuple[int, dict, dict]:
    """Submit one job over a fresh connection; return (status, headers, body)."""
    conn = http.client.HTTPConnection(*address, timeout=30)
    try:
        conn.request("POST", "/api/jobs", body=BODY, headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, {k.lower(): v for k, v in resp.getheaders()}, json.loads(raw)
    finally:
        conn.close()


def test_500_concurrent_submissions_are_accepted_or_refused_and_none_lost(
        live_server, heartbeat, redis_client, redis_namespace, clean_db):
    from shared.db import get_db_engine

    heartbeat(DEFAULT_MODEL)
    start = time.monotonic()
    with ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(lambda _: post_job(live_server), range(SUBMISSIONS)))
    elapsed = time.monotonic() - start

    statuses = [s for s, _, _ in results]
    assert all(s in (202, 429, 503) for s in statuses), sorted(set(statuses))
    accepted = [b for s, _, b in results if s == 202]
    refused = [(s, h, b) for s, h, b in results if s != 202]
    for status, headers, body in refused:
        assert headers["content-type"] == "application/problem+json"
        assert body["status"] == status and body["detail"] and int(headers["retry-after"]) > 0
    # The cap is exact under concurrency: no more than CAP accepted, and no refusal while room remained.
    assert len(accepted) == CAP and len(refused) == SUBMISSIONS - CAP
    assert {s for s, _, _ in refused} == {429}

    ids = [b["id"] for b in accepted]
    assert len(set(ids)) == len(ids)
    assert all(b["status"] == "queued" and b["enqueued_at"] for b in accepted)
    with get_db_engine(clean_db).connect() as conn:
        rows = dict(conn.execute(text("SELECT id, status FROM jobs")).all())
        unenqueued = conn.execute(text("SELECT count(*) FROM jobs WHERE enqueued_at IS NULL")).scalar_one()
    assert set(rows) == set(ids) and set(rows.values()) == {"queued"} and unenqueued == 0
    # Deliverable: exactly one message per accepted job on the model's queue, naming that job.
    messages = redis_client.lrange(f"{redis_namespace}:{model_queue(DEFAULT_MODEL)}", 0, -1)
    assert len(messages) == len(accepted)
    queued_ids = sorted(json.loads(json.loads(m)["headers"]["argsrepr"])[0] for m in messages)
    assert queued_ids == sorted(ids)
    assert elapsed < 60, f"{SUBMISSIONS} submissions took {elapsed:.1f} s"
