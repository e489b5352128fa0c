"""Validation shared by every input path: a collecting validator, integer parsing and safe echoes of input.

The validator collects every field's error instead of stopping at the first, so one answer lists all
that needs fixing. Strict mode (the JSON API) takes each value only in its JSON type; otherwise (forms,
query strings) text is parsed: "5" is a number, "2, 10" a list, "" the default.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from shared.errors import ValidationError
from shared.spec import LAYER_MODES

MAX_MODEL_NAME = 255

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
    """Collects field errors instead of stopping at the first one."""

    settings: Mapping[str, Any]
    strict: bool = False
    errors: list[dict] = field(default_factory=list)

    def error(self, name: str, message: str) -> None:
        self.errors.append({"field": name, "message": message})

    def text(self, name: str, value: Any) -> str:
        limit = self.settings["limits.max_text_chars"]
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

    def model(self, value: Any) -> str:
        if not isinstance(value, str) or not value.strip():
            self.error("model", "model must be a non-empty model name")
            return ""
        value = value if self.strict else value.strip()
        if len(value) > MAX_MODEL_NAME or any(c.isspace() or not c.isprintable() for c in value):
            self.error("model", f"model must be a name of at most {MAX_MODEL_NAME} printable characters "
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
            self.error(name, f"{name} must be a finite number")
            return None
        return value

    def integer(self, name: str, value: Any, lo: int, hi: int) -> int:
        n = self._as_number(name, value, integer=True)
        if n is None:
            return 0
        if not lo <= n <= hi:
            self.error(name, f"{name} must be between {lo} and {hi}, got {brief(n)}")
        return int(n)

    def number(self, name: str, value: Any, lo: float, hi: float, lo_open: bool = False) -> float:
        x = self._as_number(name, value, integer=False)
        if x is None:
            return 0.0
        if (x <= lo if lo_open else x < lo) or x > hi:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}]"
            self.error(name, f"{name} must be in {interval}, got {x:g}")
        return float(x)

    def choice(self, name: str, value: Any, allowed: tuple[str, ...]) -> str:
        if value not in allowed:
            self.error(name, f"{name} must be one of {', '.join(allowed)}; got {brief(value)}")
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

    def multipliers(self, value: Any) -> tuple[float, ...]:
        from shared.spec import check_multiplier

        items = self._as_list("multipliers", value)
        if items is None:
            return ()
        if not items:
            self.error("multipliers", "give at least one multiplier, e.g. 10 or 2, 10")
            return ()
        limit = self.settings["limits.max_variants"]
        if len(items) >= limit:  # each multiplier adds at least one variant to the original
            self.error("multipliers", f"{len(items)} multipliers given; with the original at most {limit} "
                                      "variants are allowed: drop some multipliers")
            return ()
        out: list[float] = []
        for i, item in enumerate(items):
            name = f"multipliers[{i}]"
            if self.strict and (isinstance(item, str) or isinstance(item, bool)):
                self.error(name, f"{name} must be a JSON number, got {brief(item)}")
                continue
            if isinstance(item, str) and len(item) > 40:
                self.error(name, f"{name} must be a number, got {brief(item)}")
                continue
            try:
                m = check_multiplier(item, name)
            except ValidationError as exc:
                self.errors.extend(exc.errors)
                continue
            except OverflowError:  # an integer too long for a float
                self.error(name, f"{name} must be <= 1e6, got {brief(item)}")
                continue
            if m not in out:  # a repeated multiplier would only regenerate the same variant
                out.append(m)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(name, f"multiplier {m:g} is given twice; list each once")
        return tuple(out)

    def layer_modes(self, value: Any) -> tuple[str, ...]:
        items = self._as_list("layer_modes", value)
        if items is None:
            return ()
        if len(items) > 2 * len(LAYER_MODES):
            self.error("layer_modes", f"{len(items)} layer modes given; choose among {', '.join(LAYER_MODES)}")
            return ()
        if not items:
            self.error("layer_modes", f"choose at least one layer mode: {', '.join(LAYER_MODES)}")
            return ()
        out: list[str] = []
        for i, item in enumerate(items):
            if item not in LAYER_MODES:
                self.error(f"layer_modes[{i}]", f"layer mode must be one of {', '.join(LAYER_MODES)}; got {brief(item)}")
            elif item not in out:
                out.append(item)
            elif self.strict:  # the OpenAPI document says uniqueItems
                self.error(f"layer_modes[{i}]", f"layer mode {item!r} is given twice; list each once")
        return tuple(out)
