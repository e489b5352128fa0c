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

The long-join workload (--long-prompt N) measures chunked prefill (``worker.step_token_budget``): rows - 1 rows
decode --long-tokens tokens each and, a few steps in, a row with an N-token prompt joins. Run once with no budget
(the prompt prefilled whole in one step) and once per --budget value, it prints the longest stall of the running
rows (most tokens one step processed while rows were decoding, and that step's seconds), the steps the prompt's
prefill was spread over, the wall time and tokens/s with their ratio to the unchunked run, and whether every
row's text is identical.

    python bench/continuous.py [--jobs 24] [--rows 8] [--min-tokens 16] [--max-tokens 256] [--uniform 64]
                               [--rounds 1] [--seed 0] [--device auto] [--dtype auto] [--schedule-only]
                               [--budget 0] [--long-prompt 0] [--long-tokens 48] [--long-budgets 64,256]
                               [--long-only]
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

    def __init__(self, engine, rows: int, budget: int = 0):
        self.engine, self.rows, self.budget, self.last = engine, rows, budget, None

    def __call__(self, requests):
        self.last = ContinuousDecoder(self.engine, max_rows=self.rows, token_budget=self.budget)
        return self.last.run(requests)


def compare(engine, name: str, lengths: list[int], rows: int, rounds: int, budget: int = 0) -> None:
    requests = workload(engine, lengths)
    cont, got = Continuous(engine, rows, budget), {}
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


LONG_TEXT = ("Berlin lies on the rivers Spree and Havel. Its bridges, markets, museums and old churches tell a "
             "history that runs from a medieval trading town to a divided city and a capital again. ")


def long_request(engine, prompt_tokens: int, tokens: int) -> GenerationRequest:
    """Return a boosted request whose prompt has about prompt_tokens tokens (a long document, then a question)."""
    per = len(engine.tokenizer(LONG_TEXT)["input_ids"])
    query = LONG_TEXT * max(1, prompt_tokens // per) + "Summarise the text above in one sentence."
    ban = tuple((t, -100.0) for t in sorted(engine._eos_ids()))
    return GenerationRequest("Answer only in French.", query, BoostSpec(multiplier=4.0, layers="middle"),
                             GenerationParams(max_new_tokens=tokens, logit_bias=ban))


def long_join(engine, rows: int, requests, long: GenerationRequest, budget: int, join_at: int = 4):
    """Decode requests with max_rows=rows; submit long before step join_at; return (results, decoder, stats)."""
    d = ContinuousDecoder(engine, max_rows=rows, token_budget=budget)
    for i, r in enumerate(requests):
        d.submit(r, i)
    out, step, worst, spread = {}, 0, 0.0, 0
    start = time.perf_counter()
    while not d.idle:
        if step == join_at:
            d.submit(long, "long")
        t0 = time.perf_counter()
        out.update(d.step())
        sync(engine.device)
        seconds = time.perf_counter() - t0
        if d.last.decoded:
            worst = max(worst, seconds)
        if step >= join_at and d.last.prefilled and d.last.decoded:
            spread += 1  # a step that prefilled part of a prompt while rows decoded
        step += 1
    wall = time.perf_counter() - start
    return out, d, {"wall": wall, "worst": worst, "spread": spread}


def compare_long(engine, rows: int, prompt_tokens: int, tokens: int, budgets: list[int]) -> None:
    requests = workload(engine, [tokens] * max(1, rows - 1))
    long = long_request(engine, prompt_tokens, tokens)
    n = len(engine.prompt(long).input_ids)
    useful = tokens * (len(requests) + 1)
    long_join(engine, rows, requests, long, 0)  # warm-up
    base_out, base, b = long_join(engine, rows, requests, long, 0)
    print(f"long-join rows={rows} (running {len(requests)} x {tokens} tokens) long prompt {n} tokens joins at "
          f"step 4 | budget none: longest stall {base.max_stall} tokens/step ({b['worst']:.3f} s), "
          f"{useful / b['wall']:.1f} tokens/s ({b['wall']:.1f} s), prefill chunks {base.chunks}")
    for budget in budgets:
        out, d, c = long_join(engine, rows, requests, long, budget)
        same = sum(out[k].text == base_out[k].text for k in base_out)
        print(f"long-join budget {budget}: longest stall {d.max_stall} tokens/step ({c['worst']:.3f} s; "
              f"{c['worst'] / max(b['worst'], 1e-9):.2f}x unchunked), prompt spread over {c['spread']} decoding steps, "
              f"{useful / c['wall']:.1f} tokens/s ({c['wall']:.1f} s), throughput ratio chunked/unchunked "
              f"{b['wall'] / c['wall']:.2f} | identical texts {same}/{len(base_out)}")


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
    ap.add_argument("--budget", type=int, default=0, help="the continuous contender's step token budget (0: none)")
    ap.add_argument("--long-prompt", type=int, default=0, help="tokens of the long-join workload's prompt (0: skip)")
    ap.add_argument("--long-tokens", type=int, default=48, help="tokens every long-join row decodes")
    ap.add_argument("--long-budgets", default="64,256", help="budgets the long-join workload compares with none")
    ap.add_argument("--long-only", action="store_true", help="run the long-join workload alone")
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
    if args.long_prompt:
        compare_long(engine, args.rows, args.long_prompt, args.long_tokens,
                     [int(b) for b in args.long_budgets.split(",") if b])
    if args.long_only:
        return
    compare(engine, "mixed", mixed, args.rows, args.rounds, args.budget)
    if args.uniform:
        compare(engine, "uniform", [args.uniform] * args.jobs, args.rows, args.rounds, args.budget)


if __name__ == "__main__":
    main()
