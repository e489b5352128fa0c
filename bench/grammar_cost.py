"""The grammar's per-token cost: constrained (response_format json_schema) vs unconstrained decoding, ms/token.

One run, same prompt, greedy, exactly --tokens new tokens for both contenders (the schema holds one string of at
least --min-chars characters, so the grammar cannot finish first; min_new_tokens keeps the free row from ending
early), rounds interleaved so drift hits both alike. Prints medians and the ratio constrained / unconstrained,
for a single row and for a batch of --batch rows (each with its own matcher).

    python bench/grammar_cost.py [--tokens 48] [--rounds 5] [--batch 4] [--device auto] [--dtype auto]
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

import torch  # noqa: E402

from bench.overhead import fixed_length, sync  # noqa: E402
from bench.timing import interleaved  # noqa: E402

from shared.response_format import grammar, parse  # noqa: E402
from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

SYSTEM = "Reply in JSON: an object whose text field tells the story."
USER = "Tell me about the history of Berlin, from its founding to the present day."


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--multiplier", type=float, default=5.0)
    ap.add_argument("--min-chars", type=int, default=1000, help="the schema's minLength: longer than --tokens")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()

    fast = FastEngine(load_model(args.model, args.device, args.dtype))
    fixed_length(fast, args.tokens)
    schema = {"type": "object", "additionalProperties": False, "required": ["text"],
              "properties": {"text": {"type": "string", "minLength": args.min_chars}}}
    rule = grammar(parse({"type": "json_schema", "json_schema": {"name": "story", "schema": schema}}, 100_000))
    messages = [ChatMessage.plain("system", SYSTEM, args.multiplier), ChatMessage.plain("user", USER)]
    params = GenerationParams(max_new_tokens=args.tokens)
    free = GenerationRequest.chat(messages, BoostSpec(), params)
    constrained = GenerationRequest.chat(messages, BoostSpec(), params, grammar=rule)
    for req in (free, constrained):  # both decode exactly --tokens tokens, or the ratio means nothing
        got = fast.generate([req])[0]
        assert got.output_tokens == args.tokens, (got.output_tokens, got.text)
    runs = {(rows, name): (lambda rows=rows, req=req: fast.generate([req] * rows))
            for rows in sorted({1, args.batch}) for name, req in (("free", free), ("grammar", constrained))}
    times = interleaved(runs, args.rounds, lambda: sync(fast.device))
    dev = torch.cuda.get_device_name() if fast.device.startswith("cuda") else fast.device
    print(f"model={args.model} device={dev} dtype={fast.loaded.dtype} engine=fast new_tokens={args.tokens} "
          f"rounds={args.rounds} M={args.multiplier} schema=one string, minLength {args.min_chars}")
    for rows in sorted({1, args.batch}):
        free_ms = statistics.median(times[(rows, "free")]) / args.tokens * 1000
        grammar_ms = statistics.median(times[(rows, "grammar")]) / args.tokens * 1000
        print(f"batch {rows:2d}: unconstrained {free_ms:8.3f} ms/token   constrained {grammar_ms:8.3f} ms/token   "
              f"ratio {grammar_ms / free_ms:6.3f}")


if __name__ == "__main__":
    main()
