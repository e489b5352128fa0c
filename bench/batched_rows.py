"""Rows per second at 1, 8 and 32 rows: one fast-engine batch vs the same rows one by one.

Every row has its own instruction (so its own span), its own M and its own layer mode, as rows from
many jobs would; each decodes exactly --tokens tokens. Timings are side by side in one run; the
speed-up is the ratio. Part of the GPU check (bench/gpu_check.sh), and runs on a CPU too.

    python bench/batched_rows.py [--rows 1,8,32] [--tokens 48] [--rounds 3] [--device auto] [--dtype auto]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from bench.overhead import fixed_length, sync  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

INSTRUCTIONS = ["Answer only in French.", "Use all lowercase letters.", "Reply in exactly three sentences.",
                "Answer like a pirate, with nautical words.", "Never use the letter e if you can avoid it.",
                "End every answer with the word DONE."]
QUERIES = ["Tell me about Berlin.", "How do plants make food?", "What is a good breakfast?",
           "Explain how a bicycle works.", "Why is the sky blue?"]


def rows(n: int, params: GenerationParams) -> list[GenerationRequest]:
    """Return n requests, each with its own instruction, M and layer mode."""
    out = []
    for i in range(n):
        spec = BoostSpec(multiplier=(1.0, 3.0, 5.0, 10.0, 20.0)[i % 5], layers=("all", "middle")[i % 2])
        out.append(GenerationRequest(INSTRUCTIONS[i % len(INSTRUCTIONS)], QUERIES[i % len(QUERIES)], spec, params))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", default="1,8,32")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    engine = FastEngine(load_model(args.model, args.device, args.dtype))
    fixed_length(engine, args.tokens)
    params = GenerationParams(max_new_tokens=args.tokens)
    dev = engine.device
    print(f"model={args.model} device={dev} dtype={engine.loaded.dtype} new_tokens={args.tokens} "
          f"rounds={args.rounds} (median)")
    for n in (int(x) for x in args.rows.split(",")):
        reqs = rows(n, params)
        runs = {"one by one": lambda: [engine.generate([r]) for r in reqs], "batched": lambda: engine.generate(reqs)}
        times = interleaved(runs, args.rounds, lambda: sync(dev))
        alone, batched = statistics.median(times["one by one"]), statistics.median(times["batched"])
        print(f"{n:3d} rows: one by one {n / alone:8.2f} rows/s   batched {n / batched:8.2f} rows/s   "
              f"speed-up {alone / batched:6.2f}x")


if __name__ == "__main__":
    main()
