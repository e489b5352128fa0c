"""How a claimed job ends: the worker's exceptions, database retries, and the writes that end or hand back a job.

Every claimed job ends (succeeded, failed, cancelled) or is handed back (queued again), whatever escapes
after the claim (``settle``); every final write names this worker, so a worker whose job was taken over
changes nothing. Database writes are retried with backoff (``with_db_retry``) for ``worker.db_retry_seconds``
while the database is unreachable. The status changes themselves are ``shared.store.lifecycle``'s.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_before_delay, wait_exponential

from shared.db import session_scope
from shared.errors import Conflict, JobErrorCode
from shared.store import lifecycle
from shared.store.tables import FINAL, Job, JobStatus, Run
from worker.jobs import faults

log = logging.getLogger("instaboost.worker")

TAKEN_OVER = "taken over"  # the job is another worker's now: its new owner decides how it ends


class JobTimeLimit(BaseException):
    """The job ran past its soft time limit.

    A BaseException, like KeyboardInterrupt: the alarm may go off anywhere in the job, and an
    ``except Exception`` on the way (a chat-template fallback, a library's retry) must not swallow it.
    """


class ShutdownRequested(Exception):
    """The worker is stopping: hand the jobs back to the queue between two rounds."""


class DatabaseUnavailable(Exception):
    """The database stayed unreachable for worker.db_retry_seconds: hand the job back to the queue."""


def _unreachable(exc: BaseException) -> bool:
    # OperationalError / InterfaceError: connection refused, dropped or closed; a statement error is not retried.
    return isinstance(exc, DBAPIError) and (isinstance(exc, (OperationalError, InterfaceError))
                                            or bool(getattr(exc, "connection_invalidated", False)))


def with_db_retry(session, fn: Callable, *args, budget: float = 60.0, **kw):
    """Call fn(session, *args, **kw), retrying with backoff while the database is unreachable.

    Safe because every write here is idempotent (conditional UPDATEs, runs unique per variant): a
    commit whose answer was lost is simply done again. Gives up with DatabaseUnavailable after budget s.
    """
    def drop_connection(state: RetryCallState) -> None:
        try:
            session.rollback()  # drops the dead connection; the pool's pre-ping replaces it
        except Exception:
            session.close()

    def announce(state: RetryCallState) -> None:
        log.warning("database unreachable (%s); retrying in %.2f s",
                    type(state.outcome.exception()).__name__, state.upcoming_sleep)

    def give_up(state: RetryCallState):
        name = type(state.outcome.exception()).__name__
        raise DatabaseUnavailable(f"database unreachable for {budget:.0f} s ({name})") from None

    retrying = Retrying(retry=retry_if_exception(_unreachable), wait=wait_exponential(multiplier=0.25, max=5.0),
                        stop=stop_before_delay(budget), after=drop_connection, before_sleep=announce,
                        retry_error_callback=give_up)
    return retrying(fn, session, *args, **kw)


def status_for(session, job_id: int, worker: str | None) -> str:
    """Return how the job stands for worker: its status, "taken over" (another worker's now) or "skipped" (gone)."""
    row = session.execute(select(Job.status, Job.worker).where(Job.id == job_id)).one_or_none()
    session.commit()
    if row is None:
        return "skipped"
    if worker is not None and row.status not in FINAL and row.worker != worker:
        return TAKEN_OVER
    return row.status.value


def stored_variants(session, job_id: int) -> set[str]:
    """Return the names of the job's runs already stored (by this delivery or an earlier one)."""
    done = set(session.scalars(select(Run.variant).where(Run.job_id == job_id)))
    session.commit()
    return done


def end_read(session) -> None:
    """End the read that closes lifecycle.record_run (retried like a write: it talks to the server too)."""
    # A bare commit here once failed a job during a database outage.
    session.commit()


def fail(db_url: str | None, job_id: int, message: str, budget: float = 60.0, worker: str | None = None,
         code: str | None = None) -> str:
    """Fail the job with message and code (only while the row names worker, when given); return its status then.

    Returns "taken over" when the job is another worker's now: its new owner decides how it ends.
    """
    # A fresh session: the one that raised may be mid-transaction or interrupted by the alarm.
    def write(session) -> str:
        try:
            faults.inject(faults.RECORD_FAILURE, session)
            lifecycle.mark_failed(session, job_id, message, worker=worker, code=code)
        except Conflict:  # finished, cancelled or taken over meanwhile; nothing left to record
            session.rollback()
            return status_for(session, job_id, worker)
        return JobStatus.failed.value

    with session_scope(db_url) as session:
        return with_db_retry(session, write, budget=budget)


def store_runs(session, member, triples, engine, worker: str | None, budget: float, *,
               stored: Callable[[object], None], last: Callable[[], bool]) -> str | None:
    """Store a job's (row, result, score) runs in order, succeed it after its last, then end their streams."""
    kind, ends = member.kind, []
    for row, result, score in triples:
        faults.inject(faults.STORE, session)
        with_db_retry(session, kind.record, member.job_id, row, result, score, engine, budget=budget)
        with_db_retry(session, end_read, budget=budget)
        stored(row)
        ends.append((row, result))
        log.info("job %s: variant %s done (%d tokens)", member.job_id, kind.name(row), result.output_tokens)
    # A cancel that arrives after the last variant loses: the job is complete.
    status = with_db_retry(session, succeed, member.job_id, worker, budget=budget) if last() else None
    if member.publish is not None:  # once stored (and the job's success): a reader right after the stream sees it
        for row, result in ends:
            member.publish(kind.end_event(row, result))
    return status


def succeed(session, job_id: int, worker: str | None = None) -> str:
    """Finish the job as succeeded (only while the row names worker); return the status it is in."""
    try:
        lifecycle.mark_succeeded(session, job_id, worker=worker)
    except Conflict:  # another delivery finished it first, or it was taken over: its new owner ends it
        session.rollback()
        return status_for(session, job_id, worker)
    return JobStatus.succeeded.value


def finish_cancel(session, job_id: int, worker: str | None = None, budget: float = 60.0) -> str:
    """Finish a cancelling job as cancelled (only while the row names worker); return the status it is in."""
    def finish(session) -> str:
        try:
            faults.inject(faults.FINISH_CANCEL, session)
            lifecycle.finish_cancel(session, job_id, worker=worker)
        except Conflict:
            session.rollback()
        return status_for(session, job_id, worker)

    return with_db_retry(session, finish, budget=budget)


def give_back(session, job_id: int, worker: str) -> None:
    """Put the delivered job back to queued without counting this delivery (its message goes back too)."""
    # Not the job's fault: give this delivery back so it does not count towards poison.
    lifecycle.transition(session, job_id, JobStatus.queued, expect={"worker": worker}, attempts=Job.attempts - 1)
    session.commit()


def hand_back(db_url: str | None, job_id: int, worker: str, budget: float, fault: bool) -> str:
    """Put a job this worker cannot finish back to queued for the recovery loop to send again (its outbox).

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
                # enqueued_at NULL: the recovery loop's outbox sends it again (this delivery's message is done).
                lifecycle.transition(session, job_id, JobStatus.queued, expect={"worker": worker}, enqueued_at=None,
                                     **extra)
                session.commit()
        except Conflict:
            session.rollback()
        return status_for(session, job_id, worker)

    with session_scope(db_url) as session:
        return with_db_retry(session, back, budget=budget)


def poison_message(attempts: int, max_attempts: int) -> str:
    """Return the error of a job failed as poison after attempts deliveries."""
    return (f"poison job: delivered {attempts} times but never finished (the worker died or was killed each "
            f"time; worker.max_attempts={max_attempts}). Check the worker logs, e.g. for running out of memory, "
            "then resubmit with fewer variants or tokens.")


def timeout_message(soft: float, limit: float) -> str:
    """Return the error of a job that ran past its soft time limit."""
    return (f"time limit: the job ran longer than {soft} s (worker.job_time_limit={limit} s); "
            "the variants finished before it are kept. Ask for fewer variants or max_new_tokens.")


def stuck_message(past: float, limit: float) -> str:
    """Return the error of a job whose worker process was ended past its hard time limit."""
    return (f"time limit: the job was still running {past:.0f} s after it started and did not stop at its limit "
            f"(worker.job_time_limit={limit} s; stuck in native code?), so its worker process was ended; the "
            "variants finished before it are kept. Ask for fewer variants or max_new_tokens.")


def internal_error(exc: BaseException) -> str:
    """Return the stored error of a job that an unexpected exception of the worker failed."""
    return f"internal error in the worker: {type(exc).__name__}: {exc}"


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


def settle(db_url: str | None, job_id: int, worker: str, exc: BaseException, budget: float,
           hard_exit: Callable[[str], None] | None) -> str:
    """End or hand back a claimed job after exc escaped its delivery (even from an error handler).

    An Exception fails the job (with a shorter message if the first cannot be stored); a BaseException
    (a cold shutdown, Ctrl-C) hands it back. If neither can be recorded while the database answers, the
    worker process ends (hard_exit) so the recovery loop recovers the job; without hard_exit the error propagates.
    """
    code = JobErrorCode.worker_error
    if isinstance(exc, JobTimeLimit):  # went off outside the usual handler: still the job's time limit
        exc, code = RuntimeError(f"time limit: {exc}"), JobErrorCode.time_limit
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
                return fail(db_url, job_id, message, budget, worker=worker, code=code)
            except DatabaseUnavailable:
                raise
            except Exception as again:
                log.error("job %s: could not record the failure (%s: %s)", job_id, type(again).__name__, again)
    try:
        return hand_back(db_url, job_id, worker, budget, fault=isinstance(exc, Exception))
    except DatabaseUnavailable:
        raise
    except Exception as again:
        reason = f"job {job_id}: cannot record its end nor hand it back ({type(again).__name__}: {again})"
        if hard_exit is None:
            raise
        hard_exit(reason)  # the recovery loop sees this worker gone and sends the job again
        raise
