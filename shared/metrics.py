"""A worker process's own numbers (steps, rows, tokens, latencies), carried in its heartbeat.

Why in the heartbeat and not a per-worker /metrics port: workers run on several hosts and under
``docker compose --scale``, where Prometheus would need service discovery to find each one. Every worker
already writes ``<namespace>:worker:<id>`` every ``worker.heartbeat_interval`` seconds; that beat carries
``snapshot()``, and the web app's ``/metrics`` (web/monitoring.py) exposes each live worker's numbers
labelled by worker id. The counters are the process's own since it started (Prometheus' ``rate()``
handles the reset when a worker restarts); a worker's series vanish when its heartbeat expires, as a
per-worker endpoint's would. The numbers are at most one heartbeat interval old; a job's end beats at once.

Torch-free: the worker records (worker/jobs/runner.py), the web reads the snapshot's format.
"""

from __future__ import annotations

import bisect
import threading
import time
from datetime import datetime, timezone

# Upper bounds of the histograms' buckets ("le" in Prometheus); the snapshot carries them.
STEP_ROWS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
TTFT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
FINAL_STATUSES = ("succeeded", "failed", "cancelled")
MAX_HELD = 1000  # jobs remembered between claim and end (one that leaves another way is forgotten, oldest first)


class Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf) and the sum of observed values."""

    def __init__(self, bounds: tuple[float, ...]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        """Count value in the first bucket whose bound is >= value."""
        value = max(0.0, float(value))
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict:
        """Return {"le": bounds, "counts": per-bucket counts, "sum": total} (JSON-ready)."""
        return {"le": list(self.bounds), "counts": list(self.counts), "sum": round(self.sum, 6)}


class WorkerMetrics:
    """Thread-safe counters and histograms of one worker process (the heartbeat thread reads them)."""

    def __init__(self):
        self._lock = threading.Lock()
        self.jobs = {s: 0 for s in FINAL_STATUSES}
        self.steps = 0
        self.rows = 0
        self.tokens = 0
        self.busy_seconds = 0.0
        self.last_tokens_per_second = 0.0
        self.step_rows = Histogram(STEP_ROWS_BUCKETS)
        self.queue_wait = Histogram(LATENCY_BUCKETS)
        self.run_time = Histogram(LATENCY_BUCKETS)
        self.ttft = Histogram(TTFT_BUCKETS)
        self._held: dict[int, tuple[float, float]] = {}  # job id -> (created_at epoch, claimed monotonic)
        self._first_token_pending: set[int] = set()

    def job_started(self, job_id: int, created_at: datetime | None, started_at: datetime | None,
                    completion: bool = False) -> None:
        """Record a claimed job: its wait from submission to claim; a streamed completion then awaits its first token.

        Only streams have a first token the client sees before the end (a non-streamed answer arrives whole:
        its time is the queue wait plus the run time).
        """
        created = created_at.timestamp() if created_at else time.time()
        started = started_at or datetime.now(timezone.utc)
        with self._lock:
            self.queue_wait.observe(started.timestamp() - created)
            self._held.pop(job_id, None)
            self._held[job_id] = (created, time.monotonic())
            while len(self._held) > MAX_HELD:  # handed back or settled outside the cohort: never ended here
                self._first_token_pending.discard(next(iter(self._held)))
                del self._held[next(iter(self._held))]
            if completion:
                self._first_token_pending.add(job_id)

    def first_token(self, job_id: int) -> None:
        """Record a streamed completion's first text: the time since it was submitted (once per job)."""
        with self._lock:
            if job_id not in self._first_token_pending:
                return
            self._first_token_pending.discard(job_id)
            held = self._held.get(job_id)
            if held is not None:
                self.ttft.observe(time.time() - held[0])

    def job_ended(self, job_id: int, status: str) -> None:
        """Record how a claimed job ended (succeeded, failed, cancelled; others only forget it) and its run time."""
        with self._lock:
            held = self._held.pop(job_id, None)
            self._first_token_pending.discard(job_id)
            if status not in self.jobs:
                return  # taken over by another worker: that one counts it
            self.jobs[status] += 1
            if held is not None:
                self.run_time.observe(time.monotonic() - held[1])

    def step(self, rows: int, tokens: int, seconds: float, finished: int | None = None) -> None:
        """Record one decoding round: its rows, the tokens they generated, its wall time and the rows it completed.

        finished defaults to rows (a static round decodes each of its rows to the end); a continuous step decodes
        one token per row, so the rows counter (rows generated) takes only the rows it completed.
        """
        with self._lock:
            self.steps += 1
            self.rows += rows if finished is None else finished
            self.tokens += tokens
            self.busy_seconds += seconds
            self.step_rows.observe(rows)
            if seconds > 0:
                self.last_tokens_per_second = tokens / seconds

    def snapshot(self) -> dict:
        """Return every number as JSON-ready values (what the heartbeat carries under "metrics")."""
        with self._lock:
            return {"jobs": dict(self.jobs), "steps": self.steps, "rows": self.rows, "tokens": self.tokens,
                    "busy_seconds": round(self.busy_seconds, 6),
                    "tokens_per_second": round(self.last_tokens_per_second, 3),
                    "step_rows": self.step_rows.snapshot(), "queue_wait": self.queue_wait.snapshot(),
                    "run_time": self.run_time.snapshot(), "ttft": self.ttft.snapshot()}


# This process's numbers: the cohort runner records into it, the heartbeat publishes it.
METRICS = WorkerMetrics()
