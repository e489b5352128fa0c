"""Static vs continuous batching at the same max_batch_rows, on a mixed-length and a uniform-length workload.

Measured at the engine level (worker.engine.continuous over the fast engine), side by side in one run:

- static: the rows in arrival order, max_rows at a time, each batch decoded until its longest row ends
  (FastEngine.generate: what a worker step does today);
- continuous: ContinuousDecoder with max_rows slots; a row leaves when it ends and a waiting row joins.

Every row decodes exactly its own max_new_tokens (its end-of-sequence tokens are banned with logit_bias, in
both contenders), so the workload's lengths are known: the bound is static row-steps (each batch as long as
its longest row, times its rows) over useful row-steps (the sum of the lengths), the most that rescheduling
alone can gain. Printed per workload: jobs/min each way, their ratio, the bound, ratio / bound, and the
share of the continuous decoder's time spent outside decoding forwards (prefill, joins and leaves, token choice).

    python bench/continuous.py [--jobs 24] [--rows 8] [--min-tokens 16] [--max-tokens 256] [--uniform 64]
                               [--rounds 1] [--seed 0] [--device auto] [--dtype auto] [--schedule-only]
"""

from __future__ import annotations

import argparse
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
from bench.overhead import sync  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.continuous import ContinuousDecoder  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402


def workload(engine, lengths: list[int]) -> list[GenerationRequest]:
    """Return one request per length: its own instruction, M and layers (half the rows boosted), EOS banned."""
    ban = tuple((t, -100.0) for t in sorted(engine._eos_ids()))
    out = []
    for i, n in enumerate(lengths):
        spec = BoostSpec(multiplier=(1.0, 4.0)[i % 2], layers=("all", "middle")[(i // 2) % 2])
        out.append(GenerationRequest(INSTRUCTIONS[i % len(INSTRUCTIONS)], QUERIES[i % len(QUERIES)], spec,
                                     GenerationParams(max_new_tokens=n, logit_bias=ban)))
    return out


def bound(lengths: list[int], rows: int) -> tuple[int, int]:
    """Return (static row-steps, useful row-steps) for the lengths decoded rows at a time, in order."""
    static = sum(len(lengths[i:i + rows]) * max(lengths[i:i + rows]) for i in range(0, len(lengths), rows))
    return static, sum(lengths)


def schedule(lengths: list[int], rows: int) -> tuple[int, int]:
    """Return (static forwards, continuous forwards) the lengths need, counted as the two schedulers run them.

    Static: each batch of rows runs as many forwards as its longest row has tokens (a prefill, then decodes).
    Continuous (ContinuousDecoder.step): the running rows decode one token; those done leave; waiting rows
    join with one prefill forward that gives their first token.
    """
    static = sum(max(lengths[i:i + rows]) for i in range(0, len(lengths), rows))
    waiting, running, forwards = list(lengths), [], 0
    while waiting or running:
        if running:
            forwards += 1
            running = [n - 1 for n in running if n > 1]
        if waiting and len(running) < rows:
            joined, waiting = waiting[:rows - len(running)], waiting[rows - len(running):]
            forwards += 1
            running += [n - 1 for n in joined if n > 1]
    return static, forwards


def static_run(engine, requests, rows: int):
    out = []
    for i in range(0, len(requests), rows):
        out += engine.generate(requests[i:i + rows])
    return out


class Continuous:
    """The continuous contender; keeps its last run's decoder for the time split."""

    def __init__(self, engine, rows: int):
        self.engine, self.rows, self.last = engine, rows, None

    def __call__(self, requests):
        self.last = ContinuousDecoder(self.engine, max_rows=self.rows)
        return self.last.run(requests)


def compare(engine, name: str, lengths: list[int], rows: int, rounds: int) -> None:
    requests = workload(engine, lengths)
    cont, got = Continuous(engine, rows), {}
    times = interleaved({"static": lambda: got.__setitem__("static", static_run(engine, requests, rows)),
                         "continuous": lambda: got.__setitem__("continuous", cont(requests))},
                        rounds, sync=lambda: sync(engine.device))
    a, b = got["static"], got["continuous"]  # the last round's results: compared, not run again
    same = sum(x.text == y.text for x, y in zip(a, b))
    static_steps, useful = bound(lengths, rows)
    forwards = schedule(lengths, rows)
    limit = static_steps / useful
    s, c = (statistics.median(times[k]) for k in ("static", "continuous"))
    jpm_s, jpm_c = 60 * len(lengths) / s, 60 * len(lengths) / c
    d = cont.last
    outside = 1 - d.timing["decode"] / max(d.timing["total"], 1e-9)
    print(f"{name:9s} jobs={len(lengths)} rows={rows} tokens={min(lengths)}..{max(lengths)} | "
          f"static {jpm_s:7.2f} jobs/min ({s:6.1f} s) | continuous {jpm_c:7.2f} jobs/min ({c:6.1f} s) | "
          f"ratio {jpm_c / jpm_s:4.2f} | bound {limit:4.2f} (static row-steps {static_steps} / useful {useful}) | "
          f"ratio/bound {jpm_c / jpm_s / limit:4.2f} | forwards static {forwards[0]} continuous {forwards[1]} "
          f"(decoder counted {d.steps} decoding steps), rows/step "
          f"{d.row_steps / max(d.steps, 1):4.1f}, time outside decoding forwards {outside:4.1%} | "
          f"identical texts {same}/{len(lengths)}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=24)
    ap.add_argument("--rows", type=int, default=8, help="max_batch_rows for both contenders")
    ap.add_argument("--min-tokens", type=int, default=16)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--uniform", type=int, default=64, help="every row's length in the uniform workload (0: skip)")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--schedule-only", action="store_true", help="print the workloads' counts without the model")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    mixed = [rng.randint(args.min_tokens, args.max_tokens) for _ in range(args.jobs)]
    if args.schedule_only:
        for name, lengths in (("mixed", mixed), ("uniform", [args.uniform] * args.jobs)):
            static_steps, useful = bound(lengths, args.rows)
            forwards = schedule(lengths, args.rows)
            print(f"{name:9s} jobs={args.jobs} rows={args.rows} tokens={min(lengths)}..{max(lengths)} | bound "
                  f"{static_steps / useful:4.2f} (static row-steps {static_steps} / useful {useful}) | forwards "
                  f"static {forwards[0]} continuous {forwards[1]} (ratio {forwards[0] / forwards[1]:4.2f})")
        return
    engine = FastEngine(load_model(args.model, args.device, args.dtype))
    print(f"model={args.model} device={engine.device} dtype={engine.loaded.dtype} seed={args.seed} "
          f"rounds={args.rounds} (median), started {time.strftime('%H:%M:%S')}")
    compare(engine, "mixed", mixed, args.rows, args.rounds)
    if args.uniform:
        compare(engine, "uniform", [args.uniform] * args.jobs, args.rows, args.rounds)


if __name__ == "__main__":
    main()
