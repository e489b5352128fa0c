"""Run a file of evaluation cases into the original / all-layers / middle-layers comparison CSV."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from shared.csvsafe import neutralize
from shared.errors import InstaBoostError, ValidationError
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
           "original_pass", "all_layers_pass", "middle_layers_pass", "check", "error"]


class RunStopped(InstaBoostError):
    """The run ended early (Ctrl-C or a crash); the rows finished so far are in the output file."""

    status = 500
    title = "Run stopped"

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class RunReport:
    """What a run wrote: rows done out of expected, rows holding an error, pass counts per variant."""

    output: Path
    expected: int
    rows: int = 0
    failed: int = 0
    summary: dict = field(default_factory=lambda: {v: {"passed": 0, "checked": 0} for v in VARIANTS})


def variant_specs(base: BoostSpec) -> dict[str, BoostSpec]:
    """Return the prototype's three variants of a boost: unboosted, all layers, middle layers."""
    return {"original": base.with_(multiplier=1.0, layers="all"), "all_layers": base.with_(layers="all"),
            "middle_layers": base.with_(layers="middle")}


def check_cases(engine, cases: list[Case], base: BoostSpec, params: GenerationParams) -> None:
    """Render and tokenize every case's prompt before any generation; raise one error listing every problem."""
    for spec in variant_specs(base).values():
        spec.resolve_layers(engine.n_layers)  # a bad layer setting fails (or warns about clipping) once, up front
    problems = []
    for i, case in enumerate(cases, 1):
        try:
            engine.prompt(GenerationRequest(case.instruction, case.query, base.with_(layers="all"), params))
        except InstaBoostError as exc:
            problems.append({"field": f"cases[{i}]", "message": f"case {i} ({case.name}): {exc.message}"})
    if problems:
        raise ValidationError(f"{len(problems)} of {len(cases)} cases cannot run; fix them and run again:\n  "
                              + "\n  ".join(p["message"] for p in problems), field="cases", errors=problems)


def run_cases(engine, cases: list[Case], base: BoostSpec, params: GenerationParams, num_runs: int,
              output: Path, progress: bool = True) -> RunReport:
    """Generate every case's three variants num_runs times into the CSV; return what was written.

    Every case is checked first (check_cases). A variant that still fails records its error in the row and
    the run goes on; on Ctrl-C or a crash the rows finished so far are written to ``output`` and RunStopped
    says how many are missing. The file is written under ``output.part`` and renamed, so the final name
    only ever holds complete rows.
    """
    from tqdm import tqdm

    check_cases(engine, cases, base, params)
    variants = variant_specs(base)
    output.parent.mkdir(parents=True, exist_ok=True)
    report = RunReport(output, expected=len(cases) * num_runs)
    tmp = output.with_suffix(output.suffix + ".part")
    f = tmp.open("w", newline="", encoding="utf-8")
    try:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        with tqdm(total=report.expected, disable=not progress, unit="case", desc="run-tests") as bar:
            for run_index in range(num_runs):
                run_params = GenerationParams(params.max_new_tokens, params.temperature, params.top_p,
                                              params.seed + run_index)
                for case in cases:
                    bar.set_postfix_str(case.name)
                    row = _case_row(engine, case, base, variants, run_params, run_index, report)
                    writer.writerow({k: neutralize(val) for k, val in row.items()})
                    f.flush()
                    report.rows += 1
                    bar.update(1)
    except BaseException as exc:  # Ctrl-C included: keep what is finished
        f.close()
        tmp.replace(output)
        missing = report.expected - report.rows
        why = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"stopped by {type(exc).__name__}: {exc}"
        raise RunStopped(f"{why}; wrote the {report.rows} finished rows of {report.expected} to {output} "
                         f"({missing} missing)", exit_code=130 if isinstance(exc, KeyboardInterrupt) else 1) from exc
    f.close()
    tmp.replace(output)
    return report


def _case_row(engine, case: Case, base: BoostSpec, variants: dict[str, BoostSpec], params: GenerationParams,
              run_index: int, report: RunReport) -> dict:
    row = {"test_case": case.name, "run_index": run_index, "model": engine.model_name, "engine": engine.kind,
           "multiplier": base.multiplier, "start_layer": base.start_layer, "num_middle_layers": base.num_middle_layers,
           "head_boost_percentage": round(base.head_fraction * 100, 4), "placement": base.placement,
           "seed": params.seed, "description": case.description, "check": describe_checks(case)}
    errors = []
    for v, spec in variants.items():
        # One by one, so each variant's time is its own.
        try:
            res = engine.generate([GenerationRequest(case.instruction, case.query, spec, params)])[0]
        except Exception as exc:  # noqa: BLE001 - one failing case must not end the run; the row says why
            errors.append(f"{v}: {exc.message if isinstance(exc, InstaBoostError) else f'{type(exc).__name__}: {exc}'}")
            row.update({f"{v}_output": "", f"{v}_length": "", f"{v}_tokens": "", f"{v}_seconds": "", f"{v}_pass": ""})
            continue
        ok = case.passes(res.text)
        row["placement"] = res.placement or base.placement  # the placement used, after fallbacks
        row.update({f"{v}_output": res.text, f"{v}_length": len(res.text), f"{v}_tokens": res.output_tokens,
                    f"{v}_seconds": round(res.seconds, 4), f"{v}_pass": "" if ok is None else ("pass" if ok else "fail")})
        if ok is not None:
            report.summary[v]["checked"] += 1
            report.summary[v]["passed"] += int(ok)
    row["error"] = "; ".join(errors)
    report.failed += bool(errors)
    return row


def default_output(results_dir: str) -> Path:
    """Return results/instaboost_results_<UTC timestamp>.csv."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S")
    return Path(results_dir) / f"instaboost_results_{stamp}.csv"


def describe_checks(case: Case) -> str:
    """Return a case's checks as one CSV cell, e.g. "contains:Berlin; ifeval:change_case:english_lowercase"."""
    return "; ".join(c.label for c in (*case.checks, *case.ifeval))
