"""A calibration sweep through real worker processes: it ends with a recommendation, and survives `kill -9`
of its worker mid-job with nothing lost or duplicated (the recovery loop requeues the job and advances the sweep)."""

from __future__ import annotations

import re
import time

import pytest
from sqlalchemy import select

from shared.calibration import parse_sweep_request
from shared.celery_config import make_celery
from shared.db import session_scope
from shared.settings import load_settings
from shared.store import sweeps
from shared.store.tables import Job, Run, Sweep
from tests.fixtures.store import TEST_REDIS_URL, migrated_pg_database
from tests.fixtures.worker import WorkerProcess, purge_namespace, record_fault


FAST = {"INSTABOOST_WORKER_HEARTBEAT_INTERVAL": "0.5", "INSTABOOST_WORKER_HEARTBEAT_TTL": "3",
        "INSTABOOST_SWEEPER_ENABLED": "1", "INSTABOOST_SWEEPER_INTERVAL": "0.5",
        "INSTABOOST_SWEEPER_OUTBOX_GRACE": "2", "INSTABOOST_SWEEPER_LOST_AFTER": "2",
        "INSTABOOST_WORKER_MAX_ATTEMPTS": "10"}
CASES = {
    "lower": {"instruction": "Write everything in lowercase letters only.", "query": "Tell me about dragons.",
              "checks": [{"type": "lowercase"}]},
    "french": {"instruction": "Answer only in French.", "query": "Tell me a short story about a cat.",
               "checks": [{"type": "regex", "value": "(?i)\\b(le|la|les|un|une|est)\\b"}]},
}


@pytest.fixture
def sweep_db():
    yield from migrated_pg_database("instaboost_test_sweeps")


def test_a_sweep_survives_kill_9_of_its_worker_and_ends_with_a_recommendation(sweep_db, redis_namespace, tmp_path):
    namespace = f"{redis_namespace}_sw"
    settings = load_settings(overrides={"database.url": sweep_db, "redis.url": TEST_REDIS_URL,
                                        "redis.namespace": namespace})
    workers = [WorkerProcess(sweep_db, namespace, tmp_path / "w0.log", env=FAST).start()]
    try:
        req = parse_sweep_request({"cases": CASES, "grid": [1, 3, 5], "layer_modes": ["all"], "max_new_tokens": 24,
                                   "fluency_floor": 0}, settings)
        with session_scope(sweep_db) as s:
            sweep_id = sweeps.create_sweep(s, cases=req.cases, pack=None, grid=req.grid, settings_=req.settings,
                                           floor=req.floor, params=req.params, settings=settings,
                                           sender=sweeps.celery_sender(make_celery(settings))).id

        def state():
            with session_scope(sweep_db) as s:
                sw = s.get(Sweep, sweep_id)
                jobs = [(j.id, j.status.value, j.worker, j.progress_done) for j in sweeps.sweep_jobs(s, sweep_id)]
                return sw.status, sw.current_multiplier, jobs

        # Kill the worker in the middle of the second step (M = 5), after the first step advanced: its jobs
        # decode as one batch, so "running" is mid-job (their variants are stored together at the step's end).
        deadline = time.monotonic() + 240
        while True:
            status, m, jobs = state()
            if m == 5.0 and any(st == "running" for _, st, _, _ in jobs):
                break
            assert status == "running" and time.monotonic() < deadline, (status, m, jobs, workers[0].log_tail())
            time.sleep(0.05)
        workers[0].kill()
        workers.append(WorkerProcess(sweep_db, namespace, tmp_path / "w1.log", env=FAST).start())

        deadline = time.monotonic() + 300
        while state()[0] == "running":
            assert time.monotonic() < deadline, (state(), workers[-1].log_tail())
            time.sleep(0.2)
        status, m, jobs = state()
        with session_scope(sweep_db) as s:
            cells = s.execute(select(Job.case_name, Job.sweep_multiplier)).all()
            runs = s.execute(select(Run.job_id, Run.variant)).all()
            sw = s.get(Sweep, sweep_id)
            rec = (sw.result or {}).get("recommended")
        expected_cells = sorted((c, m) for c in CASES for m in (3.0, 5.0))
        expected_runs = {(j, v) for (j, _, _, _), (_, step) in zip(jobs, sorted(cells, key=lambda x: x[1]))
                         for v in ("original", f"all_x{step:g}")}
        logged = [m_.groups() for w in workers
                  for m_ in re.finditer(r"job (\d+): variant (\S+) done", w.log_tail(10**7))]
        lost = len(expected_cells) - len(set(cells)) + sum(1 for _, st, _, _ in jobs if st != "succeeded")
        duplicated = (len(cells) - len(set(cells))) + (len(runs) - len(set(runs))) + (len(logged) - len(set(logged)))
        record_fault("kill -9 worker mid-sweep", injected=1, survived=status == "succeeded", lost=lost,
                     duplicated=duplicated, jobs=len(jobs), runs=len(runs))
        assert status == "succeeded" and rec is not None and rec["multiplier"] in (1.0, 3.0, 5.0)
        assert sorted(cells) == expected_cells and all(st == "succeeded" for _, st, _, _ in jobs)
        assert len(runs) == len(set(runs)) == 8 and set(runs) == expected_runs
        assert lost == 0 and duplicated == 0
    finally:
        for w in workers:
            if w.alive():
                w.stop(timeout=15)
        purge_namespace(namespace)
