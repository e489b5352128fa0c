"""Engine equivalence on any model, device and dtype: fast vs TransformerLens max |Δ logit|.

In fp32 the contract is 1e-4. In bf16 both engines round differently by design (fused SDPA vs eager
matmul + softmax), so the yardstick is the noise floor: the same comparison at M = 1, where the math is
identical and every difference is rounding. A boosted config passes when its difference stays within
3x that floor; a real bug (wrong span, wrong heads, wrong layer) shows up orders of magnitude above it.

--long adds a prompt longer than the model's sliding window (Gemma 3: 512) plus 128 tokens. There fp32
rounding alone makes isolated spikes past 1e-4 (Gemma 3: 7e-4 at one position for M = 3, 7e-5 for M = 1 and
5e-5 for M = 5 on the same prompt; the engines agree exactly in float64), so the long prompt is judged on the
99th percentile over positions of the per-position max |Δ logit|: within max(1e-4, 3x its M = 1 value).
It also decodes the prompt's last tokens one at a time with the KV cache and compares them with one uncached
forward, per engine (a sliding-window cache keeps only the last keys, so key index != position there):
the boosted difference must stay within 3x the M = 1 one (and 1e-4 in fp32).

    python bench/equivalence.py [--model gemma3-270m] [--long] [--device cuda] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

import torch  # noqa: E402

from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine import boost as boost_math  # noqa: E402
from worker.engine.fast import FastEngine, fast_boost  # noqa: E402
from worker.engine.lens import TransformerLensEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

CONFIGS = [dict(multiplier=1.0), dict(multiplier=3.0), dict(multiplier=5.0), dict(multiplier=20.0, layers="middle"),
           dict(multiplier=10.0, head_fraction=0.2)]
INSTRUCTION = "Answer only in French."
QUERY = "What is the capital of Germany? Explain briefly."
PARAGRAPH = ("The history of the city goes back many centuries, with markets, rivers, bridges and old churches "
             "that tell the story of its people, its trade and its wars. ")


def long_query(engine, min_tokens: int) -> str:
    """The query padded with a paragraph until the prompt has at least min_tokens tokens."""
    query = QUERY
    while engine.count_prompt_tokens(INSTRUCTION, query) < min_tokens:
        query = PARAGRAPH + query
    return query


@torch.inference_mode()
def cached_and_full(engine, req: GenerationRequest, steps: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """Under the engine's boost: (the logits of the prompt's last `steps` positions decoded one at a time with
    the KV cache, the same positions from one uncached forward). tests/engine/test_sliding_window.py uses it too."""
    p = engine.prompt(req)
    ids = torch.tensor([p.input_ids], device=engine.device)
    n = ids.shape[1]
    boost = boost_math.build_padded_boost([req.spec], [p.span], n, engine.n_layers, engine.n_heads, engine.device,
                                         keep_identity=True)
    if engine.kind == "fast":
        model, ctx = engine.loaded.model, fast_boost(boost, capacity=n)
    else:
        model, ctx = engine.bridge.original_model, engine.hooked(boost)
    with ctx:
        full = model(input_ids=ids, use_cache=False).logits[0, -steps:].float()
        past = model(input_ids=ids[:, :-steps], use_cache=True).past_key_values
        cached = []
        for k in range(n - steps, n):
            out = model(input_ids=ids[:, k:k + 1], past_key_values=past, use_cache=True)
            past = out.past_key_values
            cached.append(out.logits[0, -1].float())
    return torch.stack(cached), full


def decode_vs_full(engine, req: GenerationRequest, steps: int = 3) -> float:
    """Max |Δ logit| between decoding the prompt's last `steps` tokens with the KV cache and one uncached forward."""
    cached, full = cached_and_full(engine, req, steps)
    return (cached - full).abs().max().item()


def compare(fast, tl, query: str, fp32: bool, long: bool, label: str) -> list[str]:
    """Print each config's max |Δ logit| on one prompt (and on a long one its 99th percentile over positions
    of the per-position max); return the failures."""
    maxes, p99s = {}, {}
    for cfg in CONFIGS:
        req = GenerationRequest(INSTRUCTION, query, BoostSpec(**cfg), GenerationParams(max_new_tokens=16))
        a, b = fast.logits(req), tl.logits(req)
        per_pos = (a - b).abs().max(-1).values
        maxes[str(cfg)], p99s[str(cfg)] = per_pos.max().item(), per_pos.quantile(0.99).item()
        top1 = (a.argmax(-1) == b.argmax(-1)).float().mean().item()
        same = fast.generate([req])[0].text == tl.generate([req])[0].text
        where = f" (at position {int(per_pos.argmax())}), p99 over positions {p99s[str(cfg)]:.3g}" if long else ""
        print(f"  {str(cfg):45} max|Δlogit| = {maxes[str(cfg)]:.3g}{where}   top-1 agreement {top1:.3f}   "
              f"greedy text equal: {same}", flush=True)
    # Long prompts: fp32 rounding has isolated spikes (one position at 10x the rest, not monotonic in M, and
    # 0 in float64), so the bulk is judged, by the 99th percentile; a mapping bug moves every later position.
    values = p99s if long else maxes
    floor = values[str(CONFIGS[0])]
    limit = 1e-4 if fp32 and not long else max(1e-4 if fp32 else 0.0, 3 * max(floor, 1e-6))
    bad = [f"{label} {k}: {v:.3g}" for k, v in values.items() if v > limit]
    what = "p99" if long else "max"
    print(f"  noise floor (M=1, {what}) {floor:.3g}; limit on {what} {limit:.3g}: {'PASS' if not bad else 'FAIL'}")
    return bad


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--long", action="store_true", help="add a prompt longer than the sliding window")
    args = ap.parse_args()
    fast = FastEngine(load_model(args.model, args.device, args.dtype))
    tl = TransformerLensEngine(load_model(args.model, args.device, args.dtype))
    fp32 = "float32" in str(fast.loaded.dtype)
    window = getattr(fast.loaded.model.config, "sliding_window", None)
    print(f"model={args.model} device={fast.device} dtype={fast.loaded.dtype} sliding_window={window}")
    n_short = fast.count_prompt_tokens(INSTRUCTION, QUERY)
    print(f"short prompt ({n_short} tokens), logits over every position:")
    bad = compare(fast, tl, QUERY, fp32, long=False, label="short")
    if args.long:
        query = long_query(fast, (window or 512) + 128)
        n_long = fast.count_prompt_tokens(INSTRUCTION, query)
        print(f"long prompt ({n_long} tokens), logits over every position:")
        bad += compare(fast, tl, query, fp32, long=True, label="long")
        print("long prompt, last 3 tokens decoded with the KV cache vs one uncached forward:")
        for engine in (fast, tl):
            got = {}
            for m in (1.0, 5.0, 20.0):
                req = GenerationRequest(INSTRUCTION, query, BoostSpec(multiplier=m),
                                        GenerationParams(max_new_tokens=8))
                got[m] = decode_vs_full(engine, req)
            limit = max(1e-4 if fp32 else 0.0, 3 * max(got[1.0], 1e-6))
            fails = [f"decode {engine.kind} M={m:g}: {v:.3g}" for m, v in got.items() if v > limit]
            print(f"  {engine.kind:16} " + "   ".join(f"M={m:g}: {v:.3g}" for m, v in got.items())
                  + f"   limit {limit:.3g}: {'PASS' if not fails else 'FAIL'}", flush=True)
            bad += fails
    print("PASS" if not bad else "FAIL " + "; ".join(bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
