"""The worker's job modules: dependencies run one way (the Celery shim on top), and each module reads alone."""

from __future__ import annotations

import ast

from tests.helpers import ROOT

JOBS = ROOT / "worker" / "jobs"
# Who may import whom, top down: a module imports only modules listed after it (faults, watch: leaves).
ORDER = ["app", "tasks", "delivery", "followups", "scheduler", "storer", "runner", "intake", "decode", "kinds", "watchdog", "heartbeat",
         "watch", "endings", "faults"]
MAX_LINES = 400


def imports(path) -> set[str]:
    """Return the worker.jobs modules a file imports, anywhere in it."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "worker.jobs":
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("worker.jobs."):
            out.add(node.module.split(".")[2])
        elif isinstance(node, ast.Import):
            out.update(a.name.split(".")[2] for a in node.names if a.name.startswith("worker.jobs."))
    return out


def test_the_job_runner_modules_import_one_way():
    for i, name in enumerate(ORDER):
        above = set(ORDER[:i + 1]) & imports(JOBS / f"{name}.py")
        assert not above, f"worker/jobs/{name}.py imports {sorted(above)}, which sit above it: {ORDER}"


def test_every_worker_jobs_module_is_under_the_line_limit():
    long = {p.name: n for p in JOBS.glob("*.py") if (n := len(p.read_text().splitlines())) >= MAX_LINES}
    assert not long, f"split these modules (at most {MAX_LINES - 1} lines each): {long}"
