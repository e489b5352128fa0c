"""Calibration sweeps, the parts shared by ``instaboost calibrate`` (local) and the service's sweeps.

A sweep runs a case set at each M of a grid, per *setting* (a layer mode x a head fraction), and walks
the grid upward with the paper's stop rule (``shared.evaluation.protocol``): after each M, a setting
whose mean validation fluency fell below the floor stops; the sweep ends when every setting stopped or
the grid is done. M = 1 is the unboosted baseline, run once per case and shared by every setting.
This module is torch-free: the records, the stop decision and the text and CSV tables.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from shared.csvsafe import neutralize
from shared.errors import ValidationError
from shared.evaluation import protocol
from shared.evaluation.cases import Case, load_cases, load_pack, parse_cases, split
from shared.fields import LAYER_MODES

TABLE_COLUMNS = ("setting", "multiplier", "split", "n", "success", "success_lo", "success_hi",
                 "effective_success", "effective_success_lo", "effective_success_hi", "fluency",
                 "fluency_lo", "fluency_hi", "copy_rate", "deflection_rate", "repetition", "repetitive_rate",
                 "canned_rate", "empty_rate", "truncated_rate")


@dataclass(frozen=True)
class SweepSetting:
    """One boost setting a sweep calibrates: a layer mode and the share of heads boosted per layer."""

    layers: str
    head_fraction: float = 1.0

    @property
    def label(self) -> str:
        return protocol.setting_label(self.layers, self.head_fraction)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "head_fraction": self.head_fraction}


def sweep_settings(layer_modes: Iterable[str] = ("all",), head_fractions: Iterable[float] = (1.0,)
                   ) -> list[SweepSetting]:
    """Return every layer mode x head fraction, validated (modes in LAYER_MODES, fractions in (0, 1])."""
    layer_modes, head_fractions = list(layer_modes), list(head_fractions)
    errors = []
    for i, m in enumerate(layer_modes):
        if not isinstance(m, str) or m not in LAYER_MODES:
            errors.append({"field": f"layer_modes[{i}]", "message": f"layer mode must be one of "
                           f"{', '.join(LAYER_MODES)}; got {str(m)[:40]!r}"})
    for i, f in enumerate(head_fractions):
        if isinstance(f, bool) or not isinstance(f, (int, float)) or not 0 < f <= 1:
            errors.append({"field": f"head_fractions[{i}]", "message": f"a head fraction is a number in (0, 1]; "
                           f"got {str(f)[:40]!r}"})
    modes = list(dict.fromkeys(m for m in layer_modes if isinstance(m, str)))
    fractions = list(dict.fromkeys(float(f) for f in head_fractions if isinstance(f, (int, float))))
    if not modes:
        errors.append({"field": "layer_modes", "message": "give at least one layer mode"})
    if not fractions:
        errors.append({"field": "head_fractions", "message": "give at least one head fraction"})
    if errors:
        raise ValidationError("; ".join(e["message"] for e in errors), errors=errors)
    return [SweepSetting(m, f) for f in fractions for m in modes]


def boosted_grid(grid: Sequence[float]) -> list[float]:
    """Return the grid's multipliers above the baseline, ascending (M = 1 is the shared unboosted run)."""
    return [float(m) for m in sorted(set(grid)) if float(m) != 1.0]


def load_case_set(pack: str | None = None, cases_file: str | None = None, *, data: str | bytes | None = None,
                  fmt: str | None = None, source: str = "upload", max_text_chars: int = 20000) -> list[Case]:
    """Return the cases of a built-in pack, a case file, or uploaded text (exactly one of them)."""
    given = [x is not None for x in (pack, cases_file, data)]
    if sum(given) != 1:
        raise ValidationError("give exactly one case set: a built-in pack, a case file or uploaded cases",
                              field="cases")
    if pack is not None:
        return load_pack(pack)
    if cases_file is not None:
        return load_cases(cases_file, max_text_chars=max_text_chars)
    return parse_cases(data, fmt or "yaml", source=source, max_text_chars=max_text_chars)


def assign_splits(cases: Sequence[Case]) -> dict[str, str]:
    """Return {case name: "validation" | "test"} by the fixed split (pinned cases where they say)."""
    validation, test = split(list(cases))
    return {**{c.name: "validation" for c in validation}, **{c.name: "test" for c in test}}


def record(scores: Mapping[str, Any], *, case: str, split_: str, multiplier: float, setting: SweepSetting,
           job_id: int | None = None) -> dict[str, Any]:
    """Return one protocol record: a run's scores plus where it sits in the sweep."""
    return {**scores, "case": case, "split": split_, "multiplier": float(multiplier), "layers": setting.layers,
            "head_fraction": setting.head_fraction, "job_id": job_id}


def rescore_records(records: Sequence[Mapping], cases: Sequence[Case], *, max_new_tokens: int,
                    copy_words: int = 6) -> list[dict[str, Any]]:
    """Return records scored again by today's scorers from their stored output text and perplexity.

    For a records file of ``instaboost calibrate --records`` (each record carries ``output``): a scorer added
    since (deflection) then counts in the table without generating again. Records without text are kept as
    they were.
    """
    from shared.evaluation.scorers import score_output

    by_name = {c.name: c for c in cases}
    out = []
    for r in records:
        case = by_name.get(r.get("case"))
        if case is None or not isinstance(r.get("output"), str):
            out.append(dict(r))
            continue
        truncated = r.get("truncated")
        scores = score_output(r["output"], instruction=case.instruction, query=case.query, case=case,
                              perplexity=r.get("perplexity"), k=copy_words, max_new_tokens=max_new_tokens,
                              output_tokens=max_new_tokens if truncated else 0,
                              hit_eos=None if truncated is None else not truncated)
        out.append({**r, **scores})
    return out


def validation_stats(records: Sequence[Mapping], setting: SweepSetting) -> list[dict[str, Any]]:
    """Return one setting's per-M validation rows (success, fluency), the baseline (M = 1) included."""
    rows = protocol.summarize(records, n_boot=1)
    return [r for r in rows if r["split"] == "validation" and r["setting"] == setting.label]


def stopped(records: Sequence[Mapping], setting: SweepSetting, floor: float) -> bool:
    """Tell whether the stop rule ended this setting's walk up the grid (a fluency below the floor)."""
    stats = validation_stats(records, setting)
    return protocol.recommend(stats, floor)["stopped_at"] is not None


def still_going(records: Sequence[Mapping], settings: Sequence[SweepSetting], floor: float) -> list[SweepSetting]:
    """Return the settings whose walk continues after the Ms run so far."""
    return [s for s in settings if not stopped(records, s, floor)]


def result_summary(result: Mapping[str, Any]) -> dict[str, Any]:
    """Return protocol.calibrate's result with the recommendation flattened: best setting, M, test success."""
    best = result.get("best")
    out = {"floor": result["floor"], "copy_ceiling": result.get("copy_ceiling"), "table": result["table"],
           "settings": result["settings"], "best": best, "recommended": None}
    if best:
        test, base = best.get("test") or {}, best.get("baseline_test") or {}
        out["recommended"] = {
            "multiplier": best["multiplier"], "layers": best["layers"], "head_fraction": best["head_fraction"],
            "setting": best["setting"], "validation_success": best["success"],
            "validation_effective_success": best.get("effective_success"), "validation_fluency": best["fluency"],
            "validation_copy_rate": best.get("copy_rate"),
            "test_success": test.get("success"), "test_success_ci": [test.get("success_lo"), test.get("success_hi")],
            "test_effective_success": test.get("effective_success"),
            "test_effective_success_ci": [test.get("effective_success_lo"), test.get("effective_success_hi")],
            "test_fluency": test.get("fluency"), "test_copy_rate": test.get("copy_rate"),
            "test_deflection_rate": test.get("deflection_rate"),
            "test_n": test.get("n"), "baseline_test_success": base.get("success"),
            "baseline_test_effective_success": base.get("effective_success"),
            "reason": best["reason"]}
    return out


def _fmt(x: Any, pct: bool = False) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x * 100:.0f}%" if pct else f"{x:.2f}"
    return str(x)


def _ci(lo: Any, hi: Any, pct: bool = False) -> str:
    if lo is None or hi is None:
        return ""
    return f" [{_fmt(lo, pct)}, {_fmt(hi, pct)}]"


def format_table(summary: Mapping[str, Any]) -> str:
    """Return the per-M table (validation and test side by side) and the recommendation as text."""
    lines = []
    best = summary.get("best") or {}
    by_key: dict[tuple[str, float], dict[str, dict]] = {}
    for row in summary["table"]:
        by_key.setdefault((row["setting"], row["multiplier"]), {})[row["split"]] = row

    def half(r: Mapping) -> str:
        strict = _fmt(r.get("success"), True) + _ci(r.get("success_lo"), r.get("success_hi"), True)
        eff = _fmt(r.get("effective_success"), True) + _ci(r.get("effective_success_lo"),
                                                           r.get("effective_success_hi"), True)
        return (f"{strict:>16} {eff:>16} {_fmt(r.get('fluency')):>4} {_fmt(r.get('copy_rate'), True):>4} "
                f"{_fmt(r.get('deflection_rate'), True):>4}")

    cols = f"{'strict':>16} {'effective':>16} {'flu':>4} {'copy':>4} {'defl':>4}"
    header = f"{'setting':<22} {'M':>5} | {'validation':<{len(cols)}} | test"
    sub = f"{'':<22} {'':>5} | {cols} | {cols}"
    lines += [header, sub, "-" * len(sub)]
    for (setting, m), parts in by_key.items():
        v, t = parts.get("validation", {}), parts.get("test", {})
        mark = " *" if best and setting == best.get("setting") and m == best.get("multiplier") else ""
        lines.append(f"{setting:<22} {m:>5g} | {half(v)} | {half(t)}{mark}")
    lines.append("")
    for s in summary["settings"]:
        lines.append(f"{s['setting']}: {s['reason']}")
    rec = summary.get("recommended")
    if rec:
        def gain(x: Any, base: Any) -> str:
            return (f", {x / base:.1f}x the unboosted {_fmt(base, True)}" if base and x is not None else
                    f" (unboosted: {_fmt(base, True)})")

        lines.append(
            f"recommended: M={rec['multiplier']:g} on {rec['setting']} layers; test effective success "
            f"{_fmt(rec.get('test_effective_success'), True)}"
            f"{_ci(*rec.get('test_effective_success_ci', [None, None]), pct=True)}"
            f"{gain(rec.get('test_effective_success'), rec.get('baseline_test_effective_success'))}, strict "
            f"{_fmt(rec['test_success'], True)}{_ci(*rec['test_success_ci'], pct=True)}"
            f"{gain(rec['test_success'], rec['baseline_test_success'])}; test fluency {_fmt(rec['test_fluency'])}, "
            f"copy rate {_fmt(rec['test_copy_rate'], True)}, deflection rate "
            f"{_fmt(rec.get('test_deflection_rate'), True)} (n={rec['test_n']}, * in the table)")
    else:
        lines.append("recommended: none (no setting has an M at or above the fluency floor with a success rate)")
    return "\n".join(lines)


def table_csv(summary: Mapping[str, Any]) -> str:
    """Return the per-(setting, M, split) table as CSV text, with a recommended column (formulas neutralized)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([*TABLE_COLUMNS, "recommended"])
    best = summary.get("best") or {}
    for row in summary["table"]:
        rec = bool(best) and row["setting"] == best.get("setting") and row["multiplier"] == best.get("multiplier")
        w.writerow([neutralize(c) for c in (*(row.get(c) for c in TABLE_COLUMNS), rec)])
    return buf.getvalue()


# -- the sweep request (API body or form) -------------------------------------------------------------

SWEEP_JOB_FIELDS = ("model", "max_new_tokens", "placement", "start_layer", "num_middle_layers", "seed",
                    "temperature", "top_p", "engine", "score_perplexity")
# The JSON API takes a pack or a map of cases by name; the form may also upload a case file (cases_text).
API_SWEEP_KEYS = ("pack", "cases", "grid", "layer_modes", "head_fractions", "fluency_floor", "limit",
                  *SWEEP_JOB_FIELDS)
SWEEP_KEYS = (*API_SWEEP_KEYS, "cases_text", "cases_format")
CASE_FORMATS = ("yaml", "json", "jsonl")
API_CASE_NAME = r"[A-Za-z0-9][A-Za-z0-9 _.:()-]{0,99}"
API_CASE_KEYS = ("instruction", "query", "description", "checks", "ifeval", "split")
MAX_API_CASES = 100
MAX_SETTINGS_VALUES = 8
MAX_DESCRIPTION = 2000


def _api_cases(raw: Any, v) -> list[Case]:
    """Read the JSON API's cases, a map {name: {instruction, query, description?, checks?, ifeval?, split?}}."""
    import re

    from shared.evaluation.checks import Check, IfevalCheck
    from shared.fields import BY_NAME
    from shared.validation import brief

    if not isinstance(raw, Mapping) or not 2 <= len(raw) <= MAX_API_CASES:
        v.error("cases", f"cases must be an object of 2 to {MAX_API_CASES} cases keyed by name, got {brief(raw)}")
        return []
    out = []
    for name, case in raw.items():
        where = f"cases.{str(name)[:64]}"
        if not re.fullmatch(API_CASE_NAME, name):
            v.error(where, f"case name {brief(name)} must be 1-100 letters, digits, spaces or _ . : ( ) -, "
                           "starting with a letter or digit")
            continue
        if not isinstance(case, Mapping):
            v.error(where, f"case {name!r} must be an object with instruction and query")
            continue
        extra = [str(k) for k in case if k not in API_CASE_KEYS]
        if extra:
            v.error(where, f"case {name!r} has unknown keys {extra[:5]}; a case takes {', '.join(API_CASE_KEYS)}")
            continue
        before = len(v.errors)
        instruction = v.text(BY_NAME["instruction"], case.get("instruction"))
        query = v.text(BY_NAME["query"], case.get("query"))
        description = case.get("description")
        if description is not None and (not isinstance(description, str) or "\x00" in description
                                        or len(description) > MAX_DESCRIPTION):
            v.error(where, f"case {name!r}: description must be text of at most {MAX_DESCRIPTION} characters "
                           "without NUL")
        checks = v.checks(BY_NAME["checks"], case.get("checks") if case.get("checks") is not None else [])
        ifeval = v.ifeval(BY_NAME["ifeval"], case.get("ifeval") if case.get("ifeval") is not None else [])
        split_ = case.get("split")
        if split_ not in (None, "validation", "test"):
            v.error(where, f"case {name!r}: split must be validation or test (or null), got {brief(split_)}")
        for e in v.errors[before:]:  # name the case in the errors its fields raised
            if not e["field"].startswith("cases."):
                e["field"], e["message"] = f"{where}.{e['field']}", f"case {name!r}: {e['message']}"
        if len(v.errors) == before:
            out.append(Case(name, instruction, query, description or "",
                            tuple(Check(c["type"], c.get("value")) for c in checks),
                            tuple(IfevalCheck(c["id"], c["kwargs"]) for c in ifeval), split_))
    return out


@dataclass(frozen=True)
class SweepRequest:
    cases: tuple[Case, ...]
    pack: str | None
    grid: tuple[float, ...]
    settings: tuple[SweepSetting, ...]
    floor: float
    params: dict


def parse_sweep_request(data: Any, settings: Mapping[str, Any], strict: bool = True) -> SweepRequest:
    """Validate a sweep request (JSON body or form); raise one ValidationError listing every problem."""
    from shared.evaluation.cases import PACKS_BY_NAME
    from shared.fields import BY_NAME
    from shared.validation import Validator, brief

    if not isinstance(data, Mapping):
        raise ValidationError("the request body must be a JSON object naming a pack or holding cases",
                              errors=[{"field": "body", "message": "expected a JSON object"}])
    v = Validator(settings, strict)
    allowed = API_SWEEP_KEYS if strict else SWEEP_KEYS
    for key in [str(k) for k in data if k not in allowed][:10]:
        v.error(key[:64], f"unknown field {brief(key)}; allowed fields: {', '.join(allowed)}")
    given = {k: val for k, val in data.items() if k in allowed and val is not None and (strict or val != "")}
    sources = [k for k in ("pack", "cases", "cases_text") if k in given]
    cases: list[Case] = []
    pack = None
    if len(sources) != 1:
        v.error("pack", "give exactly one case set: pack (a built-in pack: " + ", ".join(PACKS_BY_NAME) +
                "), cases (a list of case objects) or cases_text (a YAML, JSON or JSONL case file)")
    else:
        try:
            if sources == ["pack"]:
                if not isinstance(given["pack"], str) or given["pack"] not in PACKS_BY_NAME:
                    raise ValidationError(f"pack must be one of {', '.join(PACKS_BY_NAME)}; got "
                                          f"{brief(given['pack'])}", field="pack")
                pack = given["pack"]
                cases = load_case_set(pack=pack)
            elif sources == ["cases"]:
                cases = _api_cases(given["cases"], v)
            else:
                fmt = given.get("cases_format", "yaml")
                if fmt not in CASE_FORMATS:
                    raise ValidationError(f"cases_format must be one of {', '.join(CASE_FORMATS)}; got {brief(fmt)}",
                                          field="cases_format")
                if not isinstance(given["cases_text"], str):
                    raise ValidationError("cases_text must be the text of a case file", field="cases_text")
                cases = parse_cases(given["cases_text"], fmt, source="cases_text",
                                    max_text_chars=settings["limits.max_text_chars"])
        except ValidationError as exc:
            for e in exc.errors or [{"field": exc.field or "cases", "message": exc.message}]:
                v.error(e["field"], e["message"])
    limit = given.get("limit")
    if limit is not None:
        try:
            from shared.validation import as_int

            n = as_int(limit) if not (strict and isinstance(limit, str)) else None
        except (TypeError, ValueError, OverflowError):
            n = None
        if n is None or n < 2:
            v.error("limit", f"limit must be an integer >= 2 (a validation and a test case), got {brief(limit)}")
        else:
            cases = cases[:n]
    if cases and len(cases) < 2:
        v.error("cases", "a sweep needs at least 2 cases (a validation and a test half)")
    grid: tuple[float, ...] = ()
    raw_grid = given.get("grid", "paper")
    if isinstance(raw_grid, str) and not strict and raw_grid not in protocol.GRIDS:
        raw_grid = [p.strip() for p in raw_grid.split(",") if p.strip()]
        try:
            raw_grid = [float(p) for p in raw_grid]
        except ValueError:
            pass
    try:
        if not isinstance(raw_grid, (str, list)):
            raise ValidationError(f"grid must be paper, log or a list of multipliers, got {brief(raw_grid)}",
                                  field="grid")
        grid = protocol.get_grid(raw_grid)
        if any(m > 1e6 for m in grid):
            raise ValidationError("grid multipliers must be <= 1e6", field="grid")
        if len(grid) > 40:
            raise ValidationError("a grid holds at most 40 multipliers", field="grid")
        if not boosted_grid(grid):
            raise ValidationError("the grid needs at least one M other than 1", field="grid")
    except ValidationError as exc:
        v.error("grid", exc.message)

    def listed(key: str, default: list) -> list:
        value = given.get(key, default)
        if isinstance(value, str) and not strict:
            value = [p.strip() for p in value.split(",") if p.strip()]
        if not isinstance(value, list) or not value or len(value) > MAX_SETTINGS_VALUES:
            v.error(key, f"{key} must be a non-empty array of at most {MAX_SETTINGS_VALUES} values, got "
                         f"{brief(value)}")
            return []
        return value

    modes = listed("layer_modes", ["all"])
    fractions = listed("head_fractions", [1.0])
    if not strict:
        try:
            fractions = [float(f) for f in fractions]
        except (TypeError, ValueError):
            pass
    bad = [f for f in fractions if isinstance(f, bool) or not isinstance(f, (int, float))]
    sweep_settings_: list[SweepSetting] = []
    if bad:
        v.error("head_fractions", f"head_fractions are numbers in (0, 1]; got {brief(bad[0])}")
    elif modes and fractions:
        try:
            sweep_settings_ = sweep_settings(modes, fractions)
        except ValidationError as exc:
            for e in exc.errors:
                v.error(e["field"], e["message"])
    floor = given.get("fluency_floor", protocol.FLOOR)
    if not strict and isinstance(floor, str):
        try:
            floor = float(floor)
        except ValueError:
            pass
    if isinstance(floor, bool) or not isinstance(floor, (int, float)) or not 0 <= floor <= 2:
        v.error("fluency_floor", f"fluency_floor is a number in [0, 2] (the fluency scale), got {brief(floor)}")
        floor = protocol.FLOOR
    params = {}
    for name in SWEEP_JOB_FIELDS:
        f = BY_NAME[name]
        value = given.get(name)
        params[name] = v.check(f, f.default_value(settings) if value is None else value)
    if cases and sweep_settings_:
        fractions_ = {s.head_fraction for s in sweep_settings_}
        per_step = len(cases) * len(fractions_)
        cap = settings["limits.max_queued_jobs"]
        if per_step > cap:
            v.error("cases", f"one step of this sweep is {per_step} jobs ({len(cases)} cases x {len(fractions_)} "
                             f"head fractions); at most {cap} may wait in the queue: use limit")
    if v.errors:
        fields_ = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
        raise ValidationError(f"invalid sweep request: fix {fields_}", errors=v.errors)
    return SweepRequest(tuple(cases), pack, grid, tuple(sweep_settings_), float(floor), params)
