"""Fault injection on OpenAI batches: kill -9 of the worker mid-batch, twice; the batch still completes with one
output line per input line, none duplicated. Real workers (FAST recovery loop), the real model, Redis and PostgreSQL.
"""

from __future__ import annotations

import io
import json
import re
import time

from sqlalchemy import select

from shared.db import session_scope
from shared.store.tables import Job, JobStatus, Run
from tests.fixtures.store import make_test_app
from tests.fixtures.worker import record_fault
from tests.jobs.test_faults import SLOW_VARIANTS, fault_db, h, runner  # noqa: F401  (fixtures)

LINES = 6
AUTH = {"Authorization": "Bearer any"}  # no token is set: any bearer passes, and it marks a non-browser client


def batch_lines() -> bytes:
    return "".join(json.dumps({
        "custom_id": f"story-{k}", "method": "POST", "url": "/v1/chat/completions",
        "body": {"model": "smollm2-135m-instruct", "max_tokens": 24, "temperature": 0,
                 "messages": [{"role": "system", "content": "Answer only in French."},
                              {"role": "user", "content": f"Tell me a short story about dragon number {k}."}],
                 "instaboost": {"multiplier": 10}}}) + "\n" for k in range(LINES)).encode()


def running_batch_jobs(db_url: str, batch_id: str, worker_id: str) -> list[int]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Job.id).where(Job.batch_id == batch_id, Job.status == JobStatus.running,
                                                   Job.worker == worker_id)))


def test_kill_9_during_a_batch_then_one_output_line_per_input_line(h):  # noqa: F811
    w = h.worker(fault=SLOW_VARIANTS)
    web = make_test_app(h.db_url, h.namespace).test_client()
    up = web.post("/v1/files", data={"purpose": "batch", "file": (io.BytesIO(batch_lines()), "in.jsonl")},
                  content_type="multipart/form-data", headers=AUTH)
    assert up.status_code == 200, up.get_json()
    batch = web.post("/v1/batches", json={"input_file_id": up.get_json()["id"], "endpoint": "/v1/chat/completions",
                                          "completion_window": "24h"}).get_json()
    assert batch["status"] == "in_progress", batch
    killed, kills = [], 0
    while len(killed) < 2:  # two kills that each caught a job mid-run
        assert kills < 6, f"only {killed} of {kills} kills caught a job running"
        deadline = time.monotonic() + 90
        while not running_batch_jobs(h.db_url, batch["id"], w.worker_id):
            assert time.monotonic() < deadline, w.log_tail()
            time.sleep(0.05)
        time.sleep(0.4)  # inside the generation (each takes over 1 s: SLOW_VARIANTS)
        w.kill()
        kills += 1
        # Read after the kill: what the dead worker held then is what it was killed in, however long this
        # process took between its look and the kill on a busy machine.
        killed += running_batch_jobs(h.db_url, batch["id"], w.worker_id)
        w = h.worker(fault=SLOW_VARIANTS)  # its recovery loop finds the dead worker's job and sends it again
    deadline = time.monotonic() + 300
    while (b := web.get(f"/v1/batches/{batch['id']}").get_json())["status"] not in ("completed", "failed",
                                                                                     "cancelled", "expired"):
        assert time.monotonic() < deadline, (b, w.log_tail())
        time.sleep(0.5)
    out = [json.loads(x) for x in web.get(f"/v1/files/{b['output_file_id']}/content").get_data(as_text=True)
           .splitlines() if x.strip()]
    ids = [x["custom_id"] for x in out]
    with session_scope(h.db_url) as s:
        runs = list(s.scalars(select(Run.job_id).join(Job).where(Job.batch_id == batch["id"])))
        attempts = {j.id: j.attempts for j in s.scalars(select(Job).where(Job.id.in_(killed)))}
    logged = [m.group(1) for w_ in h.workers for m in re.finditer(r"job (\d+): chat done", w_.log_tail(10**7))]
    expected = {f"story-{k}" for k in range(LINES)}
    lost = len(expected - set(ids))
    duplicated = (len(ids) - len(set(ids))) + (len(runs) - len(set(runs))) + (len(logged) - len(set(logged)))
    record_fault("kill -9 worker during an OpenAI batch", injected=kills, survived=b["status"] == "completed",
                 lost=lost, duplicated=duplicated, killed_jobs=killed)
    assert b["status"] == "completed" and b["error_file_id"] is None, b
    assert b["request_counts"] == {"total": LINES, "completed": LINES, "failed": 0}
    assert sorted(ids) == sorted(expected) and (lost, duplicated) == (0, 0)
    assert len(runs) == LINES and all(x["response"]["status_code"] == 200 for x in out)
    assert all(n >= 2 for n in attempts.values()), attempts  # the killed jobs really ran again
