"""Issue 9, reliability of the task body: only the owner finishes a job, every claimed job ends or is handed
back, and a time limit no `except Exception` can swallow.

In-process on the real model and PostgreSQL; faults are injected at fixed points of a job with the test-only
``INSTABOOST_TEST_FAULT`` hook (worker/jobs/faults.py), so nothing depends on machine speed.
"""

from __future__ import annotations

import pytest
from sqlalchemy import update

from shared.db import session_scope
from shared.settings import load_settings
from tests.fixtures.store import insert_job
from tests.fixtures.store import load_job as load
from shared.store.tables import Job, JobStatus

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
        "max_new_tokens": 4, "multipliers": [10], "layer_modes": ["all"]}
ME, OTHER = "old@host:1:aa", "new@host:2:bb"


def new_job(url: str, status: JobStatus = JobStatus.queued, worker: str | None = None, attempts: int = 0,
            **fields) -> int:
    return insert_job(url, {**TINY, **fields}, status, worker, attempts)


@pytest.fixture(params=[False, True], ids=["static", "continuous"])
def continuous(request) -> bool:
    """Every test here runs once per batch runner: the static one (worker.continuous: false) and the continuous one."""
    return request.param


@pytest.fixture
def run(pg_url, continuous):
    """Run one delivery of a job in this process as worker ME, as the Celery task does."""
    from worker.jobs.delivery import execute_job

    def go(job_id: int, **kw):
        # One row at a time: the boundaries these tests act at (shutdown, take-over) fall between variants.
        # Batched steps are tested in test_batching.py.
        kw.setdefault("settings", load_settings(overrides={"database.url": pg_url, "worker.max_batch_rows": 1,
                                                           "worker.continuous": continuous}))
        return execute_job(job_id, ME, db_url=pg_url, **kw)

    return go


def take_over(url: str, job_id: int) -> None:
    """What the recovery loop and another worker do to a job whose worker looked dead: it runs under OTHER now."""
    with session_scope(url) as s:
        s.execute(update(Job).where(Job.id == job_id).values(worker=OTHER, attempts=Job.attempts + 1))


@pytest.mark.slow
def test_taken_over_during_its_last_variant_the_old_worker_does_not_succeed_the_job(pg_url, run):
    job_id = new_job(pg_url)
    taken = []

    # Taken over once the first variant is stored (an event: the static runner asks before each step, the
    # continuous one at every decoding step); the last variant is decoding or waits for its slot then.
    def taken_over_during_last_variant() -> bool:
        if not taken and load(pg_url, job_id)[1]:
            take_over(pg_url, job_id)
            taken.append(1)
        return False

    assert run(job_id, should_stop=taken_over_during_last_variant) == "taken over"
    job, runs = load(pg_url, job_id)
    assert (job.status, job.worker) == (JobStatus.running, OTHER)  # its new owner finishes it
    # The last variant either stopped at its next token (the step's watch saw the take-over; its partial row is
    # dropped) or finished first and was stored: runs are unique, so the new owner skips it or makes it.
    assert [r.variant for r in runs] in (["original"], ["original", "all_x10"])


@pytest.mark.slow
def test_taken_over_worker_whose_variant_fails_does_not_fail_the_job(pg_url, run, fault):
    job_id = new_job(pg_url)
    taken = []

    # Taken over after the runner's first read of its jobs' states and before its first step, which then raises
    # (both runners ask should_stop right after that read; the continuous step's seam fires while rows wait).
    def taken_over_before_the_first_step() -> bool:
        if not taken:
            take_over(pg_url, job_id)
            fault("variant:error:1")
            taken.append(1)
        return False

    assert run(job_id, should_stop=taken_over_before_the_first_step) == "taken over"
    job, _ = load(pg_url, job_id)
    assert (job.status, job.worker, job.error) == (JobStatus.running, OTHER, None)


# -- every claimed job ends or is handed back -------------------------------------------------------------

@pytest.mark.slow
def test_database_error_while_recording_a_failure_still_ends_the_job(pg_url, run, fault):
    # The variant raises; recording that failure then hits a database error that is not "unreachable"
    # (it escaped from the except clause and left the job running under a live worker).
    fault("variant:error:1,fail:db_error:1")
    job_id = new_job(pg_url)
    assert run(job_id) == "failed"
    job, _ = load(pg_url, job_id)
    assert job.status is JobStatus.failed and "RuntimeError: injected error at variant" in job.error
    assert job.worker == ME and job.finished_at is not None


@pytest.mark.slow
def test_a_failure_that_cannot_be_recorded_hands_the_job_back(pg_url, run, fault):
    fault("variant:error:1,fail:db_error")  # every attempt to record the failure fails
    job_id = new_job(pg_url)
    assert run(job_id) == "queued"
    job, _ = load(pg_url, job_id)
    # Back in the queue for the recovery loop's outbox (enqueued_at NULL), the delivery counted towards poison.
    assert job.status is JobStatus.queued and job.enqueued_at is None and job.attempts == 1
    fault("")
    assert run(job_id) == "succeeded"


@pytest.mark.slow
def test_an_error_raised_inside_the_poison_handler_still_ends_the_job(pg_url, run, fault):
    fault("fail:db_error:1")
    job_id = new_job(pg_url, status=JobStatus.running, worker="dead@host:0:00", attempts=3)
    assert run(job_id) == "failed"
    job, _ = load(pg_url, job_id)
    assert job.status is JobStatus.failed and "ProgrammingError" in job.error


# -- a time limit no `except Exception` can swallow -------------------------------------------------------

@pytest.mark.slow
def test_time_limit_is_not_swallowed_by_except_exception(pg_url, run, fault, continuous):
    # The job spins in Python code that catches every Exception (as a broad `except` in a template
    # fallback or a library would): the soft limit must still end it, in this process.
    fault("variant:hang_py:1")
    settings = load_settings(overrides={"database.url": pg_url, "worker.job_time_limit": 3,
                                        "worker.visibility_timeout": 10, "worker.continuous": continuous})
    job_id = new_job(pg_url)
    assert run(job_id, settings=settings) == "failed"
    job, runs = load(pg_url, job_id)
    assert "time limit" in job.error and "worker.job_time_limit=3" in job.error and runs == []
