"""Celery configuration and per-model queue names, shared by web and worker.

Torch-free: the web app builds its Celery app here and enqueues ``instaboost.run_job`` by name;
only ``worker/`` registers the task body. Redis keys of one deployment share ``redis.namespace``,
so separate deployments or test runs can share one Redis server without seeing each other's jobs; every
``instaboost.run_job`` message carries its sender's deployment id (``shared.deployment``) in a header.
What live workers advertise, and what waits in their queues, is read in ``shared.worker_registry``.
"""

from __future__ import annotations

import functools
import hashlib
import re
from typing import Any

from celery import Celery

from shared import deployment
from shared.errors import ValidationError
from shared.settings import Settings

TASK_NAME = "instaboost.run_job"

# Message priorities on the Redis broker (kombu keeps one list per step and a worker pops the lists of step 0
# first, then 3, 6 and 9: 0 is the most urgent). Interactive chat completions go ahead of the job API's jobs,
# which go ahead of the lines of OpenAI batches.
PRIORITY_STEPS = (0, 3, 6, 9)
PRIORITY = {"interactive": 0, "default": 3, "batch": 6}


def job_priority(kind: str | None, batch_id: str | None) -> int:
    """Return the broker priority of a job's message (see PRIORITY)."""
    if batch_id:
        return PRIORITY["batch"]
    return PRIORITY["interactive"] if kind in ("chat", "completion") else PRIORITY["default"]

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def model_queue(name: str) -> str:
    """Return the queue that carries jobs for model ``name``, e.g. "models.smollm2-135m-instruct"."""
    safe = _SAFE.sub("_", name.strip())[:100]
    if safe != name.strip():
        # Hub ids and paths lose characters; a digest keeps "a/b" and "a_b" on different queues.
        safe += "-" + hashlib.sha1(name.strip().encode()).hexdigest()[:8]
    return f"models.{safe}"


def soft_time_limit(job_time_limit: int) -> int:
    """Return the soft limit: a little before the hard one, so the job can be failed cleanly."""
    margin = max(1, min(60, job_time_limit // 10))
    return max(1, job_time_limit - margin)


def celery_config(settings: Settings) -> dict[str, Any]:
    """Return the Celery settings for this deployment; raise ValidationError on inconsistent limits."""
    limit = settings.worker.job_time_limit
    visibility = settings.worker.visibility_timeout
    if limit < 1:
        raise ValidationError("worker.job_time_limit must be >= 1 second", field="worker.job_time_limit")
    if visibility <= limit:
        # Redis redelivers unacknowledged messages after the visibility timeout: a shorter one than
        # the job limit would hand a long generation to a second worker while the first still runs.
        raise ValidationError(
            f"worker.visibility_timeout ({visibility} s) must exceed worker.job_time_limit ({limit} s); "
            "raise INSTABOOST_WORKER_VISIBILITY_TIMEOUT", field="worker.visibility_timeout")
    interval = settings.worker.heartbeat_interval
    ttl = settings.worker.heartbeat_ttl
    if not 0 < interval < ttl:
        # A heartbeat that expires before its refresh would make the recovery loop requeue live workers' jobs.
        raise ValidationError(
            f"worker.heartbeat_ttl ({ttl} s) must exceed worker.heartbeat_interval ({interval} s) > 0",
            field="worker.heartbeat_ttl")
    ns = settings.redis.namespace
    return {
        "broker_url": settings.redis.url,
        "broker_connection_retry_on_startup": True,
        # An overnight worker waits out a Redis restart of any length instead of exiting after 100 tries.
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 3,
        "broker_transport_options": {"visibility_timeout": visibility, "global_keyprefix": f"{ns}:",
                                     "priority_steps": list(PRIORITY_STEPS)},
        # The database is the source of truth for job state; no result backend.
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        "task_time_limit": limit,
        "task_soft_time_limit": soft_time_limit(limit),
        # Fail fast when the broker is down so the web answers 503 instead of hanging.
        "task_publish_retry_policy": {"max_retries": 2, "interval_start": 0, "interval_step": 0.2,
                                      "interval_max": 0.5},
        "worker_send_task_events": False,
        "worker_hijack_root_logger": False,
    }


class InstaBoostCelery(Celery):
    """A Celery app whose ``instaboost.run_job`` messages carry the sender's deployment id (header "deployment").

    Every sender (submission, sweeps, the recovery loop) goes through send_task, so none can forget it; a worker
    hands a message of another deployment back to the queue (worker/jobs/tasks.py).
    """

    database_url: str | None = None

    def send_task(self, name, args=None, kwargs=None, **options):
        """Publish the task by name; add the deployment header to job messages."""
        ident = deployment.identity_or_none(self.database_url) if name == TASK_NAME else None
        if ident is not None:  # unknown only while the database is unreadable; such a message is anyone's
            options["headers"] = {**(options.get("headers") or {}), deployment.HEADER: ident}
        return super().send_task(name, args, kwargs, **options)


def make_celery(settings: Settings | None = None, main: str = "instaboost"):
    """Return a Celery app configured from settings (tasks are registered by worker/ only)."""
    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    app = InstaBoostCelery(main)
    app.database_url = settings.database.url
    app.conf.update(celery_config(settings))
    return app


@functools.cache
def get_celery():
    """Return the process-wide Celery app built from get_settings() (for enqueueing by name)."""
    return make_celery()
