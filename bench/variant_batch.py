"""A job's five variants (original, all/middle x M=5, 20): one by one vs one fast-engine batch.

    python bench/variant_batch.py [--tokens 32] [--rounds 3] [--device auto] [--dtype auto]
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

from bench.overhead import fixed_length  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    engine = FastEngine(load_model("smollm2-135m-instruct", args.device, args.dtype))
    fixed_length(engine, args.tokens)
    params = GenerationParams(max_new_tokens=args.tokens)
    specs = [BoostSpec(multiplier=1.0)] + [BoostSpec(multiplier=m, layers=mode) for m in (5.0, 20.0)
                                           for mode in ("all", "middle")]
    reqs = [GenerationRequest("Answer only in French.", "Tell me about Berlin.", s, params) for s in specs]
    runs = {"one by one": lambda: [engine.generate([r]) for r in reqs], "one batch": lambda: engine.generate(reqs)}
    times = interleaved(runs, args.rounds)
    base = statistics.median(times["one by one"])
    print(f"device={engine.device} dtype={engine.loaded.dtype} variants={len(reqs)} new_tokens={args.tokens}")
    for name, ts in times.items():
        print(f"{name:>12}: {statistics.median(ts):7.2f} s per job   speed-up {base / statistics.median(ts):5.2f}x")


if __name__ == "__main__":
    main()
