"""Per-app services and the per-request database session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from flask import current_app, g
from flask_wtf.csrf import CSRFProtect
from sqlalchemy.orm import Session, sessionmaker
from shared.settings import Settings

csrf = CSRFProtect()  # one per process; web.create_app binds it to the app, web.auth calls its protect()


@dataclass
class Services:
    """What views need: settings, a sessionmaker, a Celery producer and a Redis client."""

    settings: Settings
    sessionmaker: sessionmaker
    celery: Any
    redis: Any


def services() -> Services:
    """Return the current app's services."""
    return current_app.extensions["instaboost"]


def db() -> Session:
    """Return this request's session (closed when the request ends)."""
    if "db" not in g:
        g.db = services().sessionmaker()
    return g.db


def close_session(_exc=None) -> None:
    """Close the request's session, rolling back anything uncommitted."""
    session = g.pop("db", None)
    if session is not None:
        session.close()


def submit_kwargs() -> dict[str, Any]:
    """Return the keyword arguments shared.store.submission.submit_job needs from this app."""
    s = services()
    return {"settings": s.settings, "celery_app": s.celery, "redis": s.redis}


def paging_args(filters) -> dict[str, str]:
    """Return the request's non-empty declared list parameters (filters and limit) for paging links.

    Never every argument: url_for takes some names itself (endpoint, _external, _anchor, _method, _scheme).
    """
    from flask import request

    return {k: v for k in (*filters, "limit") if (v := request.args.get(k))}
