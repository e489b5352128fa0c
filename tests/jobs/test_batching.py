"""Batches of several jobs on one worker (worker.batch_jobs, worker.max_batch_rows): real worker processes,
the real model, real Redis and PostgreSQL.

Each test queues its jobs (rows and messages) before it starts the worker, so the worker's first delivery finds the others
waiting and takes them into its batch. The guarantees of a job run alone must hold for every job of a
batch: one run per variant after ``kill -9``, a cancel that stops only its job, every message of a job
that joined a batch skipped when it arrives, and seeded sampling that does not depend on the batch.
"""

from __future__ import annotations

import re
import time

import pytest

from shared.db import session_scope
from shared.store import lifecycle
from shared.store.tables import Run
from tests.fixtures.store import migrated_pg_database
from tests.fixtures.worker import record_fault
from tests.jobs.test_faults import BASE, Harness, harness_for, variants_of, wait_log

BATCHED = {"max_batch_rows": 32, "batch_jobs": 1}  # the defaults, over test_faults' FAST one-row steps
# The guarantees a batch keeps for each of its jobs (a cancel stops only its job, a time limit per job, a poison job
# fails alone) hold for both batch runners: those tests run once with static steps (worker.continuous: false,
# whose log names each step's rows) and once with the continuous runner (the default; its log names the rows of
# each job that join the decoder).
RUNNERS = pytest.mark.parametrize("continuous", [0, 1], ids=["static", "continuous"])


def joined_decoder(log: str, job_id: int) -> bool:
    """Whether the continuous runner's log says rows of this job joined its decoder."""
    return re.search(rf"continuous: \d+ rows of job {job_id} join the decoder", log) is not None


@pytest.fixture(scope="module")
def batch_db():
    """A migrated database of its own: these workers' recovery loops act on every row they see."""
    yield from migrated_pg_database("instaboost_test_batching")


@pytest.fixture
def h(batch_db, redis_namespace, tmp_path):
    yield from harness_for(batch_db, redis_namespace, tmp_path, tag="b")


def job(query: str, tokens: int, **extra) -> dict:
    return {**BASE, "query": query, "max_new_tokens": tokens, "multipliers": [10], "layer_modes": ["all"], **extra}


def enqueue(h: Harness, body: dict, attempts: int = 0) -> int:
    """Store a queued job and send its message with no worker running (submit_job wants a live worker)."""
    from shared.celery_config import TASK_NAME, make_celery, model_queue
    from tests.fixtures.store import insert_job

    job_id = insert_job(h.db_url, body, attempts=attempts)
    make_celery(h.settings()).send_task(TASK_NAME, args=[job_id], queue=model_queue("smollm2-135m-instruct"))
    return job_id


def outputs(url: str, job_id: int) -> dict[str, str]:
    with session_scope(url) as s:
        return {r.variant: r.output_text for r in s.query(Run).filter(Run.job_id == job_id)}


def wait_all(h: Harness, ids: list[int], predicate, timeout: float, what: str) -> list:
    deadline = time.monotonic() + timeout
    while True:
        views = [h.job(i) for i in ids]
        if predicate(views):
            return views
        if time.monotonic() > deadline:
            raise AssertionError(f"jobs never {what}: {views}\n{h.workers[-1].log_tail(3000)}")
        time.sleep(0.05)


@RUNNERS
def test_queued_jobs_share_the_workers_batch_and_each_runs_exactly_once(h, continuous):
    # Different lengths, instructions and decoding settings share one batch; one job samples.
    sampled = job("Name three colours.", 12, temperature=0.9, top_p=0.9, seed=7, multipliers=[4])
    bodies = [job("Tell me about cats.", 4), job("What is 2 + 2?", 10), sampled,
              job("Describe rain.", 6, instruction="Answer in one sentence."), job("Say hello.", 14)]
    ids = [enqueue(h, b) for b in bodies]
    w = h.worker(continuous=continuous, **BATCHED)
    views = [h.wait_finished(i, 240) for i in ids]
    log = w.log_tail(10**7)
    for view, body in zip(views, bodies):
        assert view.status == "succeeded" and view.attempts == 1, view
        assert sorted(view.variants) == sorted(variants_of(body)) and view.done == view.total
    joined = [i for i in ids if f"job {i}: joins the batch" in log]
    assert len(joined) >= 3, log[-3000:]  # the first delivery took the others in
    # Each joined job's own message comes later and finds it finished: skipped, never run twice.
    deadline = time.monotonic() + 60
    while not all(f"job {i}: skipped" in w.log_tail(10**7) for i in joined):
        assert time.monotonic() < deadline, w.log_tail(3000)
        time.sleep(0.1)
    for i in joined:
        assert h.job(i).attempts == 1 and h.counts(i, variants_of(bodies[ids.index(i)])) == (0, 0)

    # The sampled job alone on the now idle worker draws the same tokens as inside the busy batch.
    batched = outputs(h.db_url, ids[2])
    alone_id = h.submit(sampled)
    assert h.wait_finished(alone_id, 120).status == "succeeded"
    assert f"joins the batch of job {alone_id}" not in w.log_tail(10**7)
    assert outputs(h.db_url, alone_id) == batched


@RUNNERS
def test_kill_9_mid_batch_every_job_resumes_with_exactly_one_run_per_variant(h, continuous):
    bodies = [job(q, 16, layer_modes=["all", "middle"]) for q in
              ("Tell me about cats.", "Describe rain.", "What is a dragon?", "Why is the sky blue?")]
    ids = [enqueue(h, b) for b in bodies]
    # Every step (continuous: every step at which rows wait to join) waits 3 s first: the kill lands inside one.
    w = h.worker(fault="variant:sleep=3", continuous=continuous, **BATCHED)
    views = wait_all(h, ids, lambda vs: sum(v.status == "running" and v.worker == w.worker_id for v in vs) >= 2,
                     120, "shared a batch")
    held = [v.id for v in views if v.status == "running" and v.worker == w.worker_id]
    w.kill()
    w2 = h.worker(continuous=continuous, **BATCHED)  # its recovery loop sends every job of the dead batch again
    finals = [h.wait_finished(i, 240) for i in ids]
    counts = [h.counts(i, variants_of(b)) for i, b in zip(ids, bodies)]
    runner = "continuous" if continuous else "static"
    record_fault(f"kill -9 worker mid-batch ({runner})", injected=1,
                 survived=all(f.status == "succeeded" for f in finals), lost=sum(c[0] for c in counts),
                 duplicated=sum(c[1] for c in counts), jobs_in_batch=len(held))
    for final in finals:
        assert final.status == "succeeded" and final.worker == w2.worker_id and final.error is None, final
    assert counts == [(0, 0)] * len(ids)
    # Each job of the dead batch was claimed once more: by the recovery loop's resend, or by its own message
    # still waiting in the queue (a job that joined a batch keeps it), whichever reached the new worker first.
    assert [h.job(i).attempts for i in held] == [2] * len(held)


@RUNNERS
def test_cancel_of_one_job_in_a_batch_stops_only_that_job(h, continuous):
    bodies = [job(q, 160) for q in ("Tell me a long story about cats.", "Tell me a long story about rain.",
                                    "Tell me a long story about the sea.")]
    ids = [enqueue(h, b) for b in bodies]
    # A limit far above the jobs' length on a busy machine (FAST's 120 s is not what this test is about).
    # Continuous: the first decoding step sleeps 5 s first, so the cancel lands before any row can end (a boosted
    # row may end early, and a row that ended before the cancel is stored); static: rows end with their step.
    w = h.worker(continuous=continuous, job_time_limit=900, visibility_timeout=1800,
                 fault="variant:sleep=5:1" if continuous else None, **BATCHED)
    # The three jobs decode together now.
    if continuous:
        deadline = time.monotonic() + 120
        while not all(joined_decoder(w.log_tail(10**7), i) for i in ids):
            assert time.monotonic() < deadline and w.alive(), w.log_tail()
            time.sleep(0.2)
    else:
        wait_log(w, f"batch: a step of {sum(len(variants_of(b)) for b in bodies)} rows from jobs {ids}", 120)
    with session_scope(h.db_url) as s:
        assert lifecycle.cancel_job(s, ids[1]).status.value in ("cancelling", "cancelled")
    cancelled = h.wait_finished(ids[1], 120)
    others = [h.wait_finished(i, 240) for i in (ids[0], ids[2])]
    assert cancelled.status == "cancelled" and cancelled.variants == [], cancelled  # its partial rows dropped
    if not continuous:  # the step's watch stopped its rows; the continuous runner's check between two steps does
        assert f"job {ids[1]}: cancelled during a step" in w.log_tail(10**7)
    for i, view, body in zip((ids[0], ids[2]), others, (bodies[0], bodies[2])):
        assert view.status == "succeeded" and sorted(view.variants) == sorted(variants_of(body)), view
        assert view.attempts == 1 and h.counts(i, variants_of(body)) == (0, 0), view  # went on, not restarted


@RUNNERS
def test_time_limit_runs_per_job_so_only_the_job_past_it_fails_in_a_shared_step(h, continuous):
    # Three rows at a time: A's first three of its four rows decode first; B (two rows) joins beside A's last row,
    # claimed once A's first rows left, so its time limit ends later. Static: the first two steps each sleep 16 s
    # first (whatever the machine's speed), and A's soft limit (27 s from its claim) falls inside the second step's
    # sleep. Continuous: every decoding step at which the count of rows waiting to join changed sleeps 10 s first:
    # A's four rows submitted (0 to 10 s), A's last row left waiting (10 to 20 s), then, once A's first three rows
    # ended (and were handed to the storer), B's two rows submitted beside A's last one (from about 20 s): A's
    # soft limit falls inside that sleep.
    first = job("Tell me about cats.", 4, multipliers=[2, 4, 10])  # original and three boosted rows
    second = job("Describe rain.", 4)
    a, b = enqueue(h, first), enqueue(h, second)
    fault = "variant:sleep=10" if continuous else "variant:sleep=16:2"
    w = h.worker(fault=fault, job_time_limit=30, max_batch_rows=3, batch_jobs=1, continuous=continuous)
    failed, done = h.wait_finished(a, 180), h.wait_finished(b, 180)
    log = w.log_tail(10**7)
    if continuous:  # B joined A's batch and decoder
        assert f"job {b}: joins the batch of job {a}'s delivery" in log and joined_decoder(log, b), log[-3000:]
    else:
        assert f"batch: a step of 3 rows from jobs [{a}, {b}]" in log, log[-3000:]  # they did share a step
    assert failed.status == "failed" and "time limit" in failed.error and "worker.job_time_limit=30" in failed.error
    assert len(failed.variants) == 3, failed  # the first step's rows, stored before the limit
    # B lost only its rows of the interrupted step: the next step ran it again within B's own limit.
    assert done.status == "succeeded" and sorted(done.variants) == sorted(variants_of(second)), done
    assert done.attempts == 1 and h.counts(b, variants_of(second)) == (0, 0)


@RUNNERS
def test_poison_job_fails_alone_when_it_joins_a_batch(h, continuous):
    # A job delivered worker.max_attempts times already (10 under FAST) is poison: claimed into a batch,
    # it fails before any of its rows runs, and the jobs beside it run as if it had not been there.
    bodies = [job("Tell me about cats.", 4), job("Describe rain.", 4), job("Say hello.", 4)]
    ids = [enqueue(h, bodies[0]), enqueue(h, bodies[1], attempts=10), enqueue(h, bodies[2])]
    w = h.worker(continuous=continuous, **BATCHED)
    views = [h.wait_finished(i, 180) for i in ids]
    log = w.log_tail(10**7)
    assert f"job {ids[1]}: joins the batch" in log, log[-3000:]
    poisoned = views[1]
    assert poisoned.status == "failed" and poisoned.error.startswith("poison job: delivered 11 times"), poisoned
    assert poisoned.variants == [], poisoned
    if continuous:  # the others' rows joined the decoder, never the poison job's
        assert joined_decoder(log, ids[0]) and joined_decoder(log, ids[2]), log[-3000:]
        assert not joined_decoder(log, ids[1]) and "batch: a step of" not in log, log[-3000:]
    else:
        steps = [set(map(int, re.findall(r"\d+", m)))
                 for m in re.findall(r"batch: a step of \d+ rows from jobs (\[.*?\])", log)]
        assert steps and not any(ids[1] in step for step in steps), log[-3000:]
    for view, body in zip((views[0], views[2]), (bodies[0], bodies[2])):
        assert view.status == "succeeded" and sorted(view.variants) == sorted(variants_of(body)), view


def test_recovery_loop_sends_again_a_job_its_live_worker_no_longer_lists(h):
    # A batch that ended on an error it could not record leaves jobs running under a live worker; the
    # worker's heartbeat lists the jobs it holds, so the recovery loop can tell and send them again.
    from tests.fixtures.store import insert_job
    from worker.jobs.heartbeat import Heartbeat
    from worker.jobs.recovery import JobRecovery

    settings = h.settings(**{"worker.heartbeat_interval": 0.2, "worker.heartbeat_ttl": 5})
    beat = Heartbeat("batcher@host", ["smollm2-135m-instruct"], h.redis_url, h.namespace, interval=0.2, ttl=5,
                     worker_id="batcher@host:1:abc").start()
    try:
        held = insert_job(h.db_url, job("Held.", 4), lifecycle.JobStatus.running, worker=beat.worker_id, attempts=1)
        lost = insert_job(h.db_url, job("Lost.", 4), lifecycle.JobStatus.running, worker=beat.worker_id, attempts=1)
        beat.set_jobs([held])
        recovery = JobRecovery(settings, db_url=h.db_url, redis=None)
        deadline = time.monotonic() + 60
        while h.job(lost).status == "running":  # unlisted for two heartbeat intervals before it counts
            assert time.monotonic() < deadline, "the recovery loop never sent the unlisted job again"
            recovery.run_pass()
            time.sleep(0.1)
        lost_view, held_view = h.job(lost), h.job(held)
        assert lost_view.status == "queued" and "lost track of the job" in lost_view.error, lost_view
        assert (held_view.status, held_view.worker) == ("running", beat.worker_id)  # listed: left to its worker
    finally:
        beat.stop()
