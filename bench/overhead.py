"""Time per generated token: plain HF generate vs the fast engine vs the TransformerLens engine.

One run, same prompt, greedy, a fixed number of new tokens after a warm-up; rounds are interleaved
so drift hits every contender alike. Prints medians and the ratios to plain. The fast engine also runs
with scope "generated" and with a target mass (--target-mass p, alone and after M), printed as ratios to
the plain fast boost (scope all, fixed M) measured in the same rounds, for both engines. Then the cost of the
per-layer attention analysis (a job's ``attention`` option): the fast engine with it off and on, at the
short prompt and at a prompt of about --long-prompt tokens, as ratios to "off" at the same length.

    python bench/overhead.py [--tokens 64] [--rounds 5] [--batch 1] [--device auto] [--dtype auto]
                             [--long-prompt 1000] [--no-analysis] [--target-mass 0.5]
                             [--knob-engines fast,transformerlens] [--no-transformerlens]
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

from bench.timing import interleaved  # noqa: E402

from shared.spec import BoostSpec, GenerationParams, GenerationRequest  # noqa: E402
from worker.engine.fast import FastEngine  # noqa: E402
from worker.engine.lens import TransformerLensEngine  # noqa: E402
from worker.engine.loading import load_model  # noqa: E402

INSTRUCTION = "Answer only in French, in full sentences, and explain your reasoning step by step."
QUERY = "Tell me about the history of Berlin, from its founding to the present day."


def fixed_length(engine, tokens):
    """Make the engine always decode exactly `tokens` tokens, so every contender does the same work."""
    original = engine._gen_kwargs

    def kwargs(params):
        out = original(params)
        out["generation_config"].min_new_tokens = tokens
        return out

    engine._gen_kwargs = kwargs


def sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--multiplier", type=float, default=5.0)
    ap.add_argument("--target-mass", type=float, default=0.5, help="p of the target-mass contenders")
    ap.add_argument("--knob-engines", default="fast,transformerlens",
                    help="engines that run the scope and target-mass contenders (comma-separated)")
    ap.add_argument("--no-transformerlens", action="store_true", help="leave the TransformerLens engine out")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--long-prompt", type=int, default=1000, help="tokens of the long prompt in the analysis part")
    ap.add_argument("--no-analysis", action="store_true", help="skip the attention-analysis part")
    args = ap.parse_args()

    plain = load_model(args.model, args.device, args.dtype)
    fast = FastEngine(load_model(args.model, args.device, args.dtype))
    tl = None if args.no_transformerlens else TransformerLensEngine(load_model(args.model, args.device, args.dtype))
    for e in (fast, tl):
        if e is not None:
            fixed_length(e, args.tokens)
    params = GenerationParams(max_new_tokens=args.tokens)
    req = GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=args.multiplier, layers="all"), params)
    batch = [req] * args.batch
    ids = torch.tensor([fast.prompt(req).input_ids] * args.batch, device=plain.device)

    def run_plain():
        with torch.inference_mode():
            plain.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.tokens,
                                 min_new_tokens=args.tokens, do_sample=False,
                                 pad_token_id=plain.tokenizer.pad_token_id)

    def variant(**spec):
        return [GenerationRequest(INSTRUCTION, QUERY, BoostSpec(**{"multiplier": args.multiplier, "layers": "all",
                                                                    **spec}), params)] * args.batch

    # The new knobs, each against the fixed-M boost (scope all) of the same engine in the same rounds.
    knobs = {"scope=generated": variant(scope="generated"),
             f"target p={args.target_mass:g}": variant(multiplier=1.0, target_mass=args.target_mass),
             f"M+target p={args.target_mass:g}": variant(target_mass=args.target_mass)}
    contenders = {"plain": run_plain, "fast": lambda: fast.generate(batch)}
    if tl is not None:
        contenders["transformerlens"] = lambda: tl.generate(batch)
    engines = args.knob_engines.split(",") if tl is not None else ["fast"]
    for label, reqs in knobs.items():
        if "fast" in engines:
            contenders[f"fast {label}"] = lambda reqs=reqs: fast.generate(reqs)
        if "transformerlens" in engines:
            contenders[f"tl {label}"] = lambda reqs=reqs: tl.generate(reqs)
    times = {k: [t / args.tokens for t in ts]
             for k, ts in interleaved(contenders, args.rounds, lambda: sync(plain.device)).items()}
    dev = torch.cuda.get_device_name() if plain.device.startswith("cuda") else plain.device
    print(f"model={args.model} device={dev} dtype={plain.dtype} batch={args.batch} new_tokens={args.tokens} "
          f"rounds={args.rounds} M={args.multiplier} layers=all")
    base = statistics.median(times["plain"])
    boost = {"fast": statistics.median(times["fast"])}
    if tl is not None:
        boost["tl"] = statistics.median(times["transformerlens"])
    for name, ts in times.items():
        med = statistics.median(ts)
        engine = name.split()[0] if " " in name else None
        versus = f"   ratio to {engine} fixed M {med / boost[engine]:6.3f}" if engine else ""
        print(f"{name:>26}: {med * 1000:8.3f} ms/token   ratio to plain {med / base:6.3f}{versus}")
    if not args.no_analysis:
        analysis_cost(fast, args, params)


def analysis_cost(fast, args, params) -> None:
    """Time a generation with the attention analysis off and on, at the short and the long prompt."""
    filler = " ".join(f"Guideline {i}: keep answers polite, precise and short." for i in range(400))
    long_instruction = fast.tokenizer.decode(fast.tokenizer(filler)["input_ids"][:args.long_prompt])
    prompts = {"short": GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=args.multiplier), params),
               "long": GenerationRequest(long_instruction, QUERY, BoostSpec(multiplier=args.multiplier), params)}
    runs = {(k, on): (lambda k=k, on=on: fast.generate([prompts[k]], attention=on))
            for k in prompts for on in (False, True)}
    times = interleaved(runs, args.rounds, lambda: sync(fast.device))
    print(f"attention analysis (fast engine, {args.tokens} new tokens, median of {args.rounds}):")
    for k, req in prompts.items():
        n = len(fast.prompt(req).input_ids)
        off, on = statistics.median(times[(k, False)]), statistics.median(times[(k, True)])
        print(f"{k:>6} prompt ({n:5d} tokens): off {off:7.3f} s   on {on:7.3f} s   ratio on/off {on / off:6.3f}")


if __name__ == "__main__":
    main()
