"""Helpers shared by the test folders: the folder markers, the problem-body check, the `instaboost` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBLEM = "application/problem+json"
# The command as a user runs it, offline, with this checkout first on the path (also for its subprocesses).
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, cwd=None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `instaboost ARGS` (as `python -m worker.cli`) and return the finished process, output as text."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                          env={**CLI_ENV, **(env or {})}, cwd=cwd, timeout=timeout)


def assert_problem(resp, status: int, field: str | None = None) -> dict:
    """Check a Flask test response is a problem body (web/errors.py) and return it: the status, the problem
    media type, a title and a detail, the field among its errors when one is named, no traceback, and the
    bad input never echoed back wholesale."""
    assert resp.status_code == status, resp.get_data(as_text=True)[:500]
    assert resp.mimetype == PROBLEM
    body = resp.get_json(force=True)
    assert body["status"] == status and body["title"] and body["detail"]
    assert "Traceback" not in resp.get_data(as_text=True)
    if field is not None:
        assert field in [e["field"] for e in body.get("errors", [])], body
    assert len(resp.get_data()) < 20_000
    return body


def mark_folder(conftest_file: str, *markers, modules: dict[str, list] | None = None):
    """The `pytest_collection_modifyitems` hook of one test folder's conftest.py.

    Every test in the folder (not below it) gets `markers`; the tests of a module named in `modules` get that
    module's markers as well. Markers are names ("services") or pytest.mark objects (pytest.mark.timeout(60)).
    It runs before `-m` selects, so `pytest -m "not slow"` sees these markers like any others.
    """
    folder = Path(conftest_file).resolve().parent
    modules = modules or {}
    unknown = set(modules) - {p.name for p in folder.glob("test_*.py")}
    assert not unknown, f"{folder}/conftest.py marks modules that do not exist: {sorted(unknown)}"

    @pytest.hookimpl(tryfirst=True)
    def pytest_collection_modifyitems(items):
        for item in items:
            path = Path(item.path)
            if path.parent == folder:
                for mark in (*markers, *modules.get(path.name, ())):
                    item.add_marker(mark)

    return pytest_collection_modifyitems


def alias_bomb(levels: int) -> str:
    """Return a case file of nested YAML aliases: each level repeats the one below ten times."""
    lines = ["- &a [" + ", ".join(["lol"] * 10) + "]"]
    for i in range(levels):
        name, below = chr(ord("b") + i), chr(ord("a") + i)
        lines.append(f"- &{name} [" + ", ".join([f"*{below}"] * 10) + "]")
    top = chr(ord("a") + levels)
    lines.append(f"- {{name: x, instruction: *{top}, query: *{top}, checks: *{top}}}")
    return "\n".join(lines)

