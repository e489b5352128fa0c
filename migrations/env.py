"""Alembic environment: the URL comes from alembic's config when set, else from shared.settings."""

from __future__ import annotations

from logging.config import fileConfig

from alembic import context

from shared.db import make_engine
from shared.store.tables import Base

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = Base.metadata


def database_url() -> str:
    """Return the URL to migrate: sqlalchemy.url from the config, else the database.url setting."""
    url = config.get_main_option("sqlalchemy.url")
    if url:
        return url
    from shared.settings import get_settings

    return get_settings().database.url


def _configure(**kw) -> None:
    # SQLite cannot ALTER most things in place; batch mode rebuilds tables instead.
    context.configure(target_metadata=target_metadata, compare_type=True, render_as_batch=True, **kw)


def run_migrations_offline() -> None:
    _configure(url=database_url(), literal_binds=True, dialect_opts={"paramstyle": "named"})
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _configure(connection=connection)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(database_url())
    try:
        with engine.connect() as conn:
            _configure(connection=conn)
            with context.begin_transaction():
                context.run_migrations()
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
