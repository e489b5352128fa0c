"""Worker heartbeat: a daemon thread that tells the web app which models this process serves."""

from __future__ import annotations

import json
import logging
import os
import threading
from datetime import datetime, timezone

from shared.celery_config import HEARTBEAT_INTERVAL, HEARTBEAT_TTL, heartbeat_prefix, redis_client

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Heartbeat:
    """Refresh ``<namespace>:worker:<hostname>`` every interval with a TTL; delete it on stop."""

    def __init__(self, hostname: str, models: list[str], redis_url: str, namespace: str,
                 interval: float = HEARTBEAT_INTERVAL, ttl: int = HEARTBEAT_TTL):
        self.key = heartbeat_prefix(namespace) + hostname
        self.payload = {"hostname": hostname, "models": list(models), "pid": os.getpid(), "started_at": _now()}
        self.interval = interval
        self.ttl = ttl
        self._redis = redis_client(redis_url)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def beat(self) -> None:
        """Write the heartbeat once."""
        body = dict(self.payload, seen_at=_now())
        self._redis.set(self.key, json.dumps(body), ex=self.ttl)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
            except Exception as exc:  # Redis hiccup: the key expires on its own if this persists
                log.warning("heartbeat %s failed: %s", self.key, exc)

    def start(self) -> "Heartbeat":
        """Write the first beat now (failing loudly if Redis is unreachable) and keep refreshing."""
        self.beat()
        self._thread = threading.Thread(target=self._loop, name="instaboost-heartbeat", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop refreshing and remove the key so the web app stops routing jobs here at once."""
        if self._stop.is_set():
            return
        self._stop.set()
        try:
            self._redis.delete(self.key)
        except Exception as exc:
            log.warning("could not remove heartbeat %s: %s", self.key, exc)
