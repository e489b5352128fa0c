"""Job-queue throughput as users load it: the real web API, Redis broker, database and one real Celery worker.

For each configuration one worker process (``celery ... --pool solo``, the real default model, SmolLM2-135M,
on the CPU unless --device says otherwise) is started once with that configuration's environment, waited for
(its heartbeat says "ready") and reused for every N. For each N of --jobs, N small jobs are submitted at once
through the Flask app's JSON API (``POST /api/jobs`` on a test client: the same validation, store insert and
Celery message as a user's request), then the database is polled (every 0.1 s) until all are final. Each job is
one case of the built-in default pack (the prototype's test cases, in turn: job i gets case i mod 12) with the default
variants, the prototype's trio (original, all layers and middle layers at ``instaboost.multiplier``), at most --tokens
new tokens, greedy. A run ends at the model's end of turn, so work per job varies with its case (french_only stops
near 8 tokens, pirate_persona uses all 48); every configuration gets the same jobs in the same order, so the same
work. Reported per configuration and N: wall time (first submission to the last job's ``finished_at``), jobs per
minute, p50 and p95 (interpolated) of per-job latency (``finished_at - created_at`` in the jobs table), the time the
N submissions took, the mean tokens per run (equal across configurations when they did the same work) and whether
every job succeeded with exactly one run per variant in one delivery (otherwise a clear error, and exit status 1).
The N=1 row is the latency of a lone job. --json also keeps each job's case, queueing time, latency and tokens.

Configurations (only environment variables differ; the bench knows nothing of the worker's internals):

    off       INSTABOOST_WORKER_MAX_BATCH_ROWS=1         INSTABOOST_WORKER_BATCH_JOBS=0   one job at a time, its
                                                                                           variants one by one
    variants  INSTABOOST_WORKER_MAX_BATCH_ROWS=<rows>    INSTABOOST_WORKER_BATCH_JOBS=0   one job at a time, its
                                                                                           own variants in a batch
    batched   INSTABOOST_WORKER_MAX_BATCH_ROWS=<rows>    INSTABOOST_WORKER_BATCH_JOBS=1   rows of several queued jobs
                                                                                           of the model in a batch

Fairness: every configuration has its own Redis namespace and its own database, so its jobs only reach its own
worker; the three workers are started together but only one has work at a time (an idle worker waits on Redis at
~0 CPU). Rounds are interleaved: for each N, every configuration in turn. Each worker first runs one unmeasured
warm-up job. Databases: ``--database postgres`` (default) creates a throwaway database per configuration on the
tests' server (``INSTABOOST_TEST_PG_ADMIN``, default postgresql://postgres@127.0.0.1:5432/postgres), migrated with
alembic and dropped at the end; ``--database sqlite`` uses a fresh migrated SQLite file per configuration in a
temporary folder. Redis is the tests' (``INSTABOOST_TEST_REDIS``, default redis://127.0.0.1:6379/0). Workers are
stopped (SIGTERM, then SIGKILL), their namespaces purged and the databases dropped even on failure or Ctrl-C.

Targets: batching rows across queued jobs ("batched") should give at least 4x the jobs per minute of "off" at
N=8 (and more at N=32), and beat "variants" (a job's own variants batched) at N>1, while a lone job (N=1) must not
pay for it: its latency under "batched" within 1.1x of "off". The ratios are printed under the table.

    python bench/queue_throughput.py [--jobs 1,8,32] [--tokens 48] [--configs off,variants,batched]
                                     [--max-rows 32] [--database postgres|sqlite] [--threads 2]
                                     [--device auto] [--model smollm2-135m-instruct] [--timeout 3600]
                                     [--json results.json] [--keep-logs]

--threads sets the worker's OMP_NUM_THREADS: 2 on a quiet 2-core machine, 1 on a busy one (two torch threads
fighting other work for 2 cores spin against each other). A full run (1,8,32 jobs, 3 configurations, 48 tokens)
takes about 15 to 20 minutes on a busy 2-core CPU machine with --threads 1 (43 jobs per configuration, warm-up
included, at about 10 s per job one at a time), less as batching pays off; develop with e.g.
``--jobs 1,2 --tokens 8 --configs off,variants``. Worker logs are kept (folder printed) when a run fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from tests.fixtures.store import TEST_REDIS_URL, create_pg_database, drop_pg_database  # noqa: E402
from tests.fixtures.worker import WorkerProcess, purge_namespace  # noqa: E402

CONFIGS = ("off", "variants", "batched")
DEFAULT_MODEL = "smollm2-135m-instruct"


def config_env(name: str, max_rows: int) -> dict[str, str]:
    """Return the worker environment variables that make configuration name."""
    rows = {"off": 1, "variants": max_rows, "batched": max_rows}[name]
    return {"INSTABOOST_WORKER_MAX_BATCH_ROWS": str(rows),
            "INSTABOOST_WORKER_BATCH_JOBS": "1" if name == "batched" else "0"}


def percentile(values: list[float], q: float) -> float:
    """Return the q-th percentile (0..100) of values, linearly interpolated."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


class Lane:
    """One configuration: its database, Redis namespace, worker process and web app."""

    def __init__(self, name: str, args, tmp: Path):
        self.name = name
        self.env = config_env(name, args.max_rows)
        self.namespace = f"instaboost_bench_{uuid.uuid4().hex[:8]}_{name}"
        self.tmp = tmp
        self.database = args.database
        self.model = args.model
        self.db_url: str | None = None
        self.worker: WorkerProcess | None = None
        self.client = None
        self.settings = None
        self.worker_env = dict(self.env, OMP_NUM_THREADS=str(args.threads), INSTABOOST_MODEL_DEVICE=args.device,
                               INSTABOOST_WORKER_MODELS=args.model)

    def create_database(self) -> None:
        from shared.db import upgrade

        if self.database == "postgres":
            self.db_url = create_pg_database(prefix=f"instaboost_test_qbench_{self.name}")
        else:
            self.db_url = f"sqlite:///{self.tmp / f'{self.name}.db'}"
        logging.disable(logging.INFO)  # alembic's "Running upgrade ..." lines
        try:
            upgrade(self.db_url)
        finally:
            logging.disable(logging.NOTSET)

    def spawn(self) -> None:
        self.worker = WorkerProcess(self.db_url, self.namespace, self.tmp / f"worker-{self.name}.log",
                                    env=self.worker_env).spawn()

    def ready(self, timeout: float) -> None:
        from web import create_app

        self.worker.wait_ready(timeout)
        logging.disable(logging.WARNING)  # "no web.api_token set": the app only serves this process
        try:
            app = create_app({"DATABASE_URL": self.db_url, "REDIS_URL": TEST_REDIS_URL,
                              "REDIS_NAMESPACE": self.namespace})
        finally:
            logging.disable(logging.NOTSET)
        self.settings = app.extensions["instaboost"].settings
        self.client = app.test_client()

    def close(self) -> None:
        """Stop the worker, purge the namespace, drop the database; never raise."""
        steps = [lambda: self.worker is not None and self.worker.stop(),
                 lambda: purge_namespace(self.namespace)]
        if self.db_url and self.database == "postgres":
            steps.append(lambda: drop_pg_database(self.db_url))
        for step in steps:
            try:
                step()
            except Exception as exc:  # keep cleaning up the rest
                print(f"[{self.name}] cleanup: {type(exc).__name__}: {exc}", file=sys.stderr)


def job_bodies(n: int, tokens: int, model: str) -> list[dict]:
    """Return n job requests: the default pack's cases in turn, default variants, greedy."""
    from shared.evaluation.cases import load_pack

    cases = load_pack("default")
    return [{"instruction": c.instruction, "query": c.query, "model": model, "max_new_tokens": tokens,
             "temperature": 0, "_case": c.name} for c in (cases[i % len(cases)] for i in range(n))]


def run_round(lane: Lane, n: int, args) -> dict:
    """Submit n jobs at once to lane, wait until all are final; return the row (and the problems found)."""
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.job_request import JobRequest
    from shared.store.tables import FINAL, Job, JobStatus, Run

    bodies = job_bodies(n, args.tokens, args.model)
    t0 = datetime.now(timezone.utc)
    ids = []
    for body in bodies:
        resp = lane.client.post("/api/jobs", json={k: v for k, v in body.items() if k != "_case"})
        if resp.status_code != 202:
            raise RuntimeError(f"[{lane.name}] submit answered {resp.status_code}: {resp.get_data(as_text=True)}")
        ids.append(resp.get_json()["id"])
    submit_s = (datetime.now(timezone.utc) - t0).total_seconds()

    deadline = time.monotonic() + args.timeout
    while True:
        with session_scope(lane.db_url) as s:
            done = s.scalar(select(func.count()).select_from(Job).where(Job.id.in_(ids), Job.status.in_(FINAL)))
        if done == n:
            break
        if not lane.worker.alive():
            raise RuntimeError(f"[{lane.name}] worker died:\n{lane.worker.log_tail()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"[{lane.name}] {n - done} of {n} jobs not final after {args.timeout} s:\n"
                               f"{lane.worker.log_tail()}")
        time.sleep(0.1)

    problems: list[str] = []
    with session_scope(lane.db_url) as s:
        jobs = {j.id: j for j in s.scalars(select(Job).where(Job.id.in_(ids)))}
        runs: dict[int, list] = {i: [] for i in ids}
        for r in s.scalars(select(Run).where(Run.job_id.in_(ids))):
            runs[r.job_id].append(r)
    for job_id, body in zip(ids, bodies):
        job = jobs[job_id]
        request = JobRequest.from_dict({k: v for k, v in body.items() if k != "_case"}, lane.settings)
        want = Counter(v.name for v in request.variants())
        got = Counter(r.variant for r in runs[job_id])
        if job.status != JobStatus.succeeded:
            problems.append(f"job {job_id} is {job.status.value}: {job.error}")
        if got != want:
            problems.append(f"job {job_id} has runs {dict(got)}, wanted one per variant {dict(want)}")
        if job.attempts != 1:
            problems.append(f"job {job_id} took {job.attempts} deliveries")
    latencies = [(j.finished_at - j.created_at).total_seconds() for j in jobs.values()]
    wall = (max(j.finished_at for j in jobs.values()) - t0).total_seconds()
    tokens = [r.output_tokens for rs in runs.values() for r in rs]
    per_job = [{"id": job_id, "case": body["_case"], "status": jobs[job_id].status.value,
                "latency_s": (jobs[job_id].finished_at - jobs[job_id].created_at).total_seconds(),
                "queued_s": ((jobs[job_id].started_at or jobs[job_id].finished_at)
                             - jobs[job_id].created_at).total_seconds(),
                "tokens": {r.variant: r.output_tokens for r in runs[job_id]}} for job_id, body in zip(ids, bodies)]
    return {"config": lane.name, "jobs": n, "wall_s": wall, "jobs_per_min": 60.0 * n / wall,
            "p50_s": percentile(latencies, 50), "p95_s": percentile(latencies, 95), "submit_s": submit_s,
            "runs": len(tokens), "tokens_per_run": sum(tokens) / max(1, len(tokens)), "ok": not problems,
            "problems": problems, "per_job": per_job}


def ratios(rows: list[dict]) -> list[dict]:
    """Return the headline ratios that the rows allow."""
    by = {(r["config"], r["jobs"]): r for r in rows}
    ns = sorted({r["jobs"] for r in rows})
    out = []

    def add(what, a, b, n, key, target=None, higher=True):
        if (a, n) in by and (b, n) in by:
            value = by[(a, n)][key] / by[(b, n)][key]
            met = None if target is None else (value >= target if higher else value <= target)
            out.append({"ratio": what, "jobs": n, "value": value, "target": target, "met": met})

    for n in ns:
        if n > 1:
            add("jobs/min batched / off", "batched", "off", n, "jobs_per_min", 4.0 if n == 8 else None)
    for n in ns:
        if n > 1:
            add("jobs/min batched / variants", "batched", "variants", n, "jobs_per_min")
    for n in ns:
        if n > 1:
            add("jobs/min variants / off", "variants", "off", n, "jobs_per_min")
    if 1 in ns:
        add("lone-job latency batched / off", "batched", "off", 1, "p50_s", 1.1, higher=False)
        add("lone-job latency variants / off", "variants", "off", 1, "p50_s")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", default="1,8,32", help="numbers of concurrent jobs, one round each")
    ap.add_argument("--tokens", type=int, default=48, help="new tokens per variant (greedy)")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"some of {','.join(CONFIGS)}")
    ap.add_argument("--max-rows", type=int, default=32, help="INSTABOOST_WORKER_MAX_BATCH_ROWS of variants/batched")
    ap.add_argument("--database", choices=("postgres", "sqlite"), default="postgres")
    ap.add_argument("--threads", type=int, default=2, help="the worker's OMP_NUM_THREADS (1 on a busy 2-core box)")
    ap.add_argument("--device", default="auto", help="the worker's model.device")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--timeout", type=float, default=3600, help="seconds one round may take")
    ap.add_argument("--json", help="also write the results here as JSON")
    ap.add_argument("--keep-logs", action="store_true", help="keep the worker logs (their folder is printed)")
    args = ap.parse_args()
    ns = [int(x) for x in args.jobs.split(",")]
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = set(names) - set(CONFIGS)
    if unknown or not names or min(ns) < 1:
        ap.error(f"--configs takes some of {','.join(CONFIGS)}; --jobs positive integers")

    # SIGTERM (a CI timeout, kill) cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    tmp = Path(tempfile.mkdtemp(prefix="instaboost-qbench-"))
    lanes = [Lane(name, args, tmp) for name in names]
    rows: list[dict] = []
    started = time.monotonic()
    try:
        for lane in lanes:
            lane.create_database()
        for lane in lanes:
            lane.spawn()
        for lane in lanes:
            lane.ready(timeout=600)
        print(f"model={args.model} device={args.device} threads={args.threads} new_tokens={args.tokens} "
              f"database={args.database} workers ready after {time.monotonic() - started:.0f} s")
        for lane in lanes:
            print(f"  {lane.name:>8}: " + " ".join(f"{k}={v}" for k, v in lane.env.items()))
        for lane in lanes:  # warm-up: first forward passes, allocator, DB connections
            warm = run_round(lane, 1, args)
            if not warm["ok"]:
                raise RuntimeError(f"[{lane.name}] warm-up job failed: {warm['problems']}")
        for n in ns:
            for lane in lanes:
                row = run_round(lane, n, args)
                rows.append(row)
                print(f"  {lane.name:>8} N={n:<3d} wall {row['wall_s']:7.1f} s  {row['jobs_per_min']:7.2f} jobs/min  "
                      f"p50 {row['p50_s']:6.1f} s  p95 {row['p95_s']:6.1f} s  {'ok' if row['ok'] else 'FAILED'}",
                      flush=True)
                for p in row["problems"]:
                    print(f"ERROR [{lane.name} N={n}] {p}", file=sys.stderr)
    except Exception:
        args.keep_logs = True  # the worker logs say why
        raise
    finally:
        for lane in lanes:
            lane.close()
        if args.keep_logs:
            print(f"worker logs kept in {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)

    print()
    print(f"{'config':>8} {'N':>4} {'wall s':>8} {'jobs/min':>9} {'p50 s':>7} {'p95 s':>7} {'submit s':>9} "
          f"{'tok/run':>8}  ok")
    for n in ns:
        for r in (r for r in rows if r["jobs"] == n):
            print(f"{r['config']:>8} {n:4d} {r['wall_s']:8.1f} {r['jobs_per_min']:9.2f} {r['p50_s']:7.1f} "
                  f"{r['p95_s']:7.1f} {r['submit_s']:9.2f} {r['tokens_per_run']:8.1f}  {'yes' if r['ok'] else 'NO'}")
    rs = ratios(rows)
    if rs:
        print()
    for r in rs:
        target = ""
        if r["target"] is not None:
            sign = ">=" if "jobs/min" in r["ratio"] else "<="
            target = f"   target {sign} {r['target']:g}x: {'met' if r['met'] else 'NOT met'}"
        print(f"{r['ratio']:>32} at N={r['jobs']:<3d} {r['value']:6.2f}x{target}")
    ok = all(r["ok"] for r in rows)
    print(f"\ntotal {time.monotonic() - started:.0f} s; "
          + ("every job succeeded with one run per variant" if ok else "SOME JOBS FAILED (see the errors above)"))
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"args": vars(args), "env": {lane.name: lane.env for lane in lanes}, "rows": rows, "ratios": rs,
             "ok": ok}, indent=2))
    return 0 if ok else 1


def run_main(main) -> None:
    """Exit with main()'s status; Ctrl-C exits 130 once the lanes have cleaned up (workers, namespaces, databases)."""
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("interrupted; workers stopped, namespaces purged, databases dropped", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
