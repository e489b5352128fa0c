"""Celery configuration, per-model queue names and worker heartbeats, shared by web and worker.

Torch-free: the web app builds its Celery app here and enqueues ``instaboost.run_job`` by name;
only ``worker/`` registers the task body. Redis keys of one deployment share ``redis.namespace``,
so separate deployments or test runs can share one Redis server without seeing each other's jobs.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from typing import Any, Mapping

from shared.errors import ValidationError

TASK_NAME = "instaboost.run_job"
HEARTBEAT_TTL = 30  # seconds a heartbeat lives without a refresh (default of worker.heartbeat_ttl)
HEARTBEAT_INTERVAL = 10  # seconds between refreshes; a worker survives two missed beats
# kombu's Redis transport keeps messages of priority > 0 in "<queue>\x06\x16<priority>" lists.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")

_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


def _namespace(namespace: str | None) -> str:
    if namespace is not None:
        return namespace
    from shared.settings import get_settings

    return get_settings()["redis.namespace"]


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


def celery_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """Return the Celery settings for this deployment; raise ValidationError on inconsistent limits."""
    limit = int(settings["worker.job_time_limit"])
    visibility = int(settings["worker.visibility_timeout"])
    if limit < 1:
        raise ValidationError("worker.job_time_limit must be >= 1 second", field="worker.job_time_limit")
    if visibility <= limit:
        # Redis redelivers unacknowledged messages after the visibility timeout: a shorter one than
        # the job limit would hand a long generation to a second worker while the first still runs.
        raise ValidationError(
            f"worker.visibility_timeout ({visibility} s) must exceed worker.job_time_limit ({limit} s); "
            "raise INSTABOOST_WORKER_VISIBILITY_TIMEOUT", field="worker.visibility_timeout")
    interval = float(settings.get("worker.heartbeat_interval", HEARTBEAT_INTERVAL))
    ttl = float(settings.get("worker.heartbeat_ttl", HEARTBEAT_TTL))
    if not 0 < interval < ttl:
        # A heartbeat that expires before its refresh would make the sweeper requeue live workers' jobs.
        raise ValidationError(
            f"worker.heartbeat_ttl ({ttl} s) must exceed worker.heartbeat_interval ({interval} s) > 0",
            field="worker.heartbeat_ttl")
    ns = settings["redis.namespace"]
    return {
        "broker_url": settings["redis.url"],
        "broker_connection_retry_on_startup": True,
        # An overnight worker waits out a Redis restart of any length instead of exiting after 100 tries.
        "broker_connection_max_retries": None,
        "broker_connection_timeout": 3,
        "broker_transport_options": {"visibility_timeout": visibility, "global_keyprefix": f"{ns}:"},
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


def make_celery(settings: Mapping[str, Any] | None = None, main: str = "instaboost"):
    """Return a Celery app configured from settings (tasks are registered by worker/ only)."""
    from celery import Celery

    if settings is None:
        from shared.settings import get_settings

        settings = get_settings()
    app = Celery(main)
    app.conf.update(celery_config(settings))
    return app


_app = None


def get_celery():
    """Return the process-wide Celery app built from get_settings() (for enqueueing by name)."""
    global _app
    if _app is None:
        _app = make_celery()
    return _app


def reset_celery() -> None:
    """Forget the cached app (after reset_settings())."""
    global _app
    _app = None


def redis_client(url: str | None = None):
    """Return a redis-py client with short timeouts, for heartbeats and health checks."""
    import redis

    if url is None:
        from shared.settings import get_settings

        url = get_settings()["redis.url"]
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5, decode_responses=True)


def heartbeat_prefix(namespace: str | None = None) -> str:
    """Return the key prefix of worker heartbeats, e.g. "instaboost:worker:"."""
    return f"{_namespace(namespace)}:worker:"


def heartbeat_key(worker_id: str, namespace: str | None = None) -> str:
    """Return the heartbeat key of a worker, named by the id its jobs carry in their ``worker`` column."""
    return heartbeat_prefix(namespace) + worker_id


def worker_alive(redis_client, worker_id: str | None, namespace: str | None = None) -> bool:
    """Return True while the worker with this id (a job's ``worker`` column) has a live heartbeat."""
    return bool(worker_id) and bool(redis_client.exists(heartbeat_key(worker_id, namespace)))


def worker_runs(redis_client, worker_id: str | None, job_id: int, namespace: str | None = None) -> bool:
    """Return True while the worker with this id is alive and its heartbeat says it runs job_id now."""
    if not worker_id:
        return False
    raw = redis_client.get(heartbeat_key(worker_id, namespace))
    if raw is None:
        return False
    try:
        beat = json.loads(raw)
    except (TypeError, ValueError):
        return True  # alive, but says nothing we can read: leave the job to it
    return not isinstance(beat, dict) or "job" not in beat or beat["job"] == job_id


def message_job_id(raw: str | bytes) -> int | None:
    """Return the job id an ``instaboost.run_job`` message in a kombu Redis list carries (None if another)."""
    try:
        message = json.loads(raw)
        if message.get("headers", {}).get("task") != TASK_NAME:
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def waiting_job_ids(redis_client, queue: str, namespace: str | None = None) -> set[int]:
    """Return the ids of the jobs whose message waits, not yet delivered, in queue."""
    ns = _namespace(namespace)
    ids: set[int] = set()
    for suffix in _PRIORITY_SUFFIXES:
        for raw in redis_client.lrange(f"{ns}:{queue}{suffix}", 0, -1):
            job_id = message_job_id(raw)
            if job_id is not None:
                ids.add(job_id)
    return ids


def live_workers(redis_client, namespace: str | None = None) -> list[dict]:
    """Return the heartbeats of live workers (each {"hostname", "models", "pid", "started_at", "seen_at"})."""
    keys = sorted(redis_client.scan_iter(match=heartbeat_prefix(namespace) + "*", count=500))
    if not keys:
        return []
    out = []
    for raw in redis_client.mget(keys):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beat = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(beat, dict) and isinstance(beat.get("models"), list):
            out.append(beat)
    return out


def served_models(redis_client, namespace: str | None = None) -> set[str]:
    """Return the names of the models at least one live worker holds."""
    return {m for beat in live_workers(redis_client, namespace) for m in beat["models"]}
