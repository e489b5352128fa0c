"""Validation shared by every input path: a collecting validator, integer parsing and safe echoes of input.

The validator collects every field's error instead of stopping at the first, so one answer lists all
that needs fixing. Strict mode (the JSON API) takes each value only in its JSON type; otherwise (forms,
query strings) text is parsed: "5" is a number, "2, 10" a list, "" the default.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Mapping

from shared.errors import ValidationError

if TYPE_CHECKING:
    from shared.fields import JobField

MAX_MODEL_NAME = 255
TRUE = ("true", "on", "yes", "1")
FALSE = ("false", "off", "no", "0")

# What counts as blank text: ECMAScript's \s, spelled out so the OpenAPI pattern (JSON Schema regexes are
# ECMAScript) and this validator agree character for character.
WHITESPACE = "\t\n\v\f\r \u00a0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a" \
             "\u2028\u2029\u202f\u205f\u3000\ufeff"


def brief(value: Any, limit: int = 40) -> str:
    """Return repr(value) cut to about limit characters, for error messages that echo user input."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10**30:
        return f"an integer of {len(str(abs(value)))} digits"
    text = repr(value) if not isinstance(value, (list, dict, tuple)) or len(value) < 20 else \
        f"a {type(value).__name__} of {len(value)} items"
    return text if len(text) <= limit else text[:limit] + "…"


def as_int(value: Any) -> int:
    """Return value as an int, accepting "7", "7.0" and 7.0 but not 7.5, True or "seven" (ValueError)."""
    if isinstance(value, bool):
        raise ValueError(value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return int(text)
        except ValueError:
            # "100.0" is an integer too (JSON Schema counts numbers by value, and clients write it so).
            x = float(text)
            if not x.is_integer():
                raise
            return int(x)
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def parse_int(name: str, value: Any, lo: int | None = None, hi: int | None = None) -> int:
    """Return value as an int in [lo, hi] or raise ValidationError naming the field."""
    try:
        n = as_int(value)
    except (TypeError, ValueError, OverflowError):
        raise ValidationError(f"{name} must be an integer, got {brief(value)}", field=name) from None
    if (lo is not None and n < lo) or (hi is not None and n > hi):
        raise ValidationError(f"{name} must be between {lo} and {hi}, got {brief(n)}" if hi is not None
                              else f"{name} must be >= {lo}, got {n}", field=name)
    return n


@dataclass
class Validator:
    """Collects field errors instead of stopping at the first one; validates a JobField's value by its kind."""

    settings: Mapping[str, Any]
    strict: bool = False
    errors: list[dict] = field(default_factory=list)

    def error(self, name: str, message: str) -> None:
        self.errors.append({"field": name, "message": message})

    def check(self, spec: "JobField", value: Any) -> Any:
        """Return the field's value parsed and checked (errors are collected, a placeholder returned)."""
        return getattr(self, spec.kind)(spec, value)

    def boolean(self, spec: "JobField", value: Any) -> bool:
        if isinstance(value, bool):
            return value
        # Forms and query strings send text: a checked checkbox sends "on".
        if not self.strict and isinstance(value, str) and value.strip().lower() in TRUE + FALSE:
            return value.strip().lower() in TRUE
        self.error(spec.name, f"{spec.name} must be true or false, got {brief(value)}")
        return False

    def text(self, spec: "JobField", value: Any) -> str:
        name, limit = spec.name, self.settings["limits.max_text_chars"]
        if value is None or (isinstance(value, str) and not value.strip(WHITESPACE)):
            self.error(name, f"{name} is required and must not be blank")
            return ""
        if not isinstance(value, str):
            self.error(name, f"{name} must be a string, got {type(value).__name__}")
            return ""
        if len(value) > limit:
            self.error(name, f"{name} is {len(value)} characters; at most {limit} are allowed")
        if "\x00" in value:
            self.error(name, f"{name} must not contain NUL characters")
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            self.error(name, f"{name} must be valid Unicode text (it holds a lone surrogate)")
        return value

    def model(self, spec: "JobField", value: Any) -> str:
        name = spec.name
        if not isinstance(value, str) or not value.strip():
            self.error(name, f"{name} must be a non-empty model name")
            return ""
        value = value if self.strict else value.strip()
        if len(value) > MAX_MODEL_NAME or any(c.isspace() or not c.isprintable() for c in value):
            self.error(name, f"{name} must be a name of at most {MAX_MODEL_NAME} printable characters "
                             "without spaces")
        return value

    def _as_number(self, name: str, value: Any, integer: bool) -> float | int | None:
        kind = "an integer" if integer else "a number"
        if isinstance(value, bool):
            self.error(name, f"{name} must be {kind}, got a boolean")
            return None
        if isinstance(value, str) and self.strict:
            self.error(name, f"{name} must be {kind}, got a string: send it as a JSON number")
            return None
        if isinstance(value, str):
            if len(value) > 40:
                self.error(name, f"{name} must be {kind}, got {brief(value)}")
                return None
            try:
                value = int(value.strip()) if integer else float(value.strip())
            except ValueError:
                self.error(name, f"{name} must be {kind}, got {brief(value)}")
                return None
        if integer and isinstance(value, float) and value.is_integer():
            value = int(value)
        if integer and not isinstance(value, int):
            self.error(name, f"{name} must be {kind}, got {brief(value)}")
            return None
        if not isinstance(value, (int, float)):
            self.error(name, f"{name} must be {kind}, got {type(value).__name__}")
            return None
        if isinstance(value, int) and not integer and abs(value) > 1e300:
            # JSON allows integers of any length; float() of one this long overflows.
            self.error(name, f"{name} is far out of range, got {brief(value)}")
            return None
        if isinstance(value, float) and (math.isnan(value) or math.isinf(value)):
            self.error(name, f"{name} must be a finite number, got {value}")
            return None
        return value

    def _in_range(self, spec: "JobField", name: str, x: float) -> bool:
        hi = spec.upper(self.settings)
        below = x <= spec.lo if spec.lo_open else x < spec.lo
        if below or (hi is not None and (x >= hi if spec.hi_open else x > hi)):
            hint = f" ({spec.hint})" if spec.hint else ""
            got = brief(x) if isinstance(x, int) else format(x, "g")
            self.error(name, f"{name} must be {spec.interval(self.settings)}{hint}, got {got}")
            return False
        return True

    def integer(self, spec: "JobField", value: Any) -> int:
        n = self._as_number(spec.name, value, integer=True)
        if n is None:
            return 0
        self._in_range(spec, spec.name, n)
        return int(n)

    def number(self, spec: "JobField", value: Any, name: str | None = None) -> float | None:
        name = name or spec.name
        x = self._as_number(name, value, integer=False)
        if x is None or not self._in_range(spec, name, x):
            return None if name != spec.name else 0.0
        return float(x)

    def choice(self, spec: "JobField", value: Any) -> str:
        if value not in spec.choices:
            self.error(spec.name, f"{spec.name} must be one of {', '.join(spec.choices)}; got {brief(value)}")
            return ""
        return value

    def _as_list(self, name: str, value: Any) -> list | None:
        if isinstance(value, str) and not self.strict:
            return [p.strip() for p in value.split(",") if p.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        self.error(name, f"{name} must be a JSON array" if self.strict else
                   f"{name} must be a list (or a comma-separated string)")
        return None

    def numbers(self, spec: "JobField", value: Any) -> tuple[float, ...]:
        name = spec.name
        items = self._as_list(name, value)
        if items is None:
            return ()
        if not items:
            self.error(name, f"give at least one value in {name}, e.g. 10 or 2, 10")
            return ()
        limit = self.settings["limits.max_variants"]
        if len(items) >= limit:  # each value adds at least one variant to the original
            self.error(name, f"{len(items)} values in {name}; with the original at most {limit} variants are "
                             "allowed: drop some")
            return ()
        out: list[float] = []
        for i, item in enumerate(items):
            item_name = f"{name}[{i}]"
            if self.strict and isinstance(item, str):
                self.error(item_name, f"{item_name} must be a JSON number, got {brief(item)}")
                continue
            x = self.number(spec, item, item_name)
            if x is None:
                continue
            if x not in out:  # a repeated value would only regenerate the same variant
                out.append(x)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(item_name, f"{x:g} is given twice in {name}; list each once")
        return tuple(out)

    def choices(self, spec: "JobField", value: Any) -> tuple[str, ...]:
        name, allowed = spec.name, spec.choices
        items = self._as_list(name, value)
        if items is None:
            return ()
        if len(items) > 2 * len(allowed):
            self.error(name, f"{len(items)} values given in {name}; choose among {', '.join(allowed)}")
            return ()
        if not items:
            self.error(name, f"choose at least one of {', '.join(allowed)} in {name}")
            return ()
        out: list[str] = []
        for i, item in enumerate(items):
            if item not in allowed:
                self.error(f"{name}[{i}]", f"{name}[{i}] must be one of {', '.join(allowed)}; got {brief(item)}")
            elif item not in out:
                out.append(item)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(f"{name}[{i}]", f"{item!r} is given twice in {name}; list each once")
        return tuple(out)


    def _rules(self, spec: "JobField", value: Any) -> list | None:
        """Return a list of raw rules: a JSON array, or (forms) JSON text or comma-separated names."""
        name = spec.name
        if isinstance(value, str) and not self.strict:
            text = value.strip()
            if not text:
                return []
            if text[0] in "[{":
                try:
                    value = json.loads(text)
                except ValueError as exc:
                    self.error(name, f"{name} is not valid JSON: {exc}")
                    return None
                value = value if isinstance(value, list) else [value]
            else:
                value = [p.strip() for p in text.split(",") if p.strip()]
                if spec.kind == "checks":
                    value = [dict(zip(("type", "value"), p.split(":", 1))) for p in value]
        if not isinstance(value, (list, tuple)):
            self.error(name, f"{name} must be a JSON array, got {brief(value)}")
            return None
        from shared.fields import MAX_CHECKS

        if len(value) > MAX_CHECKS:
            self.error(name, f"{len(value)} entries in {name}; at most {MAX_CHECKS} are allowed")
            return None
        return list(value)

    def checks(self, spec: "JobField", value: Any) -> tuple[dict, ...]:
        from shared.evaluation.checks import parse_check

        out = []
        for i, raw in enumerate(self._rules(spec, value) or []):
            check, problems = parse_check(raw, schema_only=True)
            for p in problems:
                self.error(f"{spec.name}[{i}]", f"{spec.name}[{i}]: {p}")
            if check is not None:
                out.append({"type": check.type} if check.value is None else {"type": check.type, "value": check.value})
        return tuple(out)

    def ifeval(self, spec: "JobField", value: Any) -> tuple[dict, ...]:
        from shared.evaluation.checks import parse_ifeval

        out = []
        for i, raw in enumerate(self._rules(spec, value) or []):
            check, problems = parse_ifeval(raw, schema_only=True)
            for p in problems:
                self.error(f"{spec.name}[{i}]", f"{spec.name}[{i}]: {p}")
            if check is not None:
                out.append({"id": check.id, "kwargs": dict(check.kwargs)})
        return tuple(out)
