"""The Celery task ``instaboost.run_job``: generate a job's variants, storing each run as it finishes.

The message carries only the job id; the job row is the source of truth. A redelivered job resumes
where it stopped (variants already stored are skipped), a cancel is honoured at the next variant
boundary, and a job delivered more than ``worker.max_attempts`` times is failed as poison.
"""

from __future__ import annotations

import logging
import signal
import threading
from contextlib import contextmanager
from typing import Any, Callable, Mapping

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy import select, update

from shared import jobs
from shared.celery_config import TASK_NAME, soft_time_limit
from shared.db import session_scope
from shared.errors import Conflict, InstaBoostError
from shared.models import Job, JobStatus, Run
from shared.schemas import JobRequest, Variant

log = logging.getLogger("instaboost.worker")


class ShutdownRequested(Exception):
    """The worker is stopping: hand the job back to the queue at a variant boundary."""


@contextmanager
def time_limit(seconds: int):
    """Raise SoftTimeLimitExceeded in this thread after seconds (main thread only; else Celery's limits apply)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise SoftTimeLimitExceeded(f"job ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fail(db_url: str | None, job_id: int, message: str) -> str:
    # A fresh session: the one that raised may be mid-transaction or interrupted by the alarm.
    with session_scope(db_url) as session:
        try:
            jobs.mark_failed(session, job_id, message)
        except Conflict:  # finished or cancelled meanwhile; nothing left to record
            session.rollback()
            return jobs.job_status(session, job_id).value
    return JobStatus.failed.value


def _heads(request: JobRequest, variant: Variant, engine) -> Any:
    if variant.is_original:
        return None
    if request.head_boost_percentage >= 100:
        return "all"
    return request.boost_spec(variant).resolve_heads(engine.n_layers, engine.n_heads)


def _run_variants(session, job: Job, db_url: str | None, should_stop: Callable[[], bool]) -> str:
    from worker.engine import get_engine

    request = JobRequest.from_params(job.params)
    variants = request.variants()
    done = set(session.scalars(select(Run.variant).where(Run.job_id == job.id)))
    jobs.mark_progress(session, job.id, len(done & {v.name for v in variants}), len(variants))
    engine = get_engine(job.model, request.engine)
    for variant in variants:
        if variant.name in done:
            continue  # stored by an earlier delivery
        if jobs.cancel_requested(session, job.id):
            return _finish_cancel(session, job.id)
        if should_stop():
            raise ShutdownRequested()
        [result] = engine.generate([request.generation_request(variant)], attention=True)
        jobs.record_run(session, job.id, variant.name, multiplier=variant.multiplier,
                        layers="none" if variant.is_original else variant.layer_mode,
                        heads=_heads(request, variant, engine), output_text=result.text,
                        prompt_tokens=result.prompt_tokens, output_tokens=result.output_tokens,
                        seconds=result.seconds, attention_mass=result.attention_mass)
        log.info("job %s: variant %s done (%d tokens)", job.id, variant.name, result.output_tokens)
    # A cancel that arrives after the last variant loses: the job is complete (cancelling -> succeeded).
    jobs.mark_succeeded(session, job.id)
    return JobStatus.succeeded.value


def _finish_cancel(session, job_id: int) -> str:
    try:
        jobs.finish_cancel(session, job_id)
    except Conflict:
        session.rollback()
    return jobs.job_status(session, job_id).value


def execute_job(job_id: int, worker_name: str = "inline", *, settings: Mapping[str, Any] | None = None,
                db_url: str | None = None, should_stop: Callable[[], bool] = lambda: False) -> str:
    """Run one delivery of a job and return the status it ended in (or "skipped")."""
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    max_attempts = int(settings["worker.max_attempts"])
    limit = int(settings["worker.job_time_limit"])
    soft = soft_time_limit(limit)
    with session_scope(db_url) as session:
        job = jobs.mark_running(session, job_id, worker_name)
        if job is None:
            log.info("job %s: skipped (missing, cancelled or finished)", job_id)
            return "skipped"
        if job.attempts > max_attempts:
            return _fail(db_url, job_id,
                         f"poison job: delivered {job.attempts} times but never finished (the worker died or "
                         f"was killed each time; worker.max_attempts={max_attempts}). Check the worker logs, "
                         "e.g. for running out of memory, then resubmit with fewer variants or tokens.")
        try:
            with time_limit(soft):
                return _run_variants(session, job, db_url, should_stop)
        except ShutdownRequested:
            session.rollback()
            # Not the job's fault: give this delivery back so it does not count towards poison.
            jobs.requeue(session, job_id)
            session.execute(update(Job).where(Job.id == job_id).values(attempts=Job.attempts - 1)
                            .execution_options(synchronize_session=False))
            session.commit()
            raise
        except SoftTimeLimitExceeded:
            session.rollback()
            return _fail(db_url, job_id,
                         f"time limit: the job ran longer than {soft} s (worker.job_time_limit={limit} s); "
                         "the variants finished before it are kept. Ask for fewer variants or max_new_tokens.")
        except InstaBoostError as exc:
            session.rollback()
            return _fail(db_url, job_id, exc.message)
        except Exception as exc:
            session.rollback()
            log.exception("job %s failed", job_id)
            return _fail(db_url, job_id, f"internal error in the worker: {type(exc).__name__}: {exc}")


@shared_task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int) -> str:
    """Run the job with this id (delivered at least once; safe to run again)."""
    from celery.worker import state

    def stopping() -> bool:
        # EX_OK is 0, so test against the unset values rather than truthiness.
        return state.should_stop not in (None, False) or state.should_terminate not in (None, False)

    try:
        return execute_job(int(job_id), self.request.hostname or "worker", should_stop=stopping)
    except ShutdownRequested:
        log.info("job %s: worker stopping; job handed back to the queue", job_id)
        raise Reject("worker shutting down", requeue=True) from None
