"""How a fault-table row counts: the job stream, the stack it runs on, and the numbers read back from the database.

A row's numbers (see bench/faults.py for the columns): the jobs the web app accepted during the row, how many
succeeded with every variant stored, lost (accepted but never succeeded), duplicated (variants the workers'
logs say were generated and stored twice), and three times counted from the moment the fault ended: until the
first job submitted after it finished, until the queue was back to its normal pace (from that job on, every job
finished within 1.25x + 1 s of the slowest job of a fault-free stream, Stack.calibrate) and until every job
accepted before the fault's end had finished (the backlog: jobs whose messages the fault lost wait for the recovery loop).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import timezone
from pathlib import Path

from bench.fault_stack import (DONE_LINE, FAST_ENV, JOB, JOB_VARIANTS, PrivatePostgres, PrivateRedis, Serve, Worker,
                               child_env, ready_worker, wait_for)

# -- the client side: submissions and what the database says about them ----------------------------------------


@dataclass
class Submit:
    sent: float  # time.time() when the request left
    seconds: float  # until the answer
    status: int  # HTTP status; 0: no answer (connection refused or reset)
    job_id: int | None = None
    retry_after: str | None = None


def submit(base: str, body: dict = JOB, timeout: float = 30) -> Submit:
    """POST /api/jobs once; return what came back."""
    req = urllib.request.Request(base + "/api/jobs", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json", "Accept": "application/json"})
    sent, t0 = time.time(), time.perf_counter()
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            job_id = json.loads(resp.read())["id"]
            return Submit(sent, time.perf_counter() - t0, resp.status, job_id)
    except urllib.error.HTTPError as exc:
        exc.read()
        return Submit(sent, time.perf_counter() - t0, exc.code, retry_after=exc.headers.get("Retry-After"))
    except OSError:
        return Submit(sent, time.perf_counter() - t0, 0)


class Stream(threading.Thread):
    """Submit a job every `every` seconds until stopped (the jobs in flight while a fault strikes)."""

    def __init__(self, base: str, every: float = 1.0):
        super().__init__(daemon=True)
        self.base = base
        self.every = every
        self.submits: list[Submit] = []
        self.paused = threading.Event()  # set: submit nothing until cleared
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            t0 = time.monotonic()
            if not self.paused.is_set():
                self.submits.append(submit(self.base, timeout=10))
            self._stop_event.wait(max(0.0, self.every - (time.monotonic() - t0)))

    def stop(self) -> list[Submit]:
        self._stop_event.set()
        self.join(60)
        return self.submits


def _pg_dsn(db_url: str) -> str:
    return db_url.replace("postgresql+psycopg://", "postgresql://", 1)


def job_states(db_url: str, ids: list[int]) -> dict[int, tuple[str, float | None, int]]:
    """Return {job id: (status, finished_at as epoch seconds or None, runs stored)} from the database."""
    import psycopg

    if not ids:
        return {}
    with psycopg.connect(_pg_dsn(db_url), connect_timeout=5) as conn:
        rows = conn.execute("SELECT j.id, j.status::text, j.finished_at, "
                            "(SELECT count(*) FROM runs r WHERE r.job_id = j.id) FROM jobs j WHERE j.id = ANY(%s)",
                            (list(ids),)).fetchall()
    out = {}
    for job_id, status, finished, runs in rows:
        if finished is not None and finished.tzinfo is None:
            finished = finished.replace(tzinfo=timezone.utc)
        out[job_id] = (status, finished.timestamp() if finished else None, runs)
    return out


def count_rows(db_url: str, table: str) -> int:
    """Return how many rows a table holds."""
    import psycopg

    with psycopg.connect(_pg_dsn(db_url), connect_timeout=5) as conn:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def generated_twice(logs: list[str], ids: set[int]) -> int:
    """Return how many variants of these jobs the workers' logs say were generated and stored more than once."""
    seen: dict[tuple[str, str], int] = {}
    for text in logs:
        for job, variant in DONE_LINE.findall(text):
            if int(job) in ids:
                seen[(job, variant)] = seen.get((job, variant), 0) + 1
    return sum(n - 1 for n in seen.values() if n > 1)


def percentile(values: list[float], q: float) -> float | None:
    """Return the q-th percentile (0-100, interpolated) of values, or None when empty."""
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[min(98, max(0, int(q) - 1))]


ACCEPTED = (200, 201, 202)


@dataclass
class Result:
    fault: str
    submitted: int = 0
    succeeded: int = 0
    lost: int = 0
    duplicated: int = 0
    first_after_s: float | None = None
    normal_after_s: float | None = None
    backlog_s: float | None = None
    refused: dict[str, int] = field(default_factory=dict)  # HTTP status of refused submits ("0": no answer)
    checks: dict[str, bool] = field(default_factory=dict)  # the row's own expectations, True when met
    notes: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.succeeded == self.submitted and all(
            self.checks.values())


class Stack:
    """A private PostgreSQL and Redis with `instaboost serve` on them (kept across rows; rows leave it healthy)."""

    def __init__(self, folder: Path | None = None, env: dict[str, str] | None = None):
        self.folder = Path(folder or tempfile.mkdtemp(prefix="instaboost-faults-"))
        self.env = dict(FAST_ENV if env is None else env)
        self.pg = PrivatePostgres()
        self.redis = PrivateRedis(self.folder)
        self.namespace = f"faults_{uuid.uuid4().hex[:6]}"
        self.serve: Serve | None = None
        self.workers: list[Worker] = []
        self.baseline_s: float | None = None  # the slowest job of a fault-free stream (see calibrate)
        self.every = 1.5  # seconds between two jobs of the stream
        self.scale = 1.0  # times the rows' seconds of stream before and after a fault (the tests' are shorter)

    def start(self) -> "Stack":
        self.pg.init()
        self.db_url = self.pg.create_database("instaboost")
        self.redis.start()
        self.serve = Serve(self.folder, self.child_env()).spawn().wait_ready(self.redis.url, self.namespace)
        return self

    def calibrate(self, seconds: float = 20) -> float:
        """Stream jobs with no fault; keep the slowest one's latency (batches make latencies a saw-tooth)."""
        stream = Stream(self.serve.base, self.every)
        stream.start()
        time.sleep(seconds)
        r = measure(self, "baseline", stream.stop(), time.time(), time.time())
        lat = [x[1] for x in r.extra["latencies"] if x[1] is not None]
        self.baseline_s = max(lat) if lat else None
        return self.baseline_s

    def child_env(self, db_url: str | None = None, namespace: str | None = None) -> dict[str, str]:
        return child_env(db_url or self.db_url, self.redis.url, namespace or self.namespace, self.env)

    def worker(self, name: str, db_url: str | None = None) -> Worker:
        """Start an extra worker on this stack's Redis namespace (and db_url, by default this stack's database)."""
        w = Worker(self.folder, self.child_env(db_url), name)
        self.workers.append(w)
        return w

    def logs(self) -> list[str]:
        return [self.serve.log()] + [w.log() for w in self.workers]

    def worker_pid(self) -> int:
        """Return the pid of serve's worker once it is ready (the heartbeat says its model is loaded)."""
        return wait_for("serve's worker ready", lambda: ready_worker(self.redis.url, self.namespace), 180)["pid"]

    def wait_for_jobs(self, busy: bool, timeout: float = 60) -> None:
        """Wait until some job is running (busy: the fault strikes mid-batch) or none is queued or running (idle)."""
        import psycopg

        query = ("SELECT 1 FROM jobs WHERE status = 'running' LIMIT 1" if busy else
                 "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE status IN ('queued', 'running'))")

        def seen():
            with psycopg.connect(self.db_url.replace("+psycopg", ""), connect_timeout=5) as conn:
                return conn.execute(query).fetchone()
        wait_for("a running job" if busy else "an idle worker", seen, timeout, 0.05)

    def close(self) -> None:
        for w in self.workers:
            w.stop()
        if self.serve is not None:
            self.serve.stop()
        self.redis.stop(kill=True)
        self.pg.remove()


def measure(stack: Stack, name: str, submits: list[Submit], fault_at: float, ended_at: float,
            settle: float = 180) -> Result:
    """Wait (up to settle s) for every accepted job to finish, then compute the row's numbers from the database."""
    accepted = [s for s in submits if s.status in ACCEPTED and s.job_id is not None]
    ids = [s.job_id for s in accepted]
    deadline = time.monotonic() + settle
    while True:
        states = job_states(stack.db_url, ids)
        pending = [i for i in ids if states.get(i, ("queued",))[0] in ("queued", "running")]
        if not pending or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    refused: dict[str, int] = {}
    for s in submits:
        if s.status not in ACCEPTED:
            refused[str(s.status)] = refused.get(str(s.status), 0) + 1
    good = {i for i in ids if states.get(i, ("",))[0] == "succeeded" and states[i][2] == JOB_VARIANTS}
    r = Result(name, submitted=len(ids), succeeded=len(good), lost=len(ids) - len(good),
               duplicated=generated_twice(stack.logs(), set(ids)), refused=refused)
    done = {s.job_id: states[s.job_id][1] - s.sent for s in accepted if s.job_id in good}
    after = [s for s in accepted if s.sent >= ended_at]
    if submits and [s for s in submits if s.sent >= ended_at][:1] != after[:1]:  # refused right after the fault
        r.extra["accepted_again_s"] = round(after[0].sent - ended_at, 1) if after else None
    if after and after[0].job_id in done:
        r.first_after_s = round(after[0].sent + done[after[0].job_id] - ended_at, 1)
    if stack.baseline_s is not None:
        bound = 1.25 * stack.baseline_s + 1
        later = [s for s in accepted if s.sent >= fault_at]
        for k, s in enumerate(later):
            if all(t.job_id in done and done[t.job_id] <= bound for t in later[k:]):
                r.normal_after_s = round(max(0.0, s.sent - ended_at), 1)
                break
    r.extra["latencies"] = [[round(s.sent - fault_at, 1), round(done[s.job_id], 1) if s.job_id in done else None]
                            for s in accepted]
    before = [s for s in accepted if s.sent < ended_at]
    if before and all(s.job_id in done for s in before):
        r.backlog_s = round(max(0.0, max(s.sent + done[s.job_id] for s in before) - ended_at), 1)
    return r


def stream_fault(stack: Stack, name: str, inject, recover, before: float = 6, after: float = 12,
                 every: float | None = None, when: str = "busy", cleanup=None) -> Result:
    """Stream jobs; after `before` s (and once a job runs, or none: when busy or idle) inject() the fault, recover(),
    stream `after` s more."""
    if stack.baseline_s is None:
        stack.calibrate(20 * stack.scale)
    stream = Stream(stack.serve.base, every or stack.every)
    stream.start()
    try:
        time.sleep(before * stack.scale)
        if when == "busy":
            stack.wait_for_jobs(busy=True)
        elif when == "idle":  # no new work until the worker has finished what it has
            stream.paused.set()
            stack.wait_for_jobs(busy=False, timeout=300)
            time.sleep(2)  # its last delivery acknowledged: the worker waits on Redis
        fault_at = time.time()
        notes = inject() or ""
        stream.paused.clear()
        recover()
        ended_at = time.time()
        time.sleep(after * stack.scale)
    finally:
        submits = stream.stop()
        if cleanup:
            cleanup()
    r = measure(stack, name, submits, fault_at, ended_at)
    r.extra["fault_s"] = round(ended_at - fault_at, 1)
    again = r.extra.get("accepted_again_s")
    r.notes = ", ".join(filter(None, [notes, f"fault over in {r.extra['fault_s']} s",
                                      again is not None and f"submits accepted again {again} s after"]))
    r.extra["503_without_retry_after"] = sum(s.status == 503 and not s.retry_after for s in submits)
    return r
