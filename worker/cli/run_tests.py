"""Run a file of test cases into the original / all-layers / middle-layers comparison CSV."""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from shared.csvsafe import neutralize
from shared.errors import ValidationError
from shared.spec import BoostSpec, GenerationParams, GenerationRequest

DEFAULT_CASES = Path(__file__).resolve().parents[1] / "cases" / "default.yaml"
VARIANTS = ("original", "all_layers", "middle_layers")
CHECK_TYPES = ("regex", "contains", "not_contains", "not_contains_regex", "json", "lowercase", "uppercase",
               "max_words")


@dataclass(frozen=True)
class Check:
    """One pass/fail rule applied to an output."""

    type: str
    value: Any = None

    def __call__(self, text: str) -> bool:
        t = text.strip()
        if self.type == "regex":
            return re.search(self.value, t) is not None
        if self.type == "not_contains_regex":
            return re.search(self.value, t) is None
        if self.type == "contains":
            return str(self.value).lower() in t.lower()
        if self.type == "not_contains":
            return str(self.value).lower() not in t.lower()
        if self.type == "json":
            try:
                json.loads(t.removeprefix("```json").removeprefix("```").removesuffix("```").strip())
                return True
            except ValueError:
                return False
        if self.type == "lowercase":
            return t == t.lower() and any(c.isalpha() for c in t)
        if self.type == "uppercase":
            return t == t.upper() and any(c.isalpha() for c in t)
        if self.type == "max_words":
            return 0 < len(t.split()) <= int(self.value)
        raise AssertionError(self.type)


@dataclass(frozen=True)
class Case:
    name: str
    instruction: str
    query: str
    description: str = ""
    checks: tuple[Check, ...] = field(default_factory=tuple)

    def passes(self, text: str) -> bool | None:
        return all(c(text) for c in self.checks) if self.checks else None


def _parse_check(raw, where: str) -> Check:
    if not isinstance(raw, dict) or raw.get("type") not in CHECK_TYPES:
        raise ValidationError(f"{where}: check needs a type, one of {', '.join(CHECK_TYPES)}; got {raw!r}",
                              field="check")
    if raw["type"] in ("regex", "not_contains_regex"):
        try:
            re.compile(str(raw.get("value", "")))
        except re.error as exc:
            raise ValidationError(f"{where}: bad regex {raw.get('value')!r}: {exc}", field="check") from None
    if raw["type"] in ("regex", "contains", "not_contains", "not_contains_regex", "max_words") and "value" not in raw:
        raise ValidationError(f"{where}: check type {raw['type']} needs a value", field="check")
    if raw["type"] == "max_words" and not str(raw["value"]).isdigit():
        raise ValidationError(f"{where}: max_words needs a whole number", field="check")
    return Check(raw["type"], raw.get("value"))


def load_cases(path: str | Path | None = None) -> list[Case]:
    """Read test cases from a YAML or JSON file (a list, or a mapping with a 'cases' list)."""
    import yaml

    path = Path(path) if path else DEFAULT_CASES
    if not path.is_file():
        raise ValidationError(f"cases file {path} does not exist", field="cases")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML is a superset of JSON
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ValidationError(f"cases file {path} is not valid YAML or JSON: {exc}", field="cases") from None
    if isinstance(data, dict):
        data = data.get("cases")
    if not isinstance(data, list) or not data:
        raise ValidationError(f"cases file {path} must hold a non-empty list of cases", field="cases")
    cases, seen = [], set()
    for i, raw in enumerate(data):
        where = f"{path.name} case {i + 1}"
        if not isinstance(raw, dict):
            raise ValidationError(f"{where} must be a mapping", field="cases")
        missing = [k for k in ("name", "instruction", "query") if not str(raw.get(k) or "").strip()]
        if missing:
            raise ValidationError(f"{where} is missing {', '.join(missing)}", field="cases")
        unknown = set(raw) - {"name", "instruction", "query", "description", "check"}
        if unknown:
            raise ValidationError(f"{where} has unknown keys {sorted(unknown)}", field="cases")
        if raw["name"] in seen:
            raise ValidationError(f"{where}: duplicate case name {raw['name']!r}", field="cases")
        seen.add(raw["name"])
        checks = raw.get("check") or []
        checks = checks if isinstance(checks, list) else [checks]
        cases.append(Case(str(raw["name"]), str(raw["instruction"]), str(raw["query"]),
                          str(raw.get("description") or ""), tuple(_parse_check(c, where) for c in checks)))
    return cases


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
                       "check": "; ".join(f"{c.type}:{c.value}" if c.value is not None else c.type
                                          for c in case.checks)}
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
