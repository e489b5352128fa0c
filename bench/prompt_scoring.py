"""Prompt scoring (lm-eval's loglikelihood requests) in items/s: 4-choice items, batched vs one row at a time.

Each item is a question with four answers; each choice is one row as lm-eval's local-completions sends it
(context + continuation as token ids, max_tokens 1, echo, logprobs 1), scored by the fast engine's prefill.
"Batched" runs --batch rows per engine call (the worker's batch runner joins rows the same way), "one at a
time" one row per call. Side by side in one run; the ratio is the speed-up.

    python bench/prompt_scoring.py [--items 16] [--batch 8,32] [--rounds 3] [--device auto] [--dtype auto] [--boost]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from bench.overhead import sync  # noqa: E402
from bench.timing import interleaved  # noqa: E402
from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "tests" / "system" / "data" / "mc_facts.jsonl"
DESCRIPTION = "Answer each question with the correct fact.\n\n"


def rows(engine, items: int, boost: bool) -> list[GenerationRequest]:
    """Return 4 scoring rows per item (context + each choice), as lm-eval sends them."""
    docs = [json.loads(line) for line in DATA.read_text().splitlines()][:items]
    tok = engine.tokenizer
    head = len(tok(DESCRIPTION.strip(), add_special_tokens=False)["input_ids"]) - 1
    out = []
    for d in docs:
        ctx = tok(f"{DESCRIPTION}Question: {d['question']}\nAnswer:", add_special_tokens=False)["input_ids"]
        for choice in d["choices"]:
            ids = ctx + tok(f" {choice}", add_special_tokens=False)["input_ids"]
            out.append(GenerationRequest(prompt_ids=tuple(ids), prompt_spans=((0, head, 10.0),) if boost else (),
                                         prompt_logprobs=1, logprobs=1, exact_text=True,
                                         spec=BoostSpec(placement="raw"), params=GenerationParams(max_new_tokens=1)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=16)
    ap.add_argument("--batch", default="8,32")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--boost", action="store_true", help="boost the description (M = 10) in every row")
    args = ap.parse_args()
    engine = FastEngine(load_model(args.model, args.device, args.dtype))
    reqs = rows(engine, args.items, args.boost)
    print(f"model={args.model} device={engine.device} dtype={engine.loaded.dtype} items={args.items} "
          f"rows={len(reqs)} boost={args.boost} rounds={args.rounds} (median)")
    for b in (int(x) for x in args.batch.split(",")):
        runs = {"one at a time": lambda: [engine.generate([r]) for r in reqs],
                "batched": lambda b=b: [engine.generate(reqs[i:i + b]) for i in range(0, len(reqs), b)]}
        times = interleaved(runs, args.rounds, lambda: sync(engine.device))
        alone, batched = statistics.median(times["one at a time"]), statistics.median(times["batched"])
        print(f"batch {b:3d}: one at a time {args.items / alone:8.2f} items/s ({len(reqs) / alone:7.1f} prompts/s)   "
              f"batched {args.items / batched:8.2f} items/s ({len(reqs) / batched:7.1f} prompts/s)   "
              f"speed-up {alone / batched:5.2f}x")


if __name__ == "__main__":
    main()
