"""The Celery task ``instaboost.run_job``: claim the delivered job and run it (``worker.jobs.batch``).

The message carries only the job id; the job row is the source of truth. A redelivered job resumes
where it stopped (variants already stored are skipped), a job delivered more than ``worker.max_attempts``
times is failed as poison, and a delivery of a job that another live worker runs (or holds in its batch)
is skipped. The batch runner takes other queued jobs of the model in, stops a cancelled or taken-over
job's rows at the next token, and ends every job it holds, so one job never runs twice at once.
Database writes are retried with backoff for ``worker.db_retry_seconds`` when the database is unreachable.

Every claimed job ends (succeeded, failed, cancelled) or is handed back (queued again), whatever escapes
after the claim; every final write names this worker, so a worker whose job was taken over changes nothing.
The time limit is a soft one (``JobTimeLimit``, which ``except Exception`` cannot swallow) backed by a hard
one (``worker.jobs.watchdog``) that ends a worker process stuck in native code.
"""

from __future__ import annotations

import functools
import json
import logging
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Callable, Mapping

from celery import shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from shared.celery_config import TASK_NAME, model_queue
from shared.db import session_scope
from shared.errors import Conflict
from shared.schemas import JobRequest, Variant
from shared.store import lifecycle
from shared.store.tables import FINAL, Job, JobStatus, Run
from shared.workers import redis_client, stream_key, waiting_job_ids, worker_runs
from worker.jobs import faults, identity
from worker.jobs.watchdog import end_process

log = logging.getLogger("instaboost.worker")


class JobTimeLimit(BaseException):
    """The job ran past its soft time limit.

    A BaseException, like KeyboardInterrupt: the alarm may go off anywhere in the job, and an
    ``except Exception`` on the way (a chat-template fallback, a library's retry) must not swallow it.
    """


class ShutdownRequested(Exception):
    """The worker is stopping: hand the jobs back to the queue between two batch steps."""


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for worker.db_retry_seconds: hand the job back to the queue."""


def _unreachable(exc: BaseException) -> bool:
    # OperationalError / InterfaceError: connection refused, dropped or closed; a statement error is not retried.
    from sqlalchemy.exc import InterfaceError, OperationalError

    return isinstance(exc, (OperationalError, InterfaceError)) or bool(getattr(exc, "connection_invalidated", False))


def with_db_retry(session, fn: Callable, *args, budget: float = 60.0, **kw):
    """Call fn(session, *args, **kw), retrying with backoff while the database is unreachable.

    Safe because every write here is idempotent (conditional UPDATEs, runs unique per variant): a
    commit whose answer was lost is simply done again. Gives up with DatabaseUnavailable after budget s.
    """
    deadline = time.monotonic() + budget
    delay = 0.25
    while True:
        try:
            return fn(session, *args, **kw)
        except DBAPIError as exc:
            if not _unreachable(exc):
                raise
            try:
                session.rollback()  # drops the dead connection; the pool's pre-ping replaces it
            except Exception:
                session.close()
            if time.monotonic() + delay > deadline:
                raise DatabaseUnavailable(f"database unreachable for {budget:.0f} s ({type(exc).__name__})") from None
            log.warning("database unreachable (%s); retrying in %.2f s", type(exc).__name__, delay)
            time.sleep(delay)
            delay = min(delay * 2, 5.0)


@contextmanager
def time_limit(seconds: float):
    """Raise JobTimeLimit in this thread after seconds (main thread only; else Celery's limits apply)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise JobTimeLimit(f"job ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _fail(db_url: str | None, job_id: int, message: str, budget: float = 60.0, worker: str | None = None) -> str:
    """Fail the job (only while the row names worker, when given); return the status it ended in.

    Returns "taken over" when the job is another worker's now: its new owner decides how it ends.
    """
    # A fresh session: the one that raised may be mid-transaction or interrupted by the alarm.
    def fail(session) -> str:
        try:
            faults.inject("fail", session)
            lifecycle.mark_failed(session, job_id, message, worker=worker)
        except Conflict:  # finished, cancelled or taken over meanwhile; nothing left to record
            session.rollback()
            return _status_for(session, job_id, worker)
        return JobStatus.failed.value

    with session_scope(db_url) as session:
        return with_db_retry(session, fail, budget=budget)


def _status_for(session, job_id: int, worker: str | None) -> str:
    row = session.execute(select(Job.status, Job.worker).where(Job.id == job_id)).one_or_none()
    session.commit()
    if row is None:
        return "skipped"
    if worker is not None and row.status not in FINAL and row.worker != worker:
        return "taken over"
    return row.status.value


def _heads(request: JobRequest, variant: Variant, engine) -> Any:
    if variant.is_original:
        return None
    if request.head_boost_percentage >= 100:
        return "all"
    return request.boost_spec(variant).resolve_heads(engine.n_layers, engine.n_heads)


def _stored_variants(session, job_id: int) -> set[str]:
    done = set(session.scalars(select(Run.variant).where(Run.job_id == job_id)))
    session.commit()
    return done


def _end_read(session) -> None:
    # record_run's last step is a read; ending its transaction talks to the server too, so it is retried
    # like any write (a bare commit here once failed a job during a database outage).
    session.commit()


def _score(engine, jobs: list[JobRequest], gen_requests, results, settings: Mapping[str, Any]) -> list[dict | None]:
    """Score rows' outputs (worker.scoring), row i being a variant of jobs[i]; they share perplexity and judge.

    One perplexity pass serves every row, whichever job it comes from. A scorer's failure is logged and
    stored with the rows, never fails a job.
    """
    from worker.scoring import judge_config, score_results

    first = jobs[0]
    try:
        judge = judge_config(settings) if first.judge else None
        scores = score_results(engine, gen_requests, results, cases=[j.case() for j in jobs],
                               perplexity=first.score_perplexity, judge=judge,
                               copy_words=int(settings.get("scoring.copy_words", 6)))
        if first.judge and judge is None:
            for s in scores:
                s["judge_reason"] = "no judge configured on this worker (judge.url is empty)"
        return scores
    except (SoftTimeLimitExceeded, ShutdownRequested):
        raise
    except Exception as exc:
        log.exception("job: scoring failed")
        return [{"score_error": f"{type(exc).__name__}: {exc}"[:500]} for _ in results]


STREAM_TTL = 3600  # seconds a job's stream events are kept after the last one


def _publisher(job: Job, attempt: int) -> Callable[[dict], None] | None:
    """Return a function that appends an event to the job's stream list, or None when the job does not stream."""
    if not job.params.get("stream"):
        return None
    from shared.settings import get_settings

    s = get_settings()
    redis, key = _redis(s["redis.url"]), stream_key(s["redis.namespace"], job.id)

    def publish(event: dict) -> None:
        try:
            pipe = redis.pipeline()
            pipe.rpush(key, json.dumps({**event, "attempt": attempt}))
            pipe.expire(key, STREAM_TTL)
            pipe.execute()
        except Exception as exc:  # streaming is best effort: the stored result is the answer
            log.warning("job %s: could not publish a stream event (%s)", job.id, type(exc).__name__)

    return publish


def _succeed(session, job_id: int, worker: str | None = None) -> str:
    try:
        lifecycle.mark_succeeded(session, job_id, worker=worker)
    except Conflict:  # another delivery finished it first, or it was taken over: its new owner ends it
        session.rollback()
        return _status_for(session, job_id, worker)
    return JobStatus.succeeded.value


def _finish_cancel(session, job_id: int, worker: str | None = None, budget: float = 60.0) -> str:
    def finish(session) -> str:
        try:
            faults.inject("cancel", session)
            lifecycle.finish_cancel(session, job_id, worker=worker)
        except Conflict:
            session.rollback()
        return _status_for(session, job_id, worker)

    return with_db_retry(session, finish, budget=budget)


def _give_back(session, job_id: int, worker: str) -> None:
    # Not the job's fault: give this delivery back so it does not count towards poison.
    lifecycle.transition(session, job_id, JobStatus.queued, expect={"worker": worker}, attempts=Job.attempts - 1)
    session.commit()


def _hand_back(db_url: str | None, job_id: int, worker: str, budget: float, fault: bool) -> str:
    """Put a job this worker cannot finish back to queued for the sweeper to send again (its outbox).

    fault: the delivery counts as an attempt (poison handling applies); else it is given back.
    A cancelling job is finished as cancelled instead. Returns the status the job is in.
    """
    def back(session) -> str:
        status = lifecycle.job_status(session, job_id)
        try:
            if status is JobStatus.cancelling:
                lifecycle.finish_cancel(session, job_id, worker=worker)
            else:
                extra = {} if fault else {"attempts": Job.attempts - 1}
                # enqueued_at NULL: the sweeper's outbox sends it again (this delivery's message is done).
                lifecycle.transition(session, job_id, JobStatus.queued, expect={"worker": worker}, enqueued_at=None,
                                     **extra)
                session.commit()
        except Conflict:
            session.rollback()
        return _status_for(session, job_id, worker)

    with session_scope(db_url) as session:
        return with_db_retry(session, back, budget=budget)


def poison_message(attempts: int, max_attempts: int) -> str:
    """Return the error of a job failed as poison after attempts deliveries."""
    return (f"poison job: delivered {attempts} times but never finished (the worker died or was killed each "
            f"time; worker.max_attempts={max_attempts}). Check the worker logs, e.g. for running out of memory, "
            "then resubmit with fewer variants or tokens.")


def _line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def _root(exc: BaseException) -> BaseException:
    """Return the first error of exc's chain (the one being handled when the rest were raised)."""
    seen = {id(exc)}
    while exc.__context__ is not None and id(exc.__context__) not in seen:
        exc = exc.__context__
        seen.add(id(exc))
    return exc


def _settle(db_url: str | None, job_id: int, worker: str, exc: BaseException, budget: float,
            hard_exit: Callable[[str], None] | None) -> str:
    """End or hand back a claimed job after exc escaped its delivery (even from an error handler).

    An Exception fails the job (with a shorter message if the first cannot be stored); a BaseException
    (a cold shutdown, Ctrl-C) hands it back. If neither can be recorded while the database answers, the
    worker process ends (hard_exit) so the sweeper recovers the job; without hard_exit the error propagates.
    """
    if isinstance(exc, JobTimeLimit):  # went off outside the usual handler: still the job's time limit
        exc = RuntimeError(f"time limit: {exc}")
    if isinstance(exc, Exception):
        log.error("job %s: %s escaped after the claim; failing the job", job_id, type(exc).__name__, exc_info=exc)
        first = f"internal error in the worker: {type(exc).__name__}: {_line(exc)}"
        cause = _root(exc)
        if cause is not exc and isinstance(cause, Exception) and not isinstance(cause, ShutdownRequested):
            # Raised while handling another error (recording a failure, say): name that one first.
            first = (f"internal error in the worker: {type(cause).__name__}: {_line(cause)} (then, while "
                     f"handling it: {type(exc).__name__}: {_line(exc)})")
        for message in (first, f"internal error in the worker ({type(exc).__name__}); see the worker log"):
            try:
                return _fail(db_url, job_id, message, budget, worker=worker)
            except DatabaseUnavailable:
                raise
            except Exception as again:
                log.error("job %s: could not record the failure (%s: %s)", job_id, type(again).__name__, again)
    try:
        return _hand_back(db_url, job_id, worker, budget, fault=isinstance(exc, Exception))
    except DatabaseUnavailable:
        raise
    except Exception as again:
        reason = f"job {job_id}: cannot record its end nor hand it back ({type(again).__name__}: {again})"
        if hard_exit is None:
            raise
        hard_exit(reason)  # the sweeper sees this worker gone and sends the job again
        raise


def execute_job(job_id: int, worker_name: str = "inline", *, settings: Mapping[str, Any] | None = None,
                db_url: str | None = None, should_stop: Callable[[], bool] = lambda: False,
                is_alive: Callable[[str], bool] | None = None,
                hard_exit: Callable[[str], None] | None = None,
                sender: Callable[[int, str], None] | None = None,
                candidates: Callable[[str], set[int]] | None = None,
                advertise: Callable[[list[int]], None] | None = None) -> str:
    """Run one delivery of a job and return the status it ended in (or "skipped", "taken over", "queued").

    is_alive (worker id -> bool) lets a delivery of a job that a live worker runs be skipped.
    hard_exit(reason) ends this process: given (by the Celery task), a watchdog calls it when the job is
    still running past its hard limit plus a grace (native code that never sees the soft limit's alarm).
    candidates (model -> ids of jobs whose messages wait in this worker's queue) lets the delivery take
    those jobs into its batch (worker.batch_jobs); advertise(ids) publishes the jobs it holds.
    A job of a sweep that ended moves its sweep on (shared.store.sweeps.advance), sending new jobs through sender.
    When a job is a line of an OpenAI batch and it ended, the batch is moved on (finalized once its last
    job ends). Both happen as each job of the batch ends.
    """
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    ended: set[int] = set()

    def on_end(jid: int, status: str) -> None:
        ended.add(jid)
        _job_ended(db_url, jid, status, settings, sender)

    status = _execute_job(job_id, worker_name, settings=settings, db_url=db_url, should_stop=should_stop,
                          is_alive=is_alive, hard_exit=hard_exit, candidates=candidates, advertise=advertise,
                          on_end=on_end)
    if job_id not in ended:
        _job_ended(db_url, job_id, status, settings, sender)
    return status


def _job_ended(db_url: str | None, job_id: int, status: str, settings: Mapping[str, Any], sender) -> None:
    """Move on what waits for the job: its OpenAI batch, its calibration sweep."""
    if status in (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value):
        _batch_hook(db_url, job_id)
    if status in (JobStatus.succeeded.value, JobStatus.failed.value, JobStatus.cancelled.value, "skipped"):
        _advance_sweep(job_id, settings, db_url, sender)


def _batch_hook(db_url: str | None, job_id: int) -> None:
    from shared.store import batches

    try:
        with session_scope(db_url) as session:
            batch_id = session.scalar(select(Job.batch_id).where(Job.id == job_id))
            session.commit()
            if batch_id:
                batches.refresh_batch(session, batch_id)
    except Exception as exc:  # the sweeper and the web's reads finalize it later
        log.warning("job %s: could not move its batch on (%s: %s)", job_id, type(exc).__name__, exc)


def _advance_sweep(job_id: int, settings: Mapping[str, Any], db_url: str | None, sender) -> None:
    """Advance the job's sweep, if it has one; a failure is logged (the sweeper advances it on its next pass)."""
    from shared.store import sweeps

    try:
        with session_scope(db_url) as session:
            sweep_id = session.execute(select(Job.sweep_id).where(Job.id == job_id)).scalar_one_or_none()
            session.commit()
            if sweep_id is not None:
                sweeps.advance(session, sweep_id, settings, sender)
    except Exception as exc:
        log.warning("job %s: could not advance its sweep (%s: %s); the sweeper will", job_id, type(exc).__name__, exc)


def _execute_job(job_id: int, worker_name: str, *, settings: Mapping[str, Any], db_url: str | None,
                 should_stop: Callable[[], bool], is_alive: Callable[[str], bool] | None,
                 hard_exit: Callable[[str], None] | None = None,
                 candidates: Callable[[str], set[int]] | None = None,
                 advertise: Callable[[list[int]], None] | None = None,
                 on_end: Callable[[int, str], None] | None = None) -> str:
    budget = float(settings["worker.db_retry_seconds"])
    with session_scope(db_url) as session:
        job = with_db_retry(session, lifecycle.mark_running, job_id, worker_name, is_alive, budget=budget)
    if job is None:
        log.info("job %s: skipped (missing, cancelled, finished or running on another live worker)", job_id)
        return "skipped"
    # Claimed: from here on, every way out ends the job or hands it back (see _settle).
    try:
        # A poison job (more deliveries than worker.max_attempts) is failed by the runner's _admit, like a
        # job its batch takes in.
        return _deliver(job, worker_name, settings, db_url, should_stop, hard_exit, candidates, advertise, on_end)
    except (ShutdownRequested, DatabaseUnavailable):
        raise  # handed back already, or the message goes back to the queue
    except BaseException as exc:
        status = _settle(db_url, job_id, worker_name, exc, budget, hard_exit)
        if not isinstance(exc, (Exception, JobTimeLimit)):
            raise  # a shutdown: the job is handed back; let the worker stop
        return status


def _deliver(job: Job, worker_name: str, settings: Mapping[str, Any], db_url: str | None,
             should_stop: Callable[[], bool], hard_exit: Callable[[str], None] | None,
             candidates: Callable[[str], set[int]] | None, advertise: Callable[[list[int]], None] | None,
             on_end: Callable[[int, str], None] | None) -> str:
    """Run the claimed job, with the jobs its batch takes in (worker.jobs.batch); return the job's status."""
    from worker.jobs.batch import BatchRunner, Options

    opts = Options(worker=worker_name, settings=settings, db_url=db_url, should_stop=should_stop,
                   hard_exit=hard_exit, candidates=candidates, advertise=advertise, on_end=on_end)
    return BatchRunner(job, opts).run()


@shared_task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int) -> str:
    """Run the job with this id (delivered at least once; safe to run again)."""
    from celery.worker import state

    def stopping() -> bool:
        # A warm shutdown sets should_stop to its exit code, EX_OK == 0: only None / False mean "not asked".
        # (`0 not in (None, False)` is False, since 0 == False: a SIGTERM went unnoticed until the job ended.)
        return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))

    from shared.settings import get_settings
    from worker.jobs.heartbeat import current_heartbeat, current_worker_id

    settings = get_settings()
    redis = _redis(settings["redis.url"])
    namespace = settings["redis.namespace"]
    job_id = int(job_id)
    identity.refuse_foreign(self.request, job_id, settings)  # a job id of another database: never run it here

    def busy(worker: str) -> bool:
        # Another process claimed it: leave it alone while that process lives and still runs it.
        try:
            return worker_runs(redis, worker, job_id, namespace)
        except Exception:  # cannot tell: leave the job to its worker; the sweeper decides once Redis answers
            return True

    def waiting(model: str) -> set[int]:
        # The next messages of the model's queue: jobs this worker would be sent anyway (this deployment's).
        rows = int(settings["worker.max_batch_rows"])
        return waiting_job_ids(redis, model_queue(model), namespace, oldest=4 * rows)

    beat = current_heartbeat()
    if beat is not None:
        beat.set_job(job_id)  # before claiming, so a duplicate delivery elsewhere sees it at once
    try:
        from shared.store.sweeps import celery_sender

        return execute_job(job_id, current_worker_id() or self.request.hostname or "worker",
                           settings=settings, should_stop=stopping, is_alive=busy, hard_exit=end_process,
                           sender=celery_sender(self.app), candidates=waiting,
                           advertise=None if beat is None else beat.set_jobs)
    except ShutdownRequested:
        log.info("job %s: worker stopping; job handed back to the queue", job_id)
        raise Reject("worker shutting down", requeue=True) from None
    except DatabaseUnavailable as exc:
        log.error("job %s: %s; message handed back to the queue", job_id, exc)
        raise Reject(str(exc), requeue=True) from None
    finally:
        if beat is not None:
            beat.set_job(None)  # a redelivery of this job may now be claimed by any worker, this one included


@functools.cache
def _redis(url: str):
    return redis_client(url)
