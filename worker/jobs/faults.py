"""The worker's one test seam: faults made to happen at fixed points of a job, switched on by one variable.

Production code calls ``inject(point, session)`` at exactly four points, named by the constants below;
nothing else in the worker knows about tests. ``INSTABOOST_TEST_FAULT`` is unset in every deployment, and
then ``inject`` only reads it and returns. Tests set it on their own process for in-process runs
(``tests/jobs/test_reliability.py``, ``test_tasks.py``) or on a worker subprocess (``tests/jobs/test_faults.py``)
to make a fault happen at a deterministic point, independent of how fast the machine is::

    INSTABOOST_TEST_FAULT="<point>:<action>[:<times>][,<point>:<action>[:<times>]...]"

Points:

- ``variant`` (``STEP``): in ``worker.jobs.runner.CohortRunner._step``, once per round, before its rows
  are generated, inside the step's soft time limit, watchdog and cancel watch (the jobs' ownership was
  checked just before the step); in ``worker.jobs.scheduler.ContinuousRunner._tick`` (``worker.continuous``),
  before a decoding step whenever the count of rows waiting to join has changed since the last step;
- ``fail`` (``RECORD_FAILURE``): in ``worker.jobs.endings.fail``, in the fresh session that records a
  failure, before the UPDATE;
- ``cancel`` (``FINISH_CANCEL``): in ``worker.jobs.endings.finish_cancel``, before a cancel that the runner
  found between two steps is recorded as finished;
- ``store`` (``STORE``): in ``worker.jobs.endings.store_runs``, before each row's run is recorded (by the
  static runner, or the continuous runner's storer thread in its own session).

Actions:

- ``hang_c``: block inside one C call (a read on a pipe nobody writes, with SIGALRM set to restart
  system calls) for up to 10 minutes: the time-limit alarm is never seen, as with native code that is stuck;
- ``hang_py``: spin in Python for up to 60 s, swallowing every ``Exception`` (as careless code would);
- ``sleep=<seconds>``: sleep that long in Python (a slow step, whatever the machine's speed);
- ``error``: raise ``RuntimeError``;
- ``db_error``: run an invalid statement on the session passed (a real database error that is not
  "unreachable": ``ProgrammingError``).

``times`` limits how often an entry fires in one process (default: every time).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from sqlalchemy import text

ENV = "INSTABOOST_TEST_FAULT"
STEP = "variant"  # the names tests write in ENV; see the module docstring for where each is called
RECORD_FAILURE = "fail"
FINISH_CANCEL = "cancel"
STORE = "store"

_fired: dict[str, int] = {}
_lock = threading.Lock()


def _entries(spec: str) -> list[tuple[str, str, int | None, str]]:
    out = []
    for raw in spec.split(","):
        parts = raw.strip().split(":")
        if len(parts) < 2:
            continue
        times = int(parts[2]) if len(parts) > 2 and parts[2] else None
        out.append((parts[0], parts[1], times, raw.strip()))
    return out


def reset() -> None:
    """Forget how often each entry fired (in-process tests that set the variable more than once)."""
    with _lock:
        _fired.clear()


def inject(point: str, session: Any = None) -> None:
    """Make the fault configured for point happen (see the module docstring); nothing when ENV is unset."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    for where, action, times, key in _entries(spec):
        if where != point:
            continue
        with _lock:
            if times is not None and _fired.get(key, 0) >= times:
                continue
            _fired[key] = _fired.get(key, 0) + 1
        _act(action, point, session)


def _act(action: str, point: str, session: Any) -> None:
    if action == "hang_c":
        _hang_in_c(600)
    elif action == "hang_py":
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                time.sleep(0.05)
            except Exception:  # noqa: BLE001 - the careless code this fault stands for
                pass
    elif action.startswith("sleep="):
        time.sleep(float(action.split("=", 1)[1]))
    elif action == "error":
        raise RuntimeError(f"injected error at {point}")
    elif action == "db_error":
        session.execute(text("SELECT no_such_column FROM no_such_table_injected"))
    else:
        raise ValueError(f"{ENV}: unknown action {action!r}")


def _hang_in_c(seconds: float) -> None:
    """Block in one read(2) that SIGALRM restarts instead of interrupting: Python code never runs meanwhile."""
    r, w = os.pipe()
    if threading.current_thread() is threading.main_thread():
        signal.siginterrupt(signal.SIGALRM, False)  # SA_RESTART: the kernel resumes the read after the alarm

    def release() -> None:  # never leave a process stuck for good, whatever happens to the test
        os.write(w, b"x")

    timer = threading.Timer(seconds, release)
    timer.daemon = True
    timer.start()
    try:
        os.read(r, 1)
    finally:
        timer.cancel()
        os.close(r)
        os.close(w)
