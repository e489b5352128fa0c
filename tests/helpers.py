"""Helpers shared by the test folders: the folder markers, the problem-body check, the `instaboost` command."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The command as a user runs it, offline, with this checkout first on the path (also for its subprocesses).
CLI_ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}


def run_cli(*args: str, cwd=None, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    """Run `instaboost ARGS` (as `python -m worker.cli`) and return the finished process, output as text."""
    return subprocess.run([sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True,
                          env={**CLI_ENV, **(env or {})}, cwd=cwd, timeout=timeout)


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
