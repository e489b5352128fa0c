"""The Celery task ``instaboost.run_job``: a thin shim from Celery's state to one delivery (``worker.jobs.delivery``).

It builds the delivery's options from the worker around it (its id and heartbeat, whether a shutdown was
asked, the jobs waiting in its queue, the hard exit) and turns a shutdown or an unreachable database into
``Reject(requeue=True)``, so the message goes back to the queue with the job.
"""

from __future__ import annotations

import functools
import logging

from celery import shared_task
from celery.exceptions import Reject
from celery.worker import state

from shared.celery_config import TASK_NAME, model_queue
from shared.settings import get_settings
from shared.store.sweeps import celery_sender
from shared.worker_registry import redis_client, waiting_job_ids, worker_runs
from worker.jobs import identity
from worker.jobs.delivery import execute_job
from worker.jobs.endings import DatabaseUnavailable, ShutdownRequested
from worker.jobs.heartbeat import current_heartbeat, current_worker_id
from worker.jobs.watchdog import end_process

log = logging.getLogger("instaboost.worker")


@shared_task(name=TASK_NAME, bind=True)
def run_job(self, job_id: int) -> str:
    """Run the job with this id (delivered at least once; safe to run again)."""
    settings = get_settings()
    redis = _redis(settings.redis.url)
    namespace = settings.redis.namespace
    job_id = int(job_id)
    identity.refuse_foreign(self.request, job_id, settings)  # a job id of another database: never run it here

    def busy(worker: str) -> bool:
        # Another process claimed it: leave it alone while that process lives and still runs it.
        try:
            return worker_runs(redis, worker, job_id, namespace)
        except Exception:  # cannot tell: leave the job to its worker; the recovery loop decides once Redis answers
            return True

    def waiting(model: str, interactive: bool = False) -> set[int]:
        # The next messages of the model's queue: jobs this worker would be sent anyway (this deployment's).
        # interactive: only the interactive priority step's list, one read, cheap enough for every decoding step.
        rows = settings.worker.max_batch_rows
        return waiting_job_ids(redis, model_queue(model), namespace, oldest=4 * rows, interactive=interactive)

    beat = current_heartbeat()
    if beat is not None:
        beat.set_job(job_id)  # before claiming, so a duplicate delivery elsewhere sees it at once
    try:
        return execute_job(job_id, current_worker_id() or self.request.hostname or "worker",
                           settings=settings, should_stop=stopping, is_alive=busy, hard_exit=end_process,
                           sender=celery_sender(self.app), candidates=waiting,
                           interactive=lambda model: waiting(model, interactive=True),
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


def stopping() -> bool:
    """Return True once this worker was asked to stop (a warm or cold shutdown)."""
    # A warm shutdown sets should_stop to its exit code, EX_OK == 0: only None / False mean "not asked".
    # (`0 not in (None, False)` is False, since 0 == False: a SIGTERM went unnoticed until the job ended.)
    return any(flag is not None and flag is not False for flag in (state.should_stop, state.should_terminate))


@functools.cache
def _redis(url: str):
    return redis_client(url)
