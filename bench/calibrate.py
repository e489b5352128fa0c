"""Calibrate the default model on the built-in IFEval-style pack with the paper's protocol; print the table.

    python bench/calibrate.py [--max-new-tokens 64] [--layer-modes all,middle] [--head-fractions 1]
                              [--grid paper] [--test-at recommended] [--limit N] [--csv results/calibrate_ifeval.csv]

The same code path as ``instaboost calibrate --pack ifeval``: every case unboosted once, then M = 3, 5, ...
on the validation half for every setting still above the fluency floor (1.0 of 2), the test half at each
setting's recommended M; rows batched through the fast engine, scored with the unboosted model's
perplexity. Targets (test half): success at the recommended M >= 3x success at M = 1, mean fluency >= 1.0,
copy rate <= 5%. Prints PASS or MISS per target.
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
    ap.add_argument("--pack", default="ifeval")
    ap.add_argument("--model", default=None)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--layer-modes", default="all,middle")
    ap.add_argument("--head-fractions", default="1")
    ap.add_argument("--grid", default="paper")
    ap.add_argument("--test-at", default="recommended", choices=("all", "recommended"))
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--csv", default="results/calibrate_ifeval.csv")
    ap.add_argument("--records", default="results/calibrate_ifeval_records.jsonl")
    a = ap.parse_args()

    import io
    from contextlib import redirect_stdout

    from worker.cli.main import main as cli

    Path(a.csv).parent.mkdir(parents=True, exist_ok=True)
    argv = ["calibrate", "--pack", a.pack, "--grid", a.grid, "--layer-modes", a.layer_modes,
            "--head-fractions", a.head_fractions, "--max-new-tokens", str(a.max_new_tokens),
            "--batch-size", str(a.batch_size), "--threads", str(a.threads), "--test-at", a.test_at,
            "--device", a.device, "--dtype", "float32", "--csv", a.csv, "--records", a.records]
    if a.model:
        argv += ["--model", a.model]
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
    best = next((r for r in rows if r["recommended"] == "True" and r["split"] == "test"), None)
    base = next((r for r in rows if r["split"] == "test" and float(r["multiplier"]) == 1.0), None)
    if best is None or base is None:
        print("targets: MISS (no recommendation with a test row)")
        return 0
    s, s1 = float(best["success"] or 0), float(base["success"] or 0)
    flu, copy = float(best["fluency"] or 0), float(best["copy_rate"] or 0)
    print(f"targets (test half, {best['setting']} M={float(best['multiplier']):g}):")
    print(f"  success {s:.3f} vs 3 x M=1 {3 * s1:.3f}: {'PASS' if s >= 3 * s1 and s > 0 else 'MISS'}")
    print(f"  mean fluency {flu:.2f} >= 1.0: {'PASS' if flu >= 1.0 else 'MISS'}")
    print(f"  copy rate {copy:.1%} <= 5%: {'PASS' if copy <= 0.05 else 'MISS'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
