"""The calibration sweep request (POST /api/sweeps, the sweep form), declared once as pydantic models.

``SweepRequestBody`` is the JSON API's body: one case set (a built-in ``pack`` or ``cases``, a map of
``SweepCase`` by name), the grid of M, the settings swept (layer modes x head fractions), the fluency floor and
the job fields every run of the sweep shares (the job request's own types). ``SweepForm`` adds what only the form
sends: an uploaded case file (``cases_text``, ``cases_format``). shared.calibration loads the cases and checks
what spans fields (a case set given once, the queue's room) into a SweepRequest.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, ClassVar, Literal, Mapping, Optional

import pydantic
from pydantic import AfterValidator, BeforeValidator, ConfigDict, Field, ValidationInfo

from shared.evaluation import protocol
from shared.evaluation.cases import PACKS_BY_NAME
from shared.requests import job
from shared.requests import base
from shared.requests import types as t
from shared.requests.errors import FIELD as F, context, fail, not_an_object, path, problems, raise_problems
from shared.settings import Settings
from shared.validation import as_int, brief

CASE_FORMATS = ("yaml", "json", "jsonl")
API_CASE_NAME = r"[A-Za-z0-9][A-Za-z0-9 _.:()-]{0,99}"
API_CASE_KEYS = ("instruction", "query", "description", "checks", "ifeval", "split")
MAX_API_CASES = 100
MAX_SETTINGS_VALUES = 8
MAX_DESCRIPTION = 2000
MAX_GRID = 40


def check_description(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or "\x00" in value or len(value) > MAX_DESCRIPTION):
        raise fail(f"description must be text of at most {MAX_DESCRIPTION} characters without NUL")
    return value


def check_split(value: Any) -> str | None:
    if value not in (None, "validation", "test"):
        raise fail(f"split must be validation or test (or null), got {brief(value)}")
    return value


class SweepCase(base.Request):
    """One case of a sweep: an instruction, a query and the checks its outputs are scored with."""

    instruction: t.text() = Field(description="Text whose tokens get boosted.")
    query: t.text() = Field(description="The user's message the model answers.")
    description: Annotated[Optional[str], BeforeValidator(check_description)] = Field(
        None, description=f"What the case tests, at most {MAX_DESCRIPTION} characters.")
    checks: t.checks(True) = Field((), description=job.JobFields.model_fields["checks"].description)
    ifeval: t.ifeval(True) = Field((), description=job.JobFields.model_fields["ifeval"].description)
    split: Annotated[Optional[Literal["validation", "test"]], BeforeValidator(check_split)] = Field(
        None, description="Pin the case to the validation or the test half (default: the fixed split).")


def check_case_name(name: Any) -> str:
    if not isinstance(name, str) or not re.fullmatch(API_CASE_NAME, name):
        raise fail(f"case name {brief(name)} must be 1-100 letters, digits, spaces or _ . : ( ) -, starting with a "
                   "letter or digit")
    return name


def check_case(case: Any) -> Any:
    if not isinstance(case, Mapping):
        raise fail("must be an object with instruction and query")
    extra = [str(k) for k in case if k not in API_CASE_KEYS]
    if extra:
        raise fail(f"has unknown keys {extra[:5]}; a case takes {', '.join(API_CASE_KEYS)}")
    return case


def check_cases(value: Any) -> Any:
    if value is not None and (not isinstance(value, Mapping) or not 2 <= len(value) <= MAX_API_CASES):
        raise fail(f"cases must be an object of 2 to {MAX_API_CASES} cases keyed by name, got {brief(value)}")
    return value


def check_pack(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or value not in PACKS_BY_NAME):
        raise fail(f"pack must be one of {', '.join(PACKS_BY_NAME)}; got {brief(value)}")
    return value


def check_grid(value: Any, info: ValidationInfo) -> tuple[float, ...]:
    if isinstance(value, str) and not t.is_strict(info) and value not in protocol.GRIDS:
        value = [p.strip() for p in value.split(",") if p.strip()]
        try:
            value = [float(p) for p in value]
        except ValueError:
            pass
    if not isinstance(value, (str, list)):
        raise fail(f"grid must be paper, log or a list of multipliers, got {brief(value)}")
    try:
        grid = protocol.get_grid(value)
    except Exception as exc:  # the protocol's ValidationError, with its own message
        raise fail(getattr(exc, "message", str(exc))) from None
    if any(m > t.MAX_MULTIPLIER for m in grid):
        raise fail("grid multipliers must be <= 1e6")
    if len(grid) > MAX_GRID:
        raise fail(f"a grid holds at most {MAX_GRID} multipliers")
    if not any(m != 1.0 for m in grid):
        raise fail("the grid needs at least one M other than 1")
    return grid


def listed(value: Any, info: ValidationInfo) -> list:
    """Return a swept list: a JSON array (a form's comma-separated text) of 1 to MAX_SETTINGS_VALUES values."""
    if isinstance(value, str) and not t.is_strict(info):
        value = [p.strip() for p in value.split(",") if p.strip()]
    if not isinstance(value, list) or not value or len(value) > MAX_SETTINGS_VALUES:
        raise fail(f"{F} must be a non-empty array of at most {MAX_SETTINGS_VALUES} values, got {brief(value)}")
    return value


def check_mode(m: Any) -> str:
    if not isinstance(m, str) or m not in t.LAYER_MODES:
        raise fail(f"layer mode must be one of {', '.join(t.LAYER_MODES)}; got {str(m)[:40]!r}")
    return m


def check_fractions(value: Any, info: ValidationInfo) -> list:
    items = listed(value, info)
    if not t.is_strict(info):
        try:
            items = [float(f) for f in items]
        except (TypeError, ValueError):
            pass
    bad = [f for f in items if isinstance(f, bool) or not isinstance(f, (int, float))]
    if bad:
        raise fail(f"head_fractions are numbers in (0, 1]; got {brief(bad[0])}")
    return items


def check_fraction(f: float) -> float:
    if not 0 < f <= 1:
        raise fail(f"a head fraction is a number in (0, 1]; got {str(f)[:40]!r}")
    return float(f)


def check_scope(sc: Any) -> str:
    if not isinstance(sc, str) or sc not in t.SCOPES:
        raise fail(f"scope must be one of {', '.join(t.SCOPES)}; got {str(sc)[:40]!r}")
    return sc


NONE_WORDS = ("none", "null", "off", "-")  # a form's word for "no target mass" (a fixed M only)


def check_targets(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    items = listed(value, info)
    if not t.is_strict(info):
        out = []
        for p in items:
            if isinstance(p, str) and p.strip().lower() in NONE_WORDS:
                out.append(None)
                continue
            try:
                out.append(float(p))
            except (TypeError, ValueError):
                out.append(p)
        items = out
    return items


def check_target(p: Any) -> float | None:
    if p is not None and (isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 < p < 1):
        raise fail(f"a target mass is a number in (0, 1), or null for a fixed M only; got {str(p)[:40]!r}")
    return None if p is None else float(p)


def check_boilerplates(value: Any, info: ValidationInfo) -> Any:
    if value is None:
        return None
    items = listed(value, info)
    if not t.is_strict(info):
        try:
            items = [float(b) for b in items]
        except (TypeError, ValueError):
            pass
    return items


def check_boilerplate(b: Any) -> float:
    if isinstance(b, bool) or not isinstance(b, (int, float)) or not 0 < b <= 1:
        raise fail(f"a boilerplate multiplier is a number in (0, 1] (1 = off, below 1 de-boosts the instruction "
                   f"turn's template tokens); got {str(b)[:40]!r}")
    return float(b)


def optional_listed(value: Any, info: ValidationInfo) -> Any:
    """Return a swept list, or None (left out: the single job field's value is swept)."""
    return None if value is None else listed(value, info)


def check_floor(value: Any, info: ValidationInfo) -> float:
    if not t.is_strict(info) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 2:
        raise fail(f"fluency_floor is a number in [0, 2] (the fluency scale), got {brief(value)}")
    return float(value)


def check_limit(value: Any, info: ValidationInfo) -> int | None:
    if value is None:
        return None
    try:
        n = as_int(value) if not (t.is_strict(info) and isinstance(value, str)) else None
    except (TypeError, ValueError, OverflowError):
        n = None
    if n is None or n < 2:
        raise fail(f"limit must be an integer >= 2 (a validation and a test case), got {brief(value)}")
    return n


def _unique(items: list) -> list:
    return list(dict.fromkeys(items))


def _unique_or_none(items: list | None) -> list | None:
    return None if items is None else _unique(items)


class SweepRequestBody(base.Request):
    """A calibration sweep (JSON API): the paper's protocol for choosing M over a case set."""

    model_config = ConfigDict(title="SweepRequest")
    JOB_FIELDS: ClassVar[tuple[str, ...]] = ("model", "max_new_tokens", "placement", "start_layer",
                                             "num_middle_layers", "seed", "temperature", "top_p", "engine",
                                             "score_perplexity", "scope", "target_mass", "boilerplate_multiplier")

    pack: Annotated[Optional[str], BeforeValidator(check_pack)] = Field(
        None, description="A built-in case pack: " + ", ".join(PACKS_BY_NAME) + " (or give cases).")
    cases: Annotated[Optional[dict[Annotated[str, BeforeValidator(check_case_name)],
                                   Annotated[SweepCase, BeforeValidator(check_case)]]],
                     BeforeValidator(check_cases)] = Field(
        None, description=f"2 to {MAX_API_CASES} cases keyed by name (or give pack).")
    grid: Annotated[tuple[float, ...], BeforeValidator(check_grid)] = Field(
        "paper", description="paper, log or a list of multipliers M (at most 40, at least one other than 1).")
    layer_modes: Annotated[list[Annotated[str, BeforeValidator(check_mode)]], BeforeValidator(listed),
                           AfterValidator(_unique)] = Field(["all"], description="Layer modes swept: all, middle.")
    head_fractions: Annotated[list[Annotated[float, BeforeValidator(check_fraction)]],
                              BeforeValidator(check_fractions), AfterValidator(_unique)] = Field(
        [1.0], description="Fractions of heads boosted per layer, each in (0, 1].")
    scopes: Annotated[Optional[list[Annotated[str, BeforeValidator(check_scope)]]],
                      BeforeValidator(optional_listed), AfterValidator(_unique_or_none)] = Field(
        None, description="Boost scopes swept: all, generated, prompt (default: [scope]).")
    target_masses: Annotated[Optional[list[Annotated[Optional[float], BeforeValidator(check_target)]]],
                             BeforeValidator(check_targets), AfterValidator(_unique_or_none)] = Field(
        None, description="Target masses swept, each in (0, 1), null for a fixed M only (default: [target_mass]); "
                          "a target mass takes no M below 1.")
    boilerplate_multipliers: Annotated[Optional[list[Annotated[float, BeforeValidator(check_boilerplate)]]],
                                       BeforeValidator(check_boilerplates), AfterValidator(_unique_or_none)] = Field(
        None, description="Boilerplate multipliers swept, each in (0, 1] (1 = off; below 1 de-boosts the instruction "
                          "turn's template tokens) (default: [boilerplate_multiplier]).")
    fluency_floor: Annotated[float, BeforeValidator(check_floor)] = Field(
        protocol.FLOOR, description="The fluency (0-2) a recommended M must keep.")
    limit: Annotated[Optional[int], BeforeValidator(check_limit)] = Field(
        None, description="Use only the first limit cases (at least 2).")
    model: job.ModelName = job.same("model")
    max_new_tokens: job.MaxNewTokens = job.same("max_new_tokens")
    placement: job.Placement = job.same("placement")
    start_layer: job.StartLayer = job.same("start_layer")
    num_middle_layers: job.NumMiddleLayers = job.same("num_middle_layers")
    seed: job.Seed = job.same("seed")
    temperature: job.Temperature = job.same("temperature")
    top_p: job.TopP = job.same("top_p")
    engine: job.Engine = job.same("engine")
    score_perplexity: t.boolean(True) = job.same("score_perplexity")
    scope: job.Scope = job.same("scope")
    target_mass: job.TargetMass = job.same("target_mass")
    boilerplate_multiplier: job.BoilerplateMultiplier = job.same("boilerplate_multiplier")

    def job_params(self) -> dict[str, Any]:
        """Return the job fields every run of the sweep shares."""
        return {name: getattr(self, name) for name in self.JOB_FIELDS}

    def swept_scopes(self) -> list[str]:
        """Return the scopes swept: scopes, or the one scope."""
        return list(self.scopes) if self.scopes is not None else [self.scope]

    def swept_target_masses(self) -> list[float | None]:
        """Return the target masses swept: target_masses, or the one target_mass."""
        return list(self.target_masses) if self.target_masses is not None else [self.target_mass]

    def swept_boilerplate_multipliers(self) -> list[float]:
        """Return the boilerplate multipliers swept: boilerplate_multipliers, or the one boilerplate_multiplier."""
        if self.boilerplate_multipliers is not None:
            return list(self.boilerplate_multipliers)
        return [1.0 if self.boilerplate_multiplier is None else self.boilerplate_multiplier]

    def dimension_problems(self, given: Mapping[str, Any]) -> list[dict]:
        """Return the problems between dimensions: a list given with its single field, a target under M < 1."""
        errors = []
        for one, many in (("scope", "scopes"), ("target_mass", "target_masses"),
                          ("boilerplate_multiplier", "boilerplate_multipliers")):
            if given.get(one) not in (None, "") and getattr(self, many) is not None:
                errors.append({"field": many, "message": f"give {one} (one value) or {many} (a list swept), not "
                               f"both: put {one}'s value into {many}"})
        targets = [p for p in self.swept_target_masses() if p is not None]
        below = [m for m in self.grid if m < 1]
        if targets and below:
            where = "target_masses" if self.target_masses is not None else "target_mass"
            errors.append({"field": where, "message": f"a target mass raises the instruction's attention share "
                           f"and M < 1 lowers it: drop the grid's M below 1 ({', '.join(f'{m:g}' for m in below)}) "
                           f"or sweep target masses on a grid of M >= 1"})
        return errors


def check_cases_text(value: Any) -> Any:
    if value is not None and not isinstance(value, str):
        raise fail("cases_text must be the text of a case file")
    return value


def check_format(value: Any) -> str:
    if value not in CASE_FORMATS:
        raise fail(f"cases_format must be one of {', '.join(CASE_FORMATS)}; got {brief(value)}")
    return value


class SweepForm(SweepRequestBody):
    """The sweep form: the API's fields, and a case file uploaded as text."""

    model_config = ConfigDict(title="SweepForm")
    cases_text: Annotated[Optional[str], BeforeValidator(check_cases_text)] = Field(None, description="A case file.")
    cases_format: Annotated[str, BeforeValidator(check_format)] = Field("yaml", description="yaml, json or jsonl.")


def _case_error(loc: tuple, e: dict) -> dict:
    """Name the case in the errors its fields raised (today's words: "case 'c1': instruction is required...")."""
    if len(loc) < 2 or loc[0] != "cases":
        return e
    name, where = str(loc[1]), f"cases.{str(loc[1])[:64]}"
    if len(loc) == 2:
        return {"field": where, "message": f"case {name!r} {e['message']}"}
    if loc[2] == "[key]":
        return {"field": where, "message": e["message"]}
    if loc[2] in ("description", "split"):
        return {"field": where, "message": f"case {name!r}: {e['message']}"}
    leaf = path(loc[2:])
    return {"field": f"{where}.{leaf}", "message": f"case {name!r}: " + e["message"].replace(e["field"], leaf)}


def validate_sweep(data: Any, settings: Settings, strict: bool) -> tuple[SweepRequestBody | None,
                                                                                     list[dict]]:
    """Return (the validated sweep request, []) or (None, every field's problem in today's words)."""
    if not isinstance(data, Mapping):
        raise not_an_object("naming a pack or holding cases")
    model = SweepRequestBody if strict else SweepForm
    allowed = tuple(model.model_fields)

    def unknown(key: str, where: str) -> str:
        return f"unknown field {brief(key)}; allowed fields: {', '.join(allowed)}"

    try:
        return model.model_validate(data, strict=strict, context=context(settings, strict)), []
    except pydantic.ValidationError as exc:
        return None, problems(exc, unknown, adjust=_case_error)


__all__ = ["SweepCase", "SweepRequestBody", "SweepForm", "validate_sweep", "raise_problems"]
