"""Worker heartbeat: a daemon thread that tells the web app and the recovery loop this process is alive.

A worker process is named by one id, ``<celery node name>:<pid>:<random>``: its heartbeat key is
``<namespace>:worker:<id>`` and every job it claims stores the same id in its ``worker`` column, so the
recovery loop can tell from a job alone whether the process running it still lives. The random part keeps a
restarted worker (same node name, and in a container often the same pid) from looking like the dead one.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import threading
from datetime import datetime, timezone

from shared.metrics import METRICS
from shared.worker_registry import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, heartbeat_key, redis_client

log = logging.getLogger(__name__)

_current: "Heartbeat | None" = None


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def new_worker_id(node: str) -> str:
    """Return a fresh id for this process: node name, pid and a random part."""
    return f"{node}:{os.getpid()}:{secrets.token_hex(3)}"


def current_worker_id() -> str | None:
    """Return the id of this process's running heartbeat (the value its jobs' ``worker`` column gets)."""
    return _current.worker_id if _current is not None else None


def current_heartbeat() -> "Heartbeat | None":
    """Return this process's running heartbeat, if any."""
    return _current


class Heartbeat:
    """Refresh ``<namespace>:worker:<worker_id>`` every interval with a TTL; delete it on stop."""

    def __init__(self, hostname: str, models: list[str], redis_url: str, namespace: str,
                 interval: float = HEARTBEAT_INTERVAL, ttl: float = HEARTBEAT_TTL, worker_id: str | None = None,
                 extra: dict | None = None, owner: tuple[str, str] | None = None):
        self.worker_id = worker_id or hostname
        self.key = heartbeat_key(self.worker_id, namespace)
        self.payload = {"hostname": hostname, "worker": self.worker_id, "models": list(models), "pid": os.getpid(),
                        "started_at": _now(), "job": None, "jobs": [],
                        **(extra or {})}
        self.interval = interval
        self.ttl = ttl
        # (key, value) of the deployment owning the Redis prefix (shared.deployment), set again if Redis lost it.
        self.owner = owner
        self._redis = redis_client(redis_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Write the heartbeat once, with this process's numbers (shared.metrics) for the web's /metrics."""
        body = dict(self.payload, seen_at=_now(), metrics=METRICS.snapshot())
        pipe = self._redis.pipeline(transaction=False)
        pipe.set(self.key, json.dumps(body), px=max(1, int(self.ttl * 1000)))
        if self.owner is not None:
            pipe.set(*self.owner, nx=True)
        pipe.execute()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # Redis hiccup: the key expires on its own if this persists
                log.warning("heartbeat %s failed: %s", self.key, type(exc).__name__)

    def start(self) -> "Heartbeat":
        """Write the first beat now (failing loudly if Redis is unreachable) and keep refreshing."""
        global _current
        self.beat()
        _current = self
        self._thread = threading.Thread(target=self._loop, name="instaboost-heartbeat", daemon=True)
        self._thread.start()
        return self

    def ready(self, models: list[str], **extra) -> None:
        """Advertise models as loaded (no longer "starting"), with extra facts, and beat at once."""
        payload = {k: v for k, v in self.payload.items() if k != "starting"}
        # One assignment: the beating thread copies self.payload and must never see it half-changed.
        self.payload = {**payload, "models": list(models), **extra}
        self.beat()

    def set_job(self, job_id: int | None) -> None:
        """Advertise the job this process runs now (None when idle), at once: duplicate deliveries check it."""
        self.set_jobs([] if job_id is None else [job_id])

    def set_jobs(self, job_ids: list[int]) -> None:
        """Advertise every job this process runs now (its cohort; [] when idle), at once.

        Duplicate deliveries elsewhere leave a listed job alone, and the recovery loop sends again a job that
        names this live process but is not listed (the process lost track of it).
        """
        ids = [int(j) for j in job_ids]
        # One assignment: the beating thread copies self.payload and must never see it half-changed.
        self.payload = {**self.payload, "job": ids[0] if ids else None, "jobs": ids}
        try:
            self.beat()
        except Exception as exc:  # the loop retries; the recovery loop decides nothing while Redis is away
            log.warning("heartbeat %s failed: %s", self.key, type(exc).__name__)

    def stop(self) -> None:
        """Stop refreshing and remove the key so the web app stops routing jobs here at once."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._redis.delete(self.key)
        except Exception as exc:
            log.warning("could not remove heartbeat %s: %s", self.key, type(exc).__name__)
