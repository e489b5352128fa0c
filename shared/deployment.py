"""Deployment identity: which database a Redis key prefix (``redis.namespace``) belongs to. Torch-free.

Each database holds one deployment id (the one-row table ``deployment``, written once by migration 0007).
The first web app, worker or ``instaboost serve`` that starts on a key prefix records its id and its
database's URL (password masked) under ``<namespace>:deployment`` with SET NX; a process whose database
has another id refuses to start (DeploymentConflict), naming both databases. Task messages carry the
sender's id in their ``deployment`` header (``shared.celery_config``) and worker heartbeats in their
``deployment`` field: a worker hands a message of another deployment back to the queue instead of running
it, and the lists of live workers and waiting messages (``shared.worker_registry``) leave other deployments out.
"""

from __future__ import annotations

import json
import logging
import os
import threading

from sqlalchemy import text
from sqlalchemy.engine import make_url

from shared.db import get_db_engine
from shared.errors import Unavailable

log = logging.getLogger(__name__)

HEADER = "deployment"  # the task-message header and the heartbeat field that carry the sender's id

_lock = threading.Lock()
_ids: dict[str, str] = {}


class DeploymentConflict(Unavailable):
    """The Redis key prefix belongs to another deployment (another database): starting here would mix their jobs."""

    title = "Redis key prefix used by another deployment"


def owner_key(namespace: str) -> str:
    """Return the Redis key naming the deployment that owns namespace, e.g. "instaboost:deployment"."""
    return f"{namespace}:deployment"


def mask_url(url: str) -> str:
    """Return a database URL with its password hidden (a SQLite file's path made absolute), for messages."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
            # Two checkouts both on the default sqlite:///instaboost.db are two databases: say which.
            parsed = parsed.set(database=os.path.abspath(parsed.database))
        return parsed.render_as_string(hide_password=True)
    except Exception:  # not a URL SQLAlchemy parses: say nothing of what it holds
        return "<unparsable database URL>"


def local_identity(db_url: str) -> str:
    """Return the deployment id stored in the database at db_url (read once per process and URL).

    Raises what the driver raises when the database is unreachable or not migrated (no ``deployment`` table).
    """
    with _lock:
        known = _ids.get(db_url)
    if known is not None:
        return known
    with get_db_engine(db_url).connect() as conn:
        ident = conn.execute(text("SELECT id FROM deployment ORDER BY created_at LIMIT 1")).scalar_one_or_none()
    if ident is None:
        raise LookupError(f"the database {mask_url(db_url)} has no deployment id; run `alembic upgrade head`")
    with _lock:
        _ids[db_url] = ident
    return ident


def identity_or_none(db_url: str | None) -> str | None:
    """Return local_identity(db_url), or None when it cannot be read now (database down or not migrated)."""
    if not db_url:
        return None
    try:
        return local_identity(db_url)
    except Exception as exc:  # any driver error: the caller goes on and checks again later
        log.debug("deployment id of %s unknown: %s", mask_url(db_url), type(exc).__name__)
        return None


def owner(redis, namespace: str) -> dict | None:
    """Return {"id", "database"} of the deployment that owns namespace, or None when none does yet."""
    raw = redis.get(owner_key(namespace))
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError):
        value = None
    return value if isinstance(value, dict) and isinstance(value.get("id"), str) else {"id": str(raw), "database": "?"}


def owner_id(redis, namespace: str) -> str | None:
    """Return the id of the deployment that owns namespace (None when none does yet)."""
    found = owner(redis, namespace)
    return found["id"] if found else None


def conflict_message(namespace: str, found: dict, own_id: str, db_url: str) -> str:
    """Return the refusal naming both databases and how to fix it."""
    return (f"the Redis key prefix {namespace!r} belongs to another deployment: database "
            f"{found.get('database', '?')} (deployment {found['id']}), while this one's database is "
            f"{mask_url(db_url)} (deployment {own_id}). Two deployments on one prefix take each other's jobs. "
            "Give each deployment its own prefix: set redis.namespace (INSTABOOST_REDIS_NAMESPACE), e.g. "
            f"INSTABOOST_REDIS_NAMESPACE={namespace}-2 for this one. If the other database is gone for good "
            f"(deleted or created anew), free the prefix with `redis-cli DEL {owner_key(namespace)}`.")


def owner_value(own_id: str, db_url: str) -> str:
    """Return what claim() stores under owner_key (heartbeats re-claim a prefix Redis lost with it)."""
    return json.dumps({"id": own_id, "database": mask_url(db_url)})


def claim(redis, namespace: str, db_url: str) -> str:
    """Record this database's deployment as the owner of namespace unless one is; return its id.

    Raises DeploymentConflict when another deployment owns namespace.
    """
    own = local_identity(db_url)
    redis.set(owner_key(namespace), owner_value(own, db_url), nx=True)
    found = owner(redis, namespace)
    if found is not None and found["id"] != own:
        raise DeploymentConflict(conflict_message(namespace, found, own, db_url), retry_after=60)
    return own


def claim_if_reachable(redis, namespace: str, db_url: str) -> str | None:
    """claim(), but return None instead of raising when the database or Redis cannot be read (checked later)."""
    try:
        return claim(redis, namespace, db_url)
    except DeploymentConflict:
        raise
    except Exception as exc:  # an outage at start-up: every submission checks again (shared.store.submission)
        log.warning("could not check which deployment owns Redis prefix %r (%s); checking again on submit",
                    namespace, type(exc).__name__)
        return None
