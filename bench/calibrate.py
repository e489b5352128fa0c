"""Calibrate the default model on the built-in IFEval-style pack with the paper's protocol; print the table.

    python bench/calibrate.py [--max-new-tokens 64] [--layer-modes all,middle] [--head-fractions 1]
                              [--scopes all,generated] [--target-masses none,0.3] [--boilerplate-multipliers 1,0.5]
                              [--model M --placement raw]
                              [--grid paper | --multipliers 1,3,5,7] [--test-at recommended] [--limit N]
                              [--cases FILE] [--copy-ceiling 0.05] [--from-records FILE]
                              [--csv results/calibrate_ifeval.csv]

The same code path as ``instaboost calibrate --pack ifeval``: every case unboosted once, then M = 3, 5, ...
on the validation half for every setting still above the fluency floor (1.0 of 2), the test half at each
setting's recommended M (or at every M with --test-at all); rows batched through the fast engine, scored
with the unboosted model's perplexity. The recommendation maximizes validation effective success (follows
the checks, no instruction copy, no deflection) among the Ms whose copy rate is at most the ceiling.
--from-records scores a records file of an earlier run again (no generation) and writes it to --records.
Targets (test half, at the recommendation): effective success >= 4x effective success at M = 1, copy rate
<= 3%, deflection rate <= 3%, mean fluency >= 1.2. Prints PASS or MISS per target.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
warnings.filterwarnings("ignore")


def main() -> int:
    ap = argparse.ArgumentParser()
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--pack", default=None, help="built-in pack (default ifeval)")
    src.add_argument("--cases", help="a case file instead of a pack")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layer-modes", default="all,middle")
    ap.add_argument("--head-fractions", default="1")
    ap.add_argument("--scopes", default="all", help="comma-separated scopes: all, generated, prompt")
    ap.add_argument("--target-masses", default="none", help="comma-separated target masses or none, e.g. none,0.3")
    ap.add_argument("--boilerplate-multipliers", default="1",
                    help="comma-separated boilerplate multipliers, each in (0, 1], 1 = off, e.g. 1,0.5")
    ap.add_argument("--placement", help="system, prefix or raw (default: the model's)")
    grid = ap.add_mutually_exclusive_group()
    grid.add_argument("--grid", default=None, help="paper (default) or log")
    grid.add_argument("--multipliers", help="comma-separated Ms instead of a named grid")
    ap.add_argument("--test-at", default="recommended", choices=("all", "recommended"))
    ap.add_argument("--copy-ceiling", type=float)
    ap.add_argument("--fluency-floor", type=float)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--from-records", help="score this records file again instead of generating")
    ap.add_argument("--csv", default="results/calibrate_ifeval.csv")
    ap.add_argument("--markdown", action="store_true", help="also print the table as a markdown table")
    ap.add_argument("--records", default="results/calibrate_ifeval_records.jsonl")
    a = ap.parse_args()

    import io
    from contextlib import redirect_stdout

    from worker.cli.main import main as cli

    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    argv = ["calibrate", *(["--cases", a.cases] if a.cases else ["--pack", a.pack or "ifeval"]),
            *(["--multipliers", a.multipliers] if a.multipliers else ["--grid", a.grid or "paper"]),
            "--layer-modes", a.layer_modes, "--head-fractions", a.head_fractions,
            "--scopes", a.scopes, "--target-masses", a.target_masses,
            "--boilerplate-multipliers", a.boilerplate_multipliers,
            "--max-new-tokens", str(a.max_new_tokens), "--batch-size", str(a.batch_size), "--threads", str(a.threads),
            "--test-at", a.test_at, "--device", a.device, "--dtype", "float32", "--csv", a.csv]
    argv += ["--records", a.records]  # with --from-records: the outputs scored again
    if a.from_records:
        argv += ["--from-records", a.from_records]
    if a.fluency_floor is not None:
        argv += ["--fluency-floor", str(a.fluency_floor)]
    if a.copy_ceiling is not None:
        argv += ["--copy-ceiling", str(a.copy_ceiling)]
    if a.model:
        argv += ["--model", a.model]
    if a.placement:
        argv += ["--placement", a.placement]
    if a.limit:
        argv += ["--limit", str(a.limit)]
    buf = io.StringIO()
    with redirect_stdout(buf):
        rc = cli(argv)
    print(buf.getvalue(), end="")
    if rc:
        return rc
    import csv

    rows = list(csv.DictReader(open(a.csv, encoding="utf-8")))
    if a.markdown:
        print(markdown(rows))
    best = next((r for r in rows if r["recommended"] == "True" and r["split"] == "test"), None)
    base = next((r for r in rows if r["split"] == "test" and float(r["multiplier"]) == 1.0), None)
    if best is None or base is None:
        print("targets: MISS (no recommendation with a test row)")
        return 0

    def num(row, key):
        return float(row[key] or 0)

    eff, eff1 = num(best, "effective_success"), num(base, "effective_success")
    flu, copy, defl = num(best, "fluency"), num(best, "copy_rate"), num(best, "deflection_rate")
    print(f"targets (test half, {best['setting']} M={float(best['multiplier']):g}; strict success "
          f"{num(best, 'success'):.3f} vs {num(base, 'success'):.3f} unboosted):")
    print(f"  effective success {eff:.3f} vs 4 x M=1 {4 * eff1:.3f}: {'PASS' if eff >= 4 * eff1 and eff > 0 else 'MISS'}")
    print(f"  copy rate {copy:.1%} <= 3%: {'PASS' if copy <= 0.03 else 'MISS'}")
    print(f"  deflection rate {defl:.1%} <= 3%: {'PASS' if defl <= 0.03 else 'MISS'}")
    print(f"  mean fluency {flu:.2f} >= 1.2: {'PASS' if flu >= 1.2 else 'MISS'}")
    print(f"  effective but degenerate (repetitive or fluency < 1): {_degenerate(a.records, best)}")
    return 0


def markdown(rows: list[dict]) -> str:
    """Return the table CSV's rows as a markdown table, validation and test side by side (* = recommended)."""
    def pct(x: str) -> str:
        return f"{float(x):.0%}" if x not in ("", None) else "-"

    def half(r: dict | None) -> list[str]:
        if r is None:
            return ["-"] * 5
        return [f"{pct(r['success'])} [{pct(r['success_lo'])}, {pct(r['success_hi'])}]",
                f"{pct(r['effective_success'])} [{pct(r['effective_success_lo'])}, {pct(r['effective_success_hi'])}]",
                f"{float(r['fluency']):.2f}" if r["fluency"] else "-", pct(r["copy_rate"]), pct(r["deflection_rate"])]

    cells: dict[tuple[str, float], dict[str, dict]] = {}
    for r in rows:
        cells.setdefault((r["setting"], float(r["multiplier"])), {})[r["split"]] = r
    out = ["| setting | M | val strict | val effective | val flu | val copy | val defl | test strict | "
           "test effective | test flu | test copy | test defl |", "|" + "---|" * 12]
    for (setting, m), parts in cells.items():
        star = " *" if any(p.get("recommended") == "True" for p in parts.values()) else ""
        out.append("| " + " | ".join([setting, f"{m:g}{star}", *half(parts.get("validation")),
                                      *half(parts.get("test"))]) + " |")
    return "\n".join(out)


def _degenerate(path: str, best: dict) -> str:
    """Count the recommendation's test-half effective successes that are repetitive or score fluency below 1."""
    import json

    from shared.evaluation.protocol import setting_label

    with open(path, encoding="utf-8") as fh:
        rs = [r for r in map(json.loads, filter(str.strip, fh)) if r.get("split") == "test"
              and float(r["multiplier"]) == float(best["multiplier"])
              and setting_label(r["layers"], r["head_fraction"], r["scope"], r["target_mass"],
                                r.get("boilerplate_multiplier")) == best["setting"]]
    eff = [r for r in rs if r.get("effective")]
    bad = [r["case"] for r in eff if r.get("repetitive") or (r.get("fluency") or 0) < 1]
    return f"{len(bad)} of {len(eff)} ({', '.join(bad) or 'none'})"


if __name__ == "__main__":
    sys.exit(main())
