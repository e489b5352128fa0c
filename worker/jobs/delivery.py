"""One delivery of a job: claim it, run it with the jobs its batch takes in, end it whatever escapes, follow up.

The message carries only the job id; the job row is the source of truth. A redelivered job resumes
where it stopped (variants already stored are skipped), a job delivered more than ``worker.max_attempts``
times is failed as poison, and a delivery of a job that another live worker runs (or holds in its batch)
is skipped. The batch runner (``worker.jobs.runner``) takes other queued jobs of the model in, stops a
cancelled or taken-over job's rows at the next token, and ends every job it holds, so one job never runs
twice at once. Every claimed job ends or is handed back (``worker.jobs.endings.settle``); each job that
ends moves its OpenAI batch and calibration sweep on (``worker.jobs.followups``).
"""

from __future__ import annotations

import logging
from typing import Callable

from shared.db import session_scope
from shared.settings import Settings, get_settings
from shared.store import lifecycle
from worker.jobs.endings import DatabaseUnavailable, JobTimeLimit, ShutdownRequested, settle, with_db_retry
from worker.jobs.followups import job_ended
from worker.jobs.runner import CohortRunner, Options
from worker.jobs.scheduler import ContinuousRunner

log = logging.getLogger("instaboost.worker")


def execute_job(job_id: int, worker_name: str = "inline", *, settings: Settings | None = None,
                db_url: str | None = None, should_stop: Callable[[], bool] = lambda: False,
                is_alive: Callable[[str], bool] | None = None,
                hard_exit: Callable[[str], None] | None = None,
                sender: Callable[[int, str], None] | None = None,
                candidates: Callable[[str], set[int]] | None = None,
                interactive: Callable[[str], set[int]] | None = None,
                advertise: Callable[[list[int]], None] | None = None) -> str:
    """Run one delivery of a job and return the status it ended in (or "skipped", "taken over", "queued").

    is_alive (worker id -> bool) lets a delivery of a job that a live worker runs be skipped.
    hard_exit(reason) ends this process: given (by the Celery task), a watchdog calls it when the job is
    still running past its hard limit plus a grace (native code that never sees the soft limit's alarm).
    candidates (model -> ids of jobs whose messages wait in this worker's queue) lets the delivery take
    those jobs into its batch (worker.batch_jobs); interactive (model -> the ids of those of interactive priority)
    lets the continuous runner look for chats at every step; advertise(ids) publishes the jobs it holds.
    A job of a sweep that ended moves its sweep on (shared.store.sweeps.advance), sending new jobs through sender.
    When a job is a line of an OpenAI batch and it ended, the batch is moved on (finalized once its last
    job ends). Both happen as each job of the batch ends.
    """
    if settings is None:
        settings = get_settings()
    ended: set[int] = set()

    def on_end(jid: int, status: str) -> None:
        ended.add(jid)
        job_ended(db_url, jid, status, settings, sender)

    opts = Options(worker=worker_name, settings=settings, db_url=db_url, should_stop=should_stop,
                   hard_exit=hard_exit, candidates=candidates, interactive=interactive,
                   advertise=advertise, on_end=on_end)
    status = run_delivery(job_id, opts, is_alive)
    if job_id not in ended:
        job_ended(db_url, job_id, status, settings, sender)
    return status


def run_delivery(job_id: int, opts: Options, is_alive: Callable[[str], bool] | None = None) -> str:
    """Claim the job and run it with its batch; return its status. Raises ShutdownRequested, DatabaseUnavailable."""
    budget = opts.settings.worker.db_retry_seconds
    with session_scope(opts.db_url) as session:
        job = with_db_retry(session, lifecycle.mark_running, job_id, opts.worker, is_alive, budget=budget)
    if job is None:
        log.info("job %s: skipped (missing, cancelled, finished or running on another live worker)", job_id)
        return "skipped"
    # Claimed: from here on, every way out ends the job or hands it back (see settle).
    try:
        # A poison job (more deliveries than worker.max_attempts) is failed by the runner's _admit, like a
        # job its batch takes in.
        runner = ContinuousRunner if opts.settings.worker.continuous else CohortRunner
        return runner(job, opts).run()
    except (ShutdownRequested, DatabaseUnavailable):
        raise  # handed back already, or the message goes back to the queue
    except BaseException as exc:
        status = settle(opts.db_url, job_id, opts.worker, exc, budget, opts.hard_exit)
        if not isinstance(exc, (Exception, JobTimeLimit)):
            raise  # a shutdown: the job is handed back; let the worker stop
        return status
