"""The fault table: each fault an operator meets, injected into `instaboost serve` while jobs stream in.

One private stack (bench/fault_stack.py: a PostgreSQL cluster and a Redis with an append-only file, both in a
temporary folder on free ports, never the machine's shared ones, and `python -m worker.cli.serve` on them with
OMP_NUM_THREADS=1) runs every selected row in turn; each row (bench/fault_rows.py) submits a small job (2 variants,
8 tokens) every 1.5 s through POST /api/jobs, injects its fault mid-batch, recovers, streams on, waits for every
accepted job and prints one row: jobs accepted, succeeded (every variant stored), lost, duplicated (a variant
generated and stored twice, from the workers' logs), seconds from the fault's end until the first job submitted
after it finished ("first after"), until jobs again finished at the pace they had before the fault ("normal
after"), until every job accepted before the fault's end had finished ("backlog"), the submits refused (HTTP status:
count; 0 = no answer) and whether the row's own checks held. Seconds are measurements, never pass/fail.

The stack runs with short heartbeats and sweeps (bench/fault_stack.py FAST_ENV, as the fault tests do: a dead
worker or a lost message is noticed in seconds); ``--default-settings`` runs it with the shipped settings instead
(heartbeat 10 s / TTL 30 s, recovery loop every 15 s, a lost message re-sent after 60 s), what an operator meets.

    python bench/faults.py [--rows fast|slow|all|NAME ...] [--json out.json] [--default-settings] [--keep]

Rows "fast" take under a minute each and run in the test suite (tests/system/test_fault_table.py); "slow" are
redis_down_5min and load_500 (pytest -m faults_slow, run by .ci/run). The exit status is 1 when a row lost or
duplicated a job or failed one of its checks (a defect the row measures, until it is fixed).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` and the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fault_rows import FAULTS, Result, Stack  # noqa: E402

COLUMNS = ("fault", "submitted", "succeeded", "lost", "duplicated", "first after (s)", "normal after (s)",
           "backlog (s)", "refused", "checks", "notes")


def select(names: list[str]) -> list:
    """Return the Fault rows named (or the groups fast, slow, all) in table order."""
    wanted = set()
    for name in names:
        if name == "all":
            wanted |= {f.name for f in FAULTS}
        elif name in ("fast", "slow"):
            wanted |= {f.name for f in FAULTS if f.duration == name}
        elif name in {f.name for f in FAULTS}:
            wanted.add(name)
        else:
            raise SystemExit(f"faults: error: no row {name!r}; choose fast, slow, all or "
                             + ", ".join(f.name for f in FAULTS))
    return [f for f in FAULTS if f.name in wanted]


def _cell(value) -> str:
    return "-" if value is None or value == "" else str(value)


def row_cells(r: Result) -> list[str]:
    """Return a result's cells in COLUMNS order."""
    refused = ", ".join(f"{k}: {v}" for k, v in sorted(r.refused.items())) or "-"
    checks = "; ".join(f"{'ok' if v else 'FAILED'}: {k}" for k, v in r.checks.items()) or "-"
    return [r.fault, str(r.submitted), str(r.succeeded), str(r.lost), str(r.duplicated), _cell(r.first_after_s),
            _cell(r.normal_after_s), _cell(r.backlog_s), refused, checks, _cell(r.notes)]


def markdown(results: list[Result]) -> str:
    """Return the results as a markdown table."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in row_cells(r)) + " |" for r in results]
    return "\n".join(lines)


def run(faults: list, stack: Stack, on_row=None) -> list[Result]:
    """Run the rows in turn on a started stack; a row that raises is reported as failed, the next one still runs."""
    results = []
    for fault in faults:
        t0 = time.monotonic()
        try:
            result = fault.run(stack)
        except Exception as exc:  # a row that could not complete is a row of the table too
            result = Result(fault.name, checks={"row completed": False}, notes=f"{type(exc).__name__}: {exc}"[:300])
        result.extra["row_s"] = round(time.monotonic() - t0, 1)
        results.append(result)
        if on_row:
            on_row(result)
    return results


def machine() -> str:
    """Return a one-line description of this machine (CPU model, cores, OS)."""
    import os

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"{cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, Python {platform.python_version()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/faults.py", description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", default=["fast"], help="fast, slow, all or row names (default fast)")
    parser.add_argument("--json", type=Path, help="also write the results (with extra details) to this file")
    parser.add_argument("--default-settings", action="store_true",
                        help="run serve with the shipped heartbeat/sweeper settings instead of short ones")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder (logs, data) afterwards")
    args = parser.parse_args(argv)
    faults = select(args.rows)
    stack = Stack(env={} if args.default_settings else None)
    print(f"faults: stack in {stack.folder}; rows: {', '.join(f.name for f in faults)}", file=sys.stderr, flush=True)
    try:
        stack.start()
        stack.calibrate()
        results = run(faults, stack, on_row=lambda r: print(f"faults: {' | '.join(row_cells(r))}  "
                                                            f"({r.extra})", file=sys.stderr, flush=True))
    finally:
        stack.close()
        if not args.keep:
            shutil.rmtree(stack.folder, ignore_errors=True)
    print(f"Machine: {machine()}; settings: {'shipped defaults' if args.default_settings else 'short (FAST_ENV)'}; "
          f"fault-free, a job every {stack.every} s finished within {stack.baseline_s} s\n")
    print(markdown(results))
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": [asdict(r) for r in results]}, indent=2))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
