"""The value kinds a request field can be, as annotated pydantic types with the API's own messages.

Each kind (``text``, ``integer``, ``numbers``, ...) is a function returning ``Annotated[type, Rule, validator]``:
the type and bounds give the JSON Schema, the ``Rule`` tells the form and the CLI (shared.fields) what the field
is, and the validator checks the value the way the API always has. The validation context (errors.context) holds
``settings`` (deployment limits such as limits.max_new_tokens) and ``strict``: a JSON body gives each value in its
JSON type; a form or query string sends text, so "5" is a number, "2, 10" a list and "on" true.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Annotated, Any, Literal, Mapping, Optional

from pydantic import AfterValidator, BeforeValidator, Field, ValidationInfo

from shared.evaluation.checks import parse_check, parse_ifeval
from shared.requests.errors import FIELD, fail
from shared.settings import Settings
from shared.validation import WHITESPACE, brief

PLACEMENTS = ("system", "prefix", "raw")
LAYER_MODES = ("all", "middle")
ENGINES = ("fast", "transformerlens")
# Which queries a boost acts on: every one, the decoding queries (those that predict an output token: the prompt's
# last position and each generated token's), or the prompt's others (shared.spec.BoostSpec.scope).
SCOPES = ("all", "generated", "prompt")
MAX_MULTIPLIER = 1e6  # log(1e6) ~ 13.8: past this the span takes all the mass and M no longer matters
MAX_LAYER = 10_000
MAX_SEED = 2**32 - 1
MAX_TOP_K = 1_000_000  # past any vocabulary: as good as off
MAX_LOGIT_BIAS = 300  # logit_bias entries, as OpenAI allows
MAX_CHECKS = 20  # simple checks or IFEval instructions per job
MAX_MODEL_NAME = 255
TRUE = ("true", "on", "yes", "1")
FALSE = ("false", "off", "no", "0")
F = FIELD
# A list field's schema: the before-validator refuses an empty list, and repeats (strict) after the items pass.
LIST_SCHEMA = {"minItems": 1, "uniqueItems": True}


@dataclass(frozen=True)
class Rule:
    """What a field is, for the form and the CLI: its kind, bounds and choices (the validator enforces them)."""

    kind: str
    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is excluded: (lo, hi]
    hi_setting: str | None = None  # an upper bound this deployment sets, e.g. limits.max_new_tokens
    choices: tuple[str, ...] = ()
    hint: str = ""  # appended to out-of-range messages, e.g. what a value means
    hi_open: bool = False  # hi itself is excluded: (lo, hi)

    def upper(self, settings: Settings | None) -> float | None:
        """Return the upper bound in force: the declared one, or the setting's when it has one."""
        if self.hi_setting and settings is not None:
            return settings[self.hi_setting]
        return self.hi

    def interval(self, settings: Settings | None = None) -> str:
        """Return the allowed range as text, e.g. "in (0, 100]" or "between 1 and 1024"."""
        hi = self.upper(settings)
        if self.kind == "integer":
            return f"between {int(self.lo)} and {int(hi)}" if hi is not None else f">= {int(self.lo)}"
        return f"in {'(' if self.lo_open else '['}{self.lo:g}, {hi:g}{')' if self.hi_open else ']'}"


def settings_of(info: ValidationInfo) -> Mapping[str, Any] | None:
    return (info.context or {}).get("settings")


def is_strict(info: ValidationInfo) -> bool:
    return (info.context or {}).get("strict", True)


def setting(info: ValidationInfo, key: str) -> Any:
    """Return a deployment limit from the context; without settings every limit is unbounded."""
    s = settings_of(info)
    return s[key] if s is not None else 2**63


def _bounds(rule: Rule) -> Any:
    return Field(**({"gt" if rule.lo_open else "ge": rule.lo} if rule.lo is not None else {}),
                 **({"lt" if rule.hi_open else "le": rule.hi} if rule.hi is not None else {}))


def _optional(inner: Any, optional: bool) -> Any:
    return Optional[inner] if optional else inner


def _before(check: Any, optional: bool) -> BeforeValidator:
    """Return check as a before-validator; an optional field's null passes (Request fills defaults first)."""
    if not optional:
        return BeforeValidator(check)

    def maybe(value: Any, info: ValidationInfo) -> Any:
        return None if value is None else check(value, info)

    return BeforeValidator(maybe)


def _info(check: Any) -> Any:
    """Return a one-argument check as a (value, info) one."""
    return lambda value, info: check(value)


# -- scalars -------------------------------------------------------------------------------------------------------


def check_text(value: Any, info: ValidationInfo) -> str:
    if value is None or (isinstance(value, str) and not value.strip(WHITESPACE)):
        raise fail(f"{F} is required and must not be blank")
    if not isinstance(value, str):
        raise fail(f"{F} must be a string, got {type(value).__name__}")
    limit = setting(info, "limits.max_text_chars")
    if len(value) > limit:
        raise fail(f"{F} is {len(value)} characters; at most {limit} are allowed")
    if "\x00" in value:
        raise fail(f"{F} must not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise fail(f"{F} must be valid Unicode text (it holds a lone surrogate)") from None
    return value


def text() -> Any:
    """Required text, not blank, at most limits.max_text_chars characters, storable (no NUL, valid UTF-8)."""
    return Annotated[str, Rule("text"), BeforeValidator(check_text)]


def check_model(value: Any, info: ValidationInfo) -> str:
    if not isinstance(value, str) or not value.strip():
        raise fail(f"{F} must be a non-empty model name")
    value = value if is_strict(info) else value.strip()
    if len(value) > MAX_MODEL_NAME or any(c.isspace() or not c.isprintable() for c in value):
        raise fail(f"{F} must be a name of at most {MAX_MODEL_NAME} printable characters without spaces")
    return value


def model_name(optional: bool = False) -> Any:
    """A model name: printable, no spaces (which models are served is checked when the job is submitted)."""
    return Annotated[_optional(str, optional), Rule("model"), _before(check_model, optional)]


def check_boolean(value: Any, info: ValidationInfo) -> bool:
    if isinstance(value, bool):
        return value
    # Forms and query strings send text: a checked checkbox sends "on".
    if not is_strict(info) and isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
        return value.strip().lower() in TRUE
    raise fail(f"{F} must be true or false, got {brief(value)}")


def boolean(optional: bool = False) -> Any:
    """A switch: a JSON boolean (a form checkbox's "on", a query's "true" when lax)."""
    return Annotated[_optional(bool, optional), Rule("boolean"), _before(check_boolean, optional)]


def as_number(value: Any, integer: bool, strict: bool) -> float | int:
    """Return value as a finite number (an int when integer), or raise with the API's message."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool):
        raise fail(f"{F} must be {kind}, got a boolean")
    if isinstance(value, str) and strict:
        raise fail(f"{F} must be {kind}, got a string: send it as a JSON number")
    if isinstance(value, str):
        if len(value) > 40:
            raise fail(f"{F} must be {kind}, got {brief(value)}")
        try:
            value = int(value.strip()) if integer else float(value.strip())
        except ValueError:
            raise fail(f"{F} must be {kind}, got {brief(value)}") from None
    if integer and isinstance(value, float) and value.is_integer():
        value = int(value)
    if integer and not isinstance(value, int):
        raise fail(f"{F} must be {kind}, got {brief(value)}")
    if not isinstance(value, (int, float)):
        raise fail(f"{F} must be {kind}, got {type(value).__name__}")
    if isinstance(value, int) and not integer and abs(value) > 1e300:
        # JSON allows integers of any length; float() of one this long overflows.
        raise fail(f"{F} is far out of range, got {brief(value)}")
    if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
        raise fail(f"{F} must be a finite number, got {value}")
    return value


def in_range(rule: Rule, x: float, info: ValidationInfo) -> None:
    """Raise with the API's message when x is outside the rule's interval (its upper bound may be a setting)."""
    settings = settings_of(info)
    hi = rule.upper(settings) if settings is not None or not rule.hi_setting else None
    below = x <= rule.lo if rule.lo_open else x < rule.lo
    if below or (hi is not None and (x >= hi if rule.hi_open else x > hi)):
        hint = f" ({rule.hint})" if rule.hint else ""
        got = brief(x) if isinstance(x, int) else format(x, "g")
        shown = Rule(rule.kind, rule.lo, hi, rule.lo_open, hint=rule.hint, hi_open=rule.hi_open)
        raise fail(f"{F} must be {shown.interval()}{hint}, got {got}")


def integer(lo: int, hi: int | None = None, *, hi_setting: str | None = None, optional: bool = False) -> Any:
    """An integer in [lo, hi]; hi_setting: the setting that bounds it in this deployment."""
    rule = Rule("integer", lo, hi, hi_setting=hi_setting)

    def check(value: Any, info: ValidationInfo) -> int:
        n = int(as_number(value, True, is_strict(info)))
        in_range(rule, n, info)
        return n

    return Annotated[_optional(Annotated[int, _bounds(rule)], optional), rule, _before(check, optional)]


def number_check(rule: Rule):
    """Return the validator of a number under rule (also used for a list's items)."""
    def check(value: Any, info: ValidationInfo) -> float:
        x = as_number(value, False, is_strict(info))
        in_range(rule, x, info)
        return float(x)

    return check


def number(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False, hint: str = "",
           optional: bool = False) -> Any:
    """A finite number in [lo, hi] (open at lo with lo_open, at hi with hi_open)."""
    rule = Rule("number", lo, hi, lo_open, hint=hint, hi_open=hi_open)
    return Annotated[_optional(Annotated[float, _bounds(rule)], optional), rule, _before(number_check(rule), optional)]


def choice(choices: tuple[str, ...], optional: bool = False) -> Any:
    """One of choices."""
    def check(value: Any) -> str:
        if not isinstance(value, str) or value not in choices:
            raise fail(f"{F} must be one of {', '.join(choices)}; got {brief(value)}")
        return value

    return Annotated[_optional(Literal[choices], optional), Rule("choice", choices=choices),
                     _before(_info(check), optional)]


def _index(i: Any) -> bool:
    return isinstance(i, int) and not isinstance(i, bool) and 0 <= i <= MAX_LAYER


def check_layers(value: Any, info: ValidationInfo) -> str | list[int] | None:
    """Return 'all', 'middle' or sorted distinct layer indices; lax also takes text like "0,3,5" or "Middle"."""
    if isinstance(value, str) and not is_strict(info):
        value = value.strip().lower()
        if value not in LAYER_MODES:
            try:
                value = [int(p) for p in value.replace(" ", "").split(",") if p != ""]
            except ValueError:
                pass
    elif isinstance(value, tuple) and not is_strict(info):
        value = list(value)
    if value is None or (isinstance(value, str) and value in LAYER_MODES):
        return value
    if isinstance(value, list) and value and len(value) <= MAX_LAYER and all(map(_index, value)):
        return sorted(set(value))
    raise fail(f"{F} must be 'all', 'middle' or a non-empty list of layer indices >= 0 (like 0,3,5); got "
               f"{brief(value)}")


# The boosted layers: a layer mode or explicit indices.
Layers = Annotated[Optional[str | list[int]], BeforeValidator(check_layers)]


# -- lists ---------------------------------------------------------------------------------------------------------


def as_list(value: Any, info: ValidationInfo) -> list:
    """Return a list value: a JSON array, or (lax) a comma-separated string."""
    if isinstance(value, str) and not is_strict(info):
        return [p.strip() for p in value.split(",") if p.strip()]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise fail(f"{F} must be a JSON array" if is_strict(info) else f"{F} must be a list (or a comma-separated string)")


def _unique(what: str):
    """Return the after-validator that drops repeats (refused in strict mode: the schema says uniqueItems)."""
    def check(items: tuple, info: ValidationInfo) -> tuple:
        out: list = []
        for i, x in enumerate(items):
            if x not in out:  # a repeated value would only regenerate the same variant
                out.append(x)
            elif is_strict(info):
                shown = format(x, "g") if what == "numbers" else repr(x)
                raise fail(f"{shown} is given twice in {F}; list each once", at=f"[{i}]")
        return tuple(out)

    return check


def numbers(lo: float, hi: float, *, lo_open: bool = False, hint: str = "", optional: bool = False) -> Any:
    """A non-empty list of distinct numbers in the interval, fewer than limits.max_variants."""
    rule = Rule("numbers", lo, hi, lo_open, hint=hint)
    item_check = number_check(rule)

    def item(value: Any, info: ValidationInfo) -> float:
        if is_strict(info) and isinstance(value, str):
            raise fail(f"{F} must be a JSON number, got {brief(value)}")
        return item_check(value, info)

    def check(value: Any, info: ValidationInfo) -> tuple:
        items = as_list(value, info)
        if not items:
            raise fail(f"give at least one value in {F}, e.g. 10 or 2, 10")
        limit = setting(info, "limits.max_variants")
        if len(items) >= limit:  # each value adds at least one variant to the original
            raise fail(f"{len(items)} values in {F}; with the original at most {limit} variants are allowed: "
                       "drop some")
        return tuple(items)

    items_type = tuple[Annotated[float, _bounds(rule), BeforeValidator(item)], ...]
    return Annotated[_optional(Annotated[items_type, Field(json_schema_extra=LIST_SCHEMA), AfterValidator(_unique("numbers"))],
                               optional), rule, _before(check, optional)]


def choices(allowed: tuple[str, ...], optional: bool = False) -> Any:
    """A non-empty list of distinct choices."""
    def item(value: Any) -> str:
        if not isinstance(value, str) or value not in allowed:
            raise fail(f"{F} must be one of {', '.join(allowed)}; got {brief(value)}")
        return value

    def check(value: Any, info: ValidationInfo) -> tuple:
        items = as_list(value, info)
        if len(items) > 2 * len(allowed):
            raise fail(f"{len(items)} values given in {F}; choose among {', '.join(allowed)}")
        if not items:
            raise fail(f"choose at least one of {', '.join(allowed)} in {F}")
        return tuple(items)

    items_type = tuple[Annotated[Literal[allowed], BeforeValidator(item)], ...]
    return Annotated[_optional(Annotated[items_type, Field(json_schema_extra=LIST_SCHEMA), AfterValidator(_unique("choices"))],
                               optional), Rule("choices", choices=allowed), _before(check, optional)]


def _rules(kind: str):
    """Return the validator of a list of rules: a JSON array, or (forms) JSON text or comma-separated names."""
    def check(value: Any, info: ValidationInfo) -> tuple:
        if isinstance(value, str) and not is_strict(info):
            text_ = value.strip()
            if not text_:
                return ()
            if text_[0] in "[{":
                try:
                    value = json.loads(text_)
                except ValueError as exc:
                    raise fail(f"{F} is not valid JSON: {exc}") from None
                value = value if isinstance(value, list) else [value]
            else:
                value = [p.strip() for p in text_.split(",") if p.strip()]
                if kind == "checks":
                    value = [dict(zip(("type", "value"), p.split(":", 1))) for p in value]
        if not isinstance(value, (list, tuple)):
            raise fail(f"{F} must be a JSON array, got {brief(value)}")
        if len(value) > MAX_CHECKS:
            raise fail(f"{len(value)} entries in {F}; at most {MAX_CHECKS} are allowed")
        return tuple(value)

    return check


def _check_item(raw: Any) -> dict:
    check, problems = parse_check(raw, schema_only=True)
    if check is None or problems:
        raise fail(f"{F}: {problems[0]}")
    return {"type": check.type} if check.value is None else {"type": check.type, "value": check.value}


def _ifeval_item(raw: Any) -> dict:
    check, problems = parse_ifeval(raw, schema_only=True)
    if check is None or problems:
        raise fail(f"{F}: {problems[0]}")
    return {"id": check.id, "kwargs": dict(check.kwargs)}


def checks(optional: bool = False) -> Any:
    """Simple pass/fail checks, {type, value} each (shared.evaluation.checks)."""
    items_type = tuple[Annotated[dict, BeforeValidator(_check_item)], ...]
    return Annotated[_optional(items_type, optional), Rule("checks"), _before(_rules("checks"), optional)]


def ifeval(optional: bool = False) -> Any:
    """IFEval instructions, an id or {id, kwargs} each."""
    items_type = tuple[Annotated[dict, BeforeValidator(_ifeval_item)], ...]
    return Annotated[_optional(items_type, optional), Rule("ifeval"), _before(_rules("ifeval"), optional)]


def rule_of(field_info: Any) -> Rule:
    """Return the Rule a field's type carries."""
    return next(m for m in field_info.metadata if isinstance(m, Rule))
