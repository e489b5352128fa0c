"""Run a file of test cases into the original / all-layers / middle-layers comparison CSV."""

from __future__ import annotations

import csv
from datetime import datetime, timezone
from pathlib import Path

from shared.csvsafe import neutralize
from shared.evaluation.cases import Case, load_cases, load_pack
from shared.spec import BoostSpec, GenerationParams, GenerationRequest

VARIANTS = ("original", "all_layers", "middle_layers")


def read_cases(path: str | Path | None, max_text_chars: int) -> list[Case]:
    """Read a cases file (YAML, JSON or JSONL), or the built-in default pack when no path is given."""
    return load_cases(path, max_text_chars=max_text_chars) if path else load_pack("default")


COLUMNS = ["test_case", "run_index", "original_length", "all_layers_length", "middle_layers_length",
           "original_output", "all_layers_output", "middle_layers_output",
           "model", "engine", "multiplier", "start_layer", "num_middle_layers", "head_boost_percentage",
           "placement", "seed", "description",
           "original_tokens", "all_layers_tokens", "middle_layers_tokens",
           "original_seconds", "all_layers_seconds", "middle_layers_seconds",
           "original_pass", "all_layers_pass", "middle_layers_pass", "check"]


def run_cases(engine, cases: list[Case], base: BoostSpec, params: GenerationParams, num_runs: int,
              output: Path, progress: bool = True) -> dict:
    """Generate every case's three variants num_runs times, write the CSV, return a pass-count summary."""
    from tqdm import tqdm

    variants = {
        "original": base.with_(multiplier=1.0, layers="all"),
        "all_layers": base.with_(layers="all"),
        "middle_layers": base.with_(layers="middle"),
    }
    for spec in variants.values():
        spec.resolve_layers(engine.n_layers)  # fail (or warn about clipping) before any work
    output.parent.mkdir(parents=True, exist_ok=True)
    summary = {v: {"passed": 0, "checked": 0} for v in VARIANTS}
    tmp = output.with_suffix(output.suffix + ".part")
    with tmp.open("w", newline="", encoding="utf-8") as f, \
            tqdm(total=len(cases) * num_runs, disable=not progress, unit="case", desc="run-tests") as bar:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for run_index in range(num_runs):
            run_params = GenerationParams(params.max_new_tokens, params.temperature, params.top_p,
                                          params.seed + run_index)
            for case in cases:
                bar.set_postfix_str(case.name)
                reqs = [GenerationRequest(case.instruction, case.query, variants[v], run_params) for v in VARIANTS]
                # Per-variant timings: the variants run one by one so each time is its own.
                results = {}
                for v, r in zip(VARIANTS, reqs):
                    results[v] = engine.generate([r])[0]
                row = {"test_case": case.name, "run_index": run_index, "model": engine.model_name,
                       "engine": engine.kind, "multiplier": base.multiplier, "start_layer": base.start_layer,
                       "num_middle_layers": base.num_middle_layers,
                       "head_boost_percentage": round(base.head_fraction * 100, 4), "placement": base.placement,
                       "seed": run_params.seed, "description": case.description,
                       "check": describe_checks(case)}
                for v in VARIANTS:
                    res = results[v]
                    ok = case.passes(res.text)
                    row[f"{v}_output"] = res.text
                    row[f"{v}_length"] = len(res.text)
                    row[f"{v}_tokens"] = res.output_tokens
                    row[f"{v}_seconds"] = round(res.seconds, 4)
                    row[f"{v}_pass"] = "" if ok is None else ("pass" if ok else "fail")
                    if ok is not None:
                        summary[v]["checked"] += 1
                        summary[v]["passed"] += int(ok)
                writer.writerow({k: neutralize(val) for k, val in row.items()})
                f.flush()
                bar.update(1)
    tmp.replace(output)  # a crash never leaves a half-written CSV under the final name
    return summary


def default_output(results_dir: str) -> Path:
    """Return results/instaboost_results_<UTC timestamp>.csv."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    return Path(results_dir) / f"instaboost_results_{stamp}.csv"


def describe_checks(case: Case) -> str:
    """Return a case's checks as one CSV cell, e.g. "contains:Berlin; ifeval:change_case:english_lowercase"."""
    return "; ".join(c.label for c in (*case.checks, *case.ifeval))
