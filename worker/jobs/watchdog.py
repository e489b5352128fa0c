"""A job's time limits: the soft one (an alarm in the job's thread) and the hard one (a watchdog thread).

The soft limit (``time_limit``) raises ``JobTimeLimit`` in the worker's main thread;
Python only runs that when the thread executes Python code, so a generation stuck in native code (a
kernel, a lock in a C library) never sees it. And Celery's ``task_time_limit`` does nothing in the solo
pool the worker runs. So each delivery also arms a ``Watchdog``: if the job is still inside its limit
``grace_seconds(limit)`` seconds after the hard limit ``worker.job_time_limit``, the watchdog thread fails
the job (owner-checked, so only while this worker still holds it) with a message that says so, removes
the process's heartbeat and ends the process with ``WATCHDOG_EXIT``. ``instaboost serve`` (and compose's
``restart: unless-stopped``) start a fresh worker. Should the failure not be recorded (database
unreachable), the recovery loop finds the job's worker dead and sends the job again, as after ``kill -9``; a
job that always hangs then ends failed as poison after ``worker.max_attempts`` deliveries.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from typing import Callable

from worker.jobs.endings import JobTimeLimit
from worker.jobs.heartbeat import current_heartbeat

log = logging.getLogger("instaboost.worker")

WATCHDOG_EXIT = 70  # EX_SOFTWARE: the process ended itself because a job was stuck past its hard limit


@contextmanager
def time_limit(seconds: float):
    """Raise JobTimeLimit in this thread after seconds (main thread only; else Celery's limits apply)."""
    if seconds <= 0 or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(_signum, _frame):
        raise JobTimeLimit(f"job ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def grace_seconds(limit: float) -> float:
    """Return how long past the hard limit the watchdog waits: 10% of it, at least 5 s, at most 60 s."""
    return max(5.0, min(60.0, limit / 10))


class Watchdog:
    """Call on_expire in a thread after seconds, unless the block it guards ended first (a context manager)."""

    def __init__(self, seconds: float, on_expire: Callable[[], None], name: str = "instaboost-watchdog"):
        self.seconds = seconds
        self.on_expire = on_expire
        self.fired = False
        self._done = False
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.name = name
        self._timer.daemon = True

    def _fire(self) -> None:
        with self._lock:
            if self._done:
                return
            self._done = self.fired = True
        self.on_expire()

    def __enter__(self) -> "Watchdog":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._done = True
        self._timer.cancel()


def end_process(reason: str, code: int = WATCHDOG_EXIT) -> None:
    """Remove this process's heartbeat (so the recovery loop and web stop counting on it) and exit at once.

    ``os._exit``: the main thread is stuck, so neither atexit handlers nor Celery's shutdown could run.
    """
    log.critical("%s; ending this worker process (exit code %d) so a fresh one takes over", reason, code)
    try:
        beat = current_heartbeat()
        if beat is not None:
            beat.stop()
    except Exception as exc:  # Redis away: the key expires on its own after worker.heartbeat_ttl
        log.warning("watchdog: could not remove the heartbeat (%s)", type(exc).__name__)
    for handler in logging.getLogger().handlers + log.handlers:
        try:
            handler.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # noqa: BLE001 - exiting anyway
            pass
    os._exit(code)
