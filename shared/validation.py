"""Validation helpers shared by every input path: an error collector, integer parsing and safe echoes of input.

The requests themselves are declared and validated as pydantic models (shared.requests); the collector serves
what checks a request across fields, so one answer lists all that needs fixing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from shared.errors import ValidationError
from shared.settings import Settings

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
    """Collects field errors instead of stopping at the first one (the requests' own rules: shared.requests)."""

    settings: Settings
    strict: bool = True
    errors: list[dict] = field(default_factory=list)

    def error(self, name: str, message: str) -> None:
        self.errors.append({"field": name, "message": message})
