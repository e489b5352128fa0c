"""Alembic migrations: they build the schema on SQLite and PostgreSQL, and agree with the models."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import Column, Integer, MetaData, inspect

from shared.db import ROOT, make_engine, upgrade
from shared.store.tables import Base



def _diff(url: str, metadata: MetaData) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True, "compare_server_default": True})
            return compare_metadata(ctx, metadata)
    finally:
        engine.dispose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_models_match_migrations(backend, sqlite_url, pg_url):
    url = sqlite_url if backend == "sqlite" else pg_url
    assert _diff(url, Base.metadata) == []


def test_drift_is_detected(sqlite_url):
    # The comparison above must be able to fail: a column the migrations lack shows up as a diff.
    drifted = MetaData()
    for table in Base.metadata.tables.values():
        table.to_metadata(drifted)
    drifted.tables["jobs"].append_column(Column("priority", Integer, nullable=True))
    diff = _diff(sqlite_url, drifted)
    assert [d[0] for d in diff] == ["add_column"] and diff[0][3].name == "priority"


def test_alembic_cli_reads_database_url_from_settings(tmp_path):
    db = tmp_path / "cli.db"
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{db}"}
    subprocess.run([sys.executable, "-m", "alembic", "-c", str(ROOT / "alembic.ini"), "upgrade", "head"],
                   cwd=tmp_path, env=env, check=True, capture_output=True, timeout=120)
    engine = make_engine(f"sqlite:///{db}")
    try:
        assert {"jobs", "runs", "alembic_version"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_downgrade_and_upgrade_again(tmp_path):
    from alembic import command

    from shared.db import alembic_config

    url = f"sqlite:///{tmp_path / 'round.db'}"
    upgrade(url)
    command.downgrade(alembic_config(url), "base")
    engine = make_engine(url)
    try:
        assert set(inspect(engine).get_table_names()) == {"alembic_version"}
        upgrade(url)
        inspect(engine).clear_cache()
        assert {"jobs", "runs"} <= set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
