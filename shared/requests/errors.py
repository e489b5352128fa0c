"""Pydantic's errors as the API's: one function maps error locations to ``field`` strings and keeps our messages.

Validators raise ``fail(message)``; the message holds FIELD where the field's name goes, and the location
(``("multipliers", 0)``) becomes that name (``multipliers[0]``), so one validator serves every field and path
(``instaboost.multiplier``, ``cases.c1.instruction``). pydantic's own errors (an unknown key, a missing field)
get messages that say how to fix the input.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import pydantic
from pydantic_core import PydanticCustomError

from shared.errors import ValidationError
from shared.settings import Settings

FIELD = "\x1f"  # where a message names its field; repr() escapes it, so no echoed input can hold it
MAX_REPORTED_UNKNOWN = 10  # a body of thousands of stray keys gets a short answer, not thousands of errors


def fail(message: str, *, at: str = "", field: str | None = None) -> PydanticCustomError:
    """Return the error a validator raises: message (FIELD for its field's name), at a sub-path or another field."""
    return PydanticCustomError("instaboost", "{message}", {"message": message, "at": at, "field": field})


def path(loc: Iterable[Any], prefix: str = "") -> str:
    """Return a pydantic location as today's field string: ("multipliers", 0) -> "multipliers[0]"."""
    out = prefix
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def problems(exc: pydantic.ValidationError, unknown: Callable[[str, str], str] | None = None,
             too_many: Callable[[int], str] | None = None, prefix: str = "",
             missing: Mapping[str, str] | None = None,
             adjust: Callable[[tuple, dict], dict] | None = None) -> list[dict]:
    """Return [{field, message}] for a pydantic error: our messages named by path, pydantic's own explained.

    unknown(key, where) words an unknown key's error (where: the path of the object holding it, "" for the
    body); past MAX_REPORTED_UNKNOWN of them the rest are dropped, or counted in one error worded by
    too_many(count). prefix: the path of what was validated (a field checked alone). missing: a required
    field's message when absent. adjust(loc, problem) rewords a problem where the request's shape says more
    (a sweep case's name). The body's unknown keys come first, as the allowed fields are the first thing to fix.
    """
    extra, out = [], []
    for e in exc.errors(include_url=False, include_input=False):
        ctx, loc = e.get("ctx") or {}, tuple(e["loc"])
        name = path(loc, prefix)
        if e["type"] == "instaboost":
            field = path([ctx["field"]], prefix) if ctx.get("field") else name + ctx.get("at", "")
            problem = {"field": field, "message": ctx["message"].replace(FIELD, name)}
        elif e["type"] == "extra_forbidden":
            key, where = str(loc[-1]), path(loc[:-1], prefix)
            full = path([*loc[:-1], key], prefix)
            problem = {"field": full[:64], "message": unknown(key, where) if unknown else
                       f"unknown field {full!r}: leave it out"}
            if not where:  # an inner object's unknown keys stay with its other fields' errors
                extra.append(problem)
                continue
        elif e["type"] == "missing":
            problem = {"field": name, "message": (missing or {}).get(name) or f"{name} is required"}
        else:  # a pydantic rule without our own message (a type or a bound), said as pydantic says it
            problem = {"field": name, "message": f"{name}: {e['msg']}"}
        out.append(adjust(loc, problem) if adjust else problem)
    if len(extra) > MAX_REPORTED_UNKNOWN:
        more = [{"field": "body", "message": too_many(len(extra))}] if too_many else []
        extra = extra[:MAX_REPORTED_UNKNOWN] + more
    return extra + out


def relocate(exc: PydanticCustomError, at: str) -> PydanticCustomError:
    """Return a validator's error moved to a sub-path (".boost"), its message naming the sub-path too."""
    ctx = exc.context or {}
    return fail(ctx.get("message", exc.message()).replace(FIELD, FIELD + at), at=at)


def raise_problems(errors: list[dict], summary: str) -> None:
    """Raise one ValidationError listing every problem, its message "summary: fix <fields>"."""
    if errors:
        fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
        raise ValidationError(f"{summary}: fix {fields}", errors=errors)


def not_an_object(what: str) -> ValidationError:
    """Return the error for a body that is not a JSON object (what it must hold)."""
    return ValidationError(f"the request body must be a JSON object with {what}",
                           errors=[{"field": "body", "message": "expected a JSON object"}])


def context(settings: Settings | None, strict: bool, **extra: Any) -> dict[str, Any]:
    """Return the validation context: this deployment's limits (settings) and whether JSON types are required."""
    return {"settings": settings, "strict": strict, **extra}
