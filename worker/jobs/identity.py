"""The worker's side of the deployment identity (shared.deployment): refuse to start on another deployment's
Redis prefix, and hand a message another deployment sent back to the queue instead of running it.

Job ids are per database: a message of another deployment names a job of another database, so running (or
skipping and acknowledging) it would lose that deployment's job. It is rejected back to the queue and logged
as an ERROR; the short pause keeps a worker that meets nothing else from taking it back at once, in a loop.
"""

from __future__ import annotations

import logging
import time

from celery.exceptions import Reject

from shared import deployment
from shared.settings import Settings
from shared.worker_registry import redis_client

log = logging.getLogger("instaboost.worker")

FOREIGN_PAUSE = 2.0  # seconds before handing back another deployment's message


def start_check(settings: Settings) -> str | None:
    """Claim the Redis prefix for this worker's database; return its deployment id (None while unreadable).

    Raises SystemExit, naming both databases, when another deployment owns the prefix.
    """
    try:
        return deployment.claim_if_reachable(redis_client(settings.redis.url), settings.redis.namespace,
                                             settings.database.url)
    except deployment.DeploymentConflict as exc:
        raise SystemExit(f"instaboost worker: cannot start: {exc.message}") from None


def owner_entry(own: str | None, settings: Settings) -> tuple[str, str] | None:
    """Return (key, value) each heartbeat re-claims with SET NX, so a Redis that lost the key gets it back."""
    if own is None:
        return None
    return deployment.owner_key(settings.redis.namespace), deployment.owner_value(own, settings.database.url)


def sender_of(request) -> str | None:
    """Return the deployment id a delivered task message carries (None: sent without one)."""
    value = getattr(request, deployment.HEADER, None)
    if value is None:  # some Celery versions keep custom headers apart
        value = (getattr(request, "headers", None) or {}).get(deployment.HEADER)
    return value if isinstance(value, str) else None


def refuse_foreign(request, job_id: int, settings: Settings) -> None:
    """Raise Reject(requeue=True), after an ERROR log, when another deployment sent this job's message."""
    sent_by = sender_of(request)
    if sent_by is None:
        return
    own = deployment.identity_or_none(settings.database.url)
    if own is None or sent_by == own:
        return
    namespace = settings.redis.namespace
    log.error("job %s: message of another deployment (%s) handed back to the queue, not run: this worker's database "
              "%s is deployment %s. Two deployments share the Redis key prefix %r; give each its own "
              "redis.namespace (INSTABOOST_REDIS_NAMESPACE). If deployment %s is gone for good, purge its messages "
              "(`celery -A worker.jobs.app purge`; this deployment's recovery loop sends its own queued jobs again).",
              job_id, sent_by, deployment.mask_url(settings.database.url), own, namespace, sent_by)
    time.sleep(FOREIGN_PAUSE)
    raise Reject(f"message of deployment {sent_by}, not {own}", requeue=True)
