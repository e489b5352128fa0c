"""Database engines and sessions for SQLite and PostgreSQL."""

from __future__ import annotations

import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlalchemy import create_engine, event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import StaticPool

ROOT = Path(__file__).resolve().parent.parent
_lock = threading.Lock()
_engines: dict[str, Engine] = {}
_makers: dict[str, sessionmaker] = {}


def _default_url() -> str:
    from shared.settings import get_settings

    return get_settings().database.url


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    # WAL lets the web app read while a worker writes; busy_timeout waits instead of "database is locked".
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.execute("PRAGMA foreign_keys=ON")
    cur.close()


def make_engine(url: str | None = None, **kw) -> Engine:
    """Create an Engine for url (default: the database.url setting) with per-backend options."""
    url = url or _default_url()
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        kw.setdefault("connect_args", {"check_same_thread": False, "timeout": 30})
        if parsed.database in (None, "", ":memory:"):
            kw.setdefault("poolclass", StaticPool)
        engine = create_engine(url, **kw)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    kw.setdefault("pool_pre_ping", True)
    return create_engine(url, **kw)


def get_db_engine(url: str | None = None) -> Engine:
    """Return the process-wide Engine for url, creating it once."""
    url = url or _default_url()
    with _lock:
        if url not in _engines:
            _engines[url] = make_engine(url)
        return _engines[url]


def get_sessionmaker(url: str | None = None) -> sessionmaker:
    """Return the process-wide sessionmaker for url (objects stay usable after commit)."""
    url = url or _default_url()
    engine = get_db_engine(url)
    with _lock:
        if url not in _makers:
            _makers[url] = sessionmaker(bind=engine, expire_on_commit=False)
        return _makers[url]


@contextmanager
def session_scope(url: str | None = None) -> Iterator[Session]:
    """Yield a session that commits on success and rolls back on error."""
    session = get_sessionmaker(url)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close every pooled connection (tests; forked processes)."""
    with _lock:
        for engine in _engines.values():
            engine.dispose()
        _engines.clear()
        _makers.clear()


def alembic_config(url: str | None = None):
    """Return an Alembic Config for this repository, pointed at url when given."""
    from alembic.config import Config

    cfg = Config(str(ROOT / "alembic.ini"))
    cfg.set_main_option("script_location", str(ROOT / "migrations"))
    if url:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(url: str | None = None, revision: str = "head") -> None:
    """Run `alembic upgrade <revision>` on url (default: the database.url setting)."""
    from alembic import command

    command.upgrade(alembic_config(url or _default_url()), revision)
