"""Who serves what: worker heartbeats and the jobs waiting in each model's queue, read from Redis.

A worker process refreshes ``<namespace>:worker:<worker id>`` with a TTL (``worker.jobs.heartbeat``); the
web app reads them to list served models and refuse jobs nobody can run, and the recovery loop reads them, and
the queues, to find jobs whose worker or message was lost. A worker beats before it loads its models, with
``"models": []`` and ``"starting": [the models it is loading]``, so jobs for those queue meanwhile. Workers and
messages of a deployment other than the one that owns the prefix (``shared.deployment``) are left out. Torch-free.
"""

from __future__ import annotations

import base64
import json

from shared import deployment
from shared.celery_config import TASK_NAME

HEARTBEAT_TTL = 30  # seconds a heartbeat lives without a refresh (default of worker.heartbeat_ttl)
HEARTBEAT_INTERVAL = 10  # seconds between refreshes; a worker survives two missed beats
# kombu's Redis transport keeps messages of priority > 0 in "<queue>\x06\x16<priority>" lists.
_PRIORITY_SUFFIXES = ("", "\x06\x163", "\x06\x166", "\x06\x169")


def _namespace(namespace: str | None) -> str:
    if namespace is not None:
        return namespace
    from shared.settings import get_settings

    return get_settings().redis.namespace


def stream_key(namespace: str, job_id: int) -> str:
    """Return the Redis stream a streaming job's events go to (shared.streaming): the worker appends, the web reads."""
    return f"{namespace}:stream:{job_id}"


def redis_client(url: str | None = None):
    """Return a redis-py client with short timeouts, for heartbeats and health checks."""
    import redis

    if url is None:
        from shared.settings import get_settings

        url = get_settings().redis.url
    return redis.Redis.from_url(url, socket_connect_timeout=3, socket_timeout=5, decode_responses=True)


def heartbeat_prefix(namespace: str | None = None) -> str:
    """Return the key prefix of worker heartbeats, e.g. "instaboost:worker:"."""
    return f"{_namespace(namespace)}:worker:"


def heartbeat_key(worker_id: str, namespace: str | None = None) -> str:
    """Return the heartbeat key of a worker, named by the id its jobs carry in their ``worker`` column."""
    return heartbeat_prefix(namespace) + worker_id


def worker_alive(client, worker_id: str | None, namespace: str | None = None) -> bool:
    """Return True while the worker with this id (a job's ``worker`` column) has a live heartbeat."""
    return bool(worker_id) and bool(client.exists(heartbeat_key(worker_id, namespace)))


def worker_runs(client, worker_id: str | None, job_id: int, namespace: str | None = None) -> bool:
    """Return True while the worker with this id is alive and its heartbeat says it runs job_id now."""
    if not worker_id:
        return False
    jobs = worker_jobs(client, worker_id, namespace)
    return jobs is not False and (jobs is None or job_id in jobs)


def worker_jobs(client, worker_id: str, namespace: str | None = None) -> set[int] | None | bool:
    """Return the jobs a live worker's heartbeat says it runs; None when it does not say; False when it is dead."""
    raw = client.get(heartbeat_key(worker_id, namespace))
    if raw is None:
        return False
    try:
        beat = json.loads(raw)
    except (TypeError, ValueError):
        return None  # alive, but says nothing we can read: leave its jobs to it
    if not isinstance(beat, dict):
        return None
    if isinstance(beat.get("jobs"), list):  # a worker batching several jobs lists them all
        return {j for j in beat["jobs"] if isinstance(j, int)}
    if "job" in beat:
        return {beat["job"]} if isinstance(beat["job"], int) else set()
    return None


def message_job_id(raw: str | bytes, deployment_id: str | None = None) -> int | None:
    """Return the job id an ``instaboost.run_job`` message in a kombu Redis list carries (None if another).

    deployment_id: also None for a message another deployment sent (one without the header counts as ours).
    """
    try:
        message = json.loads(raw)
        headers = message.get("headers", {})
        if headers.get("task") != TASK_NAME:
            return None
        if deployment_id is not None and headers.get(deployment.HEADER) not in (None, deployment_id):
            return None
        args = json.loads(base64.b64decode(message["body"]))[0]
        return int(args[0])
    except (TypeError, ValueError, KeyError, IndexError, AttributeError):
        return None


def queue_key(queue: str, priority: int = 0, namespace: str | None = None) -> str:
    """Return the Redis list holding queue's messages of one priority step (kombu: no suffix for step 0)."""
    return f"{_namespace(namespace)}:{queue}" + ("" if priority == 0 else f"\x06\x16{priority}")


def waiting_job_ids(client, queue: str, namespace: str | None = None, oldest: int | None = None,
                    interactive: bool = False) -> set[int]:
    """Return the ids of the jobs whose message waits, not yet delivered, in queue.

    oldest: read only the next that many messages of each priority step (kombu pushes on the left and
    delivers from the right), not the whole list. interactive: read only the interactive priority step's list
    (priority 0, kombu's list without a suffix).
    """
    ns = _namespace(namespace)
    ids: set[int] = set()
    start = 0 if oldest is None else -max(1, int(oldest))
    owner = deployment.owner_id(client, ns)  # another deployment's messages name jobs of another database
    for suffix in _PRIORITY_SUFFIXES[:1] if interactive else _PRIORITY_SUFFIXES:
        for raw in client.lrange(f"{ns}:{queue}{suffix}", start, -1):
            job_id = message_job_id(raw, owner)
            if job_id is not None:
                ids.add(job_id)
    return ids


def queued_messages(client, queue: str, namespace: str | None = None) -> int:
    """Return how many messages wait, not yet delivered, in queue (every priority step)."""
    ns = _namespace(namespace)
    pipe = client.pipeline(transaction=False)
    for suffix in _PRIORITY_SUFFIXES:
        pipe.llen(f"{ns}:{queue}{suffix}")
    return sum(int(n or 0) for n in pipe.execute())


def live_workers(client, namespace: str | None = None) -> list[dict]:
    """Return the heartbeats of live workers (each {"hostname", "models", "pid", "started_at", "seen_at"}).

    Only workers of the deployment that owns the prefix count (and those whose beat names none).
    """
    keys = sorted(client.scan_iter(match=heartbeat_prefix(namespace) + "*", count=500))
    if not keys:
        return []
    owner = deployment.owner_id(client, _namespace(namespace))
    out = []
    for raw in client.mget(keys):
        if raw is None:  # expired between SCAN and MGET
            continue
        try:
            beat = json.loads(raw)
        except (TypeError, ValueError):
            continue
        if isinstance(beat, dict) and isinstance(beat.get("models"), list) \
                and (owner is None or beat.get(deployment.HEADER) in (None, owner)):
            out.append(beat)
    return out


def served_models(client, namespace: str | None = None) -> set[str]:
    """Return the names of the models at least one live worker holds."""
    return {m for beat in live_workers(client, namespace) for m in beat["models"]}


def starting_in(beat: dict) -> list[str]:
    """Return the models a heartbeat says its worker is still loading (its "starting" list)."""
    starting = beat.get("starting")
    return [m for m in starting if isinstance(m, str)] if isinstance(starting, list) else []
