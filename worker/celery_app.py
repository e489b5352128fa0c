"""The worker's Celery app: ``celery -A worker.celery_app worker --pool solo``.

Models named in ``worker.models`` are loaded once per worker process, in ``worker_process_init``
(sent by the solo pool in the worker itself and by prefork in each child after the fork), so a
CUDA context never exists in a parent that forks. The worker consumes only its models' queues, and
advertises them with a heartbeat once they are loaded.
"""

from __future__ import annotations

import atexit
import logging
import os
import socket
import sys

from celery import signals
from kombu import Queue

from shared.celery_config import make_celery, model_queue
from shared.settings import get_settings

log = logging.getLogger("instaboost.worker")

settings = get_settings()
app = make_celery(settings, main="instaboost-worker")
# A bare `celery -A worker.celery_app worker` consumes exactly the queues of the models it holds.
app.conf.task_queues = [Queue(model_queue(m)) for m in dict.fromkeys(settings["worker.models"])]
app.conf.task_default_queue = model_queue(settings["worker.models"][0]) if settings["worker.models"] else "models"

import worker.tasks  # noqa: E402,F401  (registers instaboost.run_job)

_heartbeat = None


def preload_models(hostname: str | None = None) -> list[str]:
    """Load every model in worker.models into this process, then start its heartbeat."""
    global _heartbeat
    if _heartbeat is not None:
        return _heartbeat.payload["models"]
    from shared.errors import InstaBoostError
    from worker.engine import get_engine
    from worker.heartbeat import Heartbeat

    s = get_settings()
    models = list(dict.fromkeys(s["worker.models"]))
    if not models:
        raise SystemExit("instaboost worker: worker.models is empty; set INSTABOOST_WORKER_MODELS")
    for name in models:
        try:
            get_engine(name, s["instaboost.engine"])
        except InstaBoostError as exc:
            # Fail fast: a worker that consumes a model's queue but cannot run it would fail every job.
            raise SystemExit(f"instaboost worker: cannot load model {name!r}: {exc}") from None
        log.info("loaded model %s", name)
    from billiard.process import current_process

    host = hostname or f"worker@{socket.gethostname()}"
    if current_process().name != "MainProcess":
        host += f":{os.getpid()}"  # prefork children of one node each advertise themselves
    _heartbeat = Heartbeat(host, models, s["redis.url"], s["redis.namespace"]).start()
    atexit.register(_heartbeat.stop)
    return models


def stop_heartbeat(**_kw) -> None:
    """Remove this process's heartbeat (clean shutdown)."""
    if _heartbeat is not None:
        _heartbeat.stop()


@signals.worker_process_init.connect
def _on_process_init(sender=None, **_kw):
    try:
        preload_models(sender if isinstance(sender, str) else None)
    except SystemExit as exc:
        # Celery logs and swallows exceptions from signal handlers; exit for real with the reason.
        print(exc, file=sys.stderr, flush=True)
        os._exit(3)


@signals.worker_ready.connect
def _on_ready(sender=None, **_kw):
    # The threads pool sends no worker_process_init; it does not fork, so loading here is safe.
    pool = getattr(sender, "pool", None)
    if _heartbeat is None and "thread" in type(pool).__module__:
        _on_process_init(getattr(sender, "hostname", None))


signals.worker_shutdown.connect(stop_heartbeat)
signals.worker_process_shutdown.connect(stop_heartbeat)
