"""The worker's Celery app: ``celery -A worker.jobs.app worker --pool solo``.

Models named in ``worker.models`` are loaded once per worker process, in ``worker_process_init``
(sent by the solo pool in the worker itself and by prefork in each child after the fork), so a
CUDA context never exists in a parent that forks. The worker consumes only its models' queues; its
heartbeat lists them as "starting" while they load and as served once loaded. Each process also runs
the recovery loop thread (worker/jobs/recovery.py) that re-sends jobs whose message or worker was lost.
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
# A bare `celery -A worker.jobs.app worker` consumes exactly the queues of the models it holds.
app.conf.task_queues = [Queue(model_queue(m)) for m in dict.fromkeys(settings.worker.models)]
app.conf.task_default_queue = model_queue(settings.worker.models[0]) if settings.worker.models else "models"
# Reconnects to Redis with a backoff capped at redis.reconnect_max_seconds (Celery's own grows to 30 s).
app.conf.worker_consumer = "worker.jobs.reconnect:Consumer"

import worker.jobs.tasks  # noqa: E402,F401  (registers instaboost.run_job)

_heartbeat = None


def preload_models(hostname: str | None = None) -> list[str]:
    """Announce worker.models as starting, load each into this process, then advertise them as served."""
    global _heartbeat
    if _heartbeat is not None:
        return _heartbeat.payload["models"]
    from shared.deployment import HEADER
    from shared.errors import InstaBoostError
    from worker.jobs.heartbeat import Heartbeat, new_worker_id
    from worker.jobs.identity import owner_entry, start_check
    from worker.jobs.takeover import process_facts

    s = get_settings()
    models = list(dict.fromkeys(s.worker.models))
    if not models:
        raise SystemExit("instaboost worker: worker.models is empty; set INSTABOOST_WORKER_MODELS")
    host = hostname or f"worker@{socket.gethostname()}"
    own = start_check(s)  # before the first beat: a worker on another deployment's Redis prefix never advertises
    # One id per process (prefork children too): the heartbeat key and the jobs' worker column. The first
    # beat comes before loading (seconds to minutes), so the web app queues jobs for these models meanwhile.
    _heartbeat = Heartbeat(host, [], s.redis.url, s.redis.namespace, interval=s.worker.heartbeat_interval,
                           ttl=s.worker.heartbeat_ttl, worker_id=new_worker_id(host),
                           extra={"starting": models, HEADER: own, **process_facts()}, owner=owner_entry(own, s)).start()
    atexit.register(_heartbeat.stop)
    start_takeover(_heartbeat.worker_id, host)  # a predecessor's jobs go back while the models load
    from worker.engine import get_engine

    model_info = {}
    for name in models:
        try:
            engine = get_engine(name, s.instaboost.engine)
        except InstaBoostError as exc:
            # Fail fast: a worker that consumes a model's queue but cannot run it would fail every job.
            _heartbeat.stop()  # no longer "starting": the web app refuses these models again
            raise SystemExit(f"instaboost worker: cannot load model {name!r}: {exc}") from None
        # Advertised so the web app can refuse out-of-range layers and oversized prompts at submit time.
        model_info[name] = {"n_layers": engine.n_layers, "n_heads": engine.n_heads,
                            "max_context": engine.max_context}
        log.info("loaded model %s", name)
    _heartbeat.ready(models, model_info=model_info)
    start_recovery(_heartbeat.worker_id)
    return models


_recovery = None
_takeover = None


def start_takeover(own_worker: str, node: str):
    """Hand back, in a thread, the jobs a dead earlier worker of this node name left running (jobs/takeover.py)."""
    global _takeover
    from worker.jobs.recovery import JobRecovery
    from worker.jobs.takeover import Takeover

    s = get_settings()
    _takeover = Takeover(JobRecovery(s, own_worker=own_worker), node, own_worker, s.worker.heartbeat_interval,
                         s.worker.heartbeat_ttl).start()
    return _takeover


def start_recovery(own_worker: str | None = None):
    """Start this process's recovery loop thread unless sweeper.enabled is off (see worker/jobs/recovery.py)."""
    global _recovery
    s = get_settings()
    if _recovery is None and s.sweeper.enabled:
        from worker.jobs.recovery import JobRecovery

        _recovery = JobRecovery(s, own_worker=own_worker).start()
    return _recovery


def stop_heartbeat(**_kw) -> None:
    """Stop the recovery loop and remove this process's heartbeat (clean shutdown)."""
    if _takeover is not None:
        _takeover.stop()
    if _recovery is not None:
        _recovery.stop()
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
