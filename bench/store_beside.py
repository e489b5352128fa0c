"""Scoring and storing inline vs beside the decoding loop: the share of a step's time that is not decoding.

Through the real continuous runner (``worker.jobs.scheduler.ContinuousRunner``) and a real PostgreSQL database
(a throwaway one on the tests' server, ``INSTABOOST_TEST_PG_ADMIN``, migrated, dropped at the end), side by side
in one run, rounds interleaved:

- inline (before): a row that ends is scored (perplexity: one forward of the plain model) and stored (its run,
  and the job's success after its last row) in the decoding loop, between two steps;
- beside (after): the row goes to the storer thread (``worker.jobs.storer``) and the loop decodes on.

Each round inserts the same --jobs InstaBoost jobs (an instruction and query each, multipliers 4 and 12 on all
layers: three rows a job, perplexity scored; max_new_tokens drawn from --min-tokens..--max-tokens with --seed)
and runs one delivery of the first, which takes the others into its batch (as a worker whose queue holds them
does), --rows rows at a time, until all are stored. Printed per contender (median over --rounds): wall time
(the delivery, from its claim to its last job's success), jobs per minute, decoding steps, and how that time
splits: decoding forwards, prefills, the rest of the decoder's steps (token choice, joins and leaves), and the
loop outside the decoder (scoring, storing, checks and claims); "not decoding" is everything but the decoding
forwards. Then the ratios beside/inline, and whether both stored the same texts.

    python bench/store_beside.py [--jobs 12] [--rows 8] [--min-tokens 16] [--max-tokens 96] [--rounds 3]
                                 [--seed 0] [--threads N]

On a CPU, perplexity beside the loop competes with decoding for the same cores (torch's threads): the decoding
forwards themselves may get slower, so read the jobs per minute with the shares.
"""

from __future__ import annotations

import argparse
import logging
import os
import random
import statistics
import sys
import time
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from bench.batched_rows import INSTRUCTIONS, QUERIES  # noqa: E402
from shared.db import session_scope, upgrade  # noqa: E402
from shared.settings import load_settings  # noqa: E402
from shared.store import lifecycle  # noqa: E402
from shared.store.tables import JobStatus  # noqa: E402
from tests.fixtures.store import create_pg_database, drop_pg_database, insert_job, load_job  # noqa: E402
from worker.jobs.runner import Options  # noqa: E402
from worker.jobs.scheduler import ContinuousRunner  # noqa: E402

WORKER = "bench@store-beside"
CONTENDERS = {"inline": False, "beside": True}


def job_fields(n: int, lo: int, hi: int, seed: int) -> list[dict]:
    """Return n jobs' request fields: their own instruction and query, lengths drawn from lo..hi."""
    rng = random.Random(seed)
    return [{"instruction": INSTRUCTIONS[i % len(INSTRUCTIONS)], "query": QUERIES[i % len(QUERIES)],
             "multipliers": [4, 12], "layer_modes": ["all"], "max_new_tokens": rng.randint(lo, hi)}
            for i in range(n)]


class Timed(ContinuousRunner):
    """The continuous runner, storing inline or beside as told."""

    def __init__(self, first, opts, beside: bool):
        super().__init__(first, opts)
        self.beside = beside


def one_round(url: str, settings, fields: list[dict], beside: bool) -> dict:
    """Insert the jobs, run one delivery of the first (taking the others in); return its time split."""
    ids = [insert_job(url, f, JobStatus.queued, attempts=0, enqueued=False) for f in fields]
    rest = set(ids[1:])
    opts = Options(worker=WORKER, settings=settings, db_url=url, candidates=lambda model: set(rest),
                   advertise=lambda held: None)
    t0 = time.perf_counter()
    with session_scope(url) as s:
        job = lifecycle.mark_running(s, ids[0], WORKER)
    runner = Timed(job, opts, beside)
    status = runner.run()
    wall = time.perf_counter() - t0
    jobs = [load_job(url, i) for i in ids]
    if status != "succeeded" or any(j.status is not JobStatus.succeeded or len(r) != 3 for j, r in jobs):
        raise SystemExit(f"a job did not succeed with its 3 runs: {[(j.id, j.status.value, len(r)) for j, r in jobs]}")
    d = runner.decoder
    return {"wall": wall, "decode": d.timing["decode"], "prefill": d.timing["prefill"], "step": d.timing["total"],
            "steps": d.steps, "texts": [[x.output_text for x in r] for _, r in jobs]}


def median(rounds: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rounds)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=12)
    ap.add_argument("--rows", type=int, default=8, help="worker.max_batch_rows")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = ap.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    logging.disable(logging.WARNING)  # alembic's and the worker's per-row lines
    url = create_pg_database(prefix="instaboost_test_store_beside")
    try:
        upgrade(url)
        settings = load_settings(overrides={"database.url": url, "worker.max_batch_rows": args.rows,
                                            "worker.continuous": True, "worker.batch_wait": 0})
        fields = job_fields(args.jobs, args.min_tokens, args.max_tokens, args.seed)
        for beside in CONTENDERS.values():  # warm-up: the model's load, kernels, the database's caches
            one_round(url, settings, fields[:2], beside)
        got: dict[str, list[dict]] = {k: [] for k in CONTENDERS}
        for _ in range(args.rounds):  # interleaved: drift in the machine's speed hits both alike
            for name, beside in CONTENDERS.items():
                got[name].append(one_round(url, settings, fields, beside))
    finally:
        drop_pg_database(url)
    import torch

    print(f"jobs={args.jobs} (3 rows each, perplexity scored) rows={args.rows} tokens={args.min_tokens}.."
          f"{args.max_tokens} seed={args.seed} rounds={args.rounds} (median) torch threads={torch.get_num_threads()} "
          f"cpus={os.cpu_count()}")
    print(f"{'':7s} {'wall s':>7s} {'jobs/min':>8s} {'steps':>5s} | {'decoding':>8s} {'prefill':>7s} "
          f"{'rest of step':>12s} {'outside decoder':>15s} | {'not decoding':>12s} {'decode ms/step':>14s}")
    share = {}
    for name, rounds in got.items():
        wall, decode, prefill, step = (median(rounds, k) for k in ("wall", "decode", "prefill", "step"))
        steps = median(rounds, "steps")
        share[name] = 1 - decode / wall
        print(f"{name:7s} {wall:7.2f} {60 * args.jobs / wall:8.2f} {steps:5.0f} | {decode / wall:8.1%} "
              f"{prefill / wall:7.1%} {(step - decode - prefill) / wall:12.1%} {(wall - step) / wall:15.1%} | "
              f"{share[name]:12.1%} {1000 * decode / max(steps, 1):14.2f}")
    a, b = got["inline"], got["beside"]
    idle = {k: median(r, "wall") - median(r, "decode") for k, r in got.items()}  # seconds not decoding
    print(f"beside / inline: jobs per minute {median(a, 'wall') / median(b, 'wall'):.2f}x, share of the time not "
          f"decoding {share['beside'] / share['inline']:.2f}x ({share['inline']:.1%} -> {share['beside']:.1%}), "
          f"time not decoding {idle['beside'] / idle['inline']:.2f}x")
    same = a[-1]["texts"] == b[-1]["texts"]
    print(f"identical stored texts inline vs beside: {'yes' if same else 'NO'}")


if __name__ == "__main__":
    main()
