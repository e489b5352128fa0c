"""The OpenAI fields the chat, completions and responses requests share (besides the boost and the messages).

Each is an annotated type whose validator says what to fix in the API's words: stop strings, logit_bias, user,
metadata, stream_options, top_logprobs, response_format, and the fields accepted only at a neutral value.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Mapping, Optional

from pydantic import BeforeValidator, Field, ValidationInfo

from shared.errors import ValidationError
from shared.logprobs import MAX_TOP_LOGPROBS
from shared.requests import types as t
from shared.requests.errors import FIELD as F, fail
from shared.response_format import parse as parse_response_format
from shared.spec import MAX_STOP
from shared.validation import brief

MAX_USER_CHARS = 512
MAX_METADATA = 16  # pairs; keys <= 64 characters, values <= 512, as OpenAI allows
TOKEN_ID = re.compile("[0-9]{1,9}")  # a logit_bias key, as the OpenAPI document's pattern says
# Why a neutral field at another value is refused, where "not supported" says too little.
REFUSED_WHY = {"tools": "the served model's chat template declares no tool support (SmolLM2's has none): call "
                        "tools client-side, or leave tools out",
               "tool_choice": "the served model's chat template declares no tool support: leave tool_choice out",
               "modalities": "this server generates text only: give [\"text\"] or leave it out",
               # OpenAI fields with no neutral value here: always refused, saying why.
               "audio": "this server generates text only: leave audio out",
               "functions": "the served model's chat template declares no tool (function) support",
               "function_call": "the served model's chat template declares no tool (function) support",
               "web_search_options": "this server has no web search: leave web_search_options out"}



def storable(value: str) -> bool:
    """Return whether the text can be stored: no NUL (PostgreSQL), no lone surrogate (UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def flag(value: Any) -> bool | None:
    if value is not None and not isinstance(value, bool):
        raise fail(f"{F} must be a boolean, got {brief(value)}")
    return value


Flag = Annotated[Optional[bool], BeforeValidator(flag)]


def check_stop(value: Any) -> list[str] | None:
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or len(items) > MAX_STOP or not all(isinstance(s, str) and s for s in items):
        raise fail(f"stop must be a non-empty string or a list of up to {MAX_STOP} non-empty strings; got "
                   f"{brief(value)}")
    if any(len(s) > 200 for s in items):
        raise fail("each stop string must be at most 200 characters")
    return list(dict.fromkeys(items))


Stop = Annotated[Optional[str | list[str]], BeforeValidator(check_stop)]


def check_logit_bias(value: Any) -> dict[str, float] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > t.MAX_LOGIT_BIAS:
        raise fail(f"logit_bias must be an object of at most {t.MAX_LOGIT_BIAS} entries {{\"token id\": bias}}; got "
                   f"{brief(value)}")
    out = {}
    for k, b in value.items():
        key = str(k)
        if not TOKEN_ID.fullmatch(key):
            raise fail(f"logit_bias keys must be token ids (integers >= 0 as text); got {brief(k)}")
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            raise fail(f"logit_bias[{key}] must be a number in [-100, 100]; got {brief(b)}")
        out[str(int(key))] = float(b)
    return out


def check_user(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > MAX_USER_CHARS or not storable(value)):
        raise fail(f"user must be a string of at most {MAX_USER_CHARS} characters (valid text without NUL); got "
                   f"{brief(value)}")
    return value


def check_metadata(value: Any) -> dict[str, str] | None:
    if value is not None and (not isinstance(value, Mapping) or len(value) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(x, str) and len(x) <= 512 and storable(k + x)
            for k, x in value.items())):
        raise fail(f"metadata must be an object of at most {MAX_METADATA} string pairs (keys up to 64 characters, "
                   f"values up to 512, valid text without NUL); got {brief(value)}")
    return dict(value) if value is not None else None


def check_stream_options(value: Any) -> Any:
    if value is not None and (not isinstance(value, Mapping) or any(k != "include_usage" for k in value)):
        raise fail("stream_options may only hold include_usage")
    return value


def check_top_logprobs(top: Any, info: ValidationInfo) -> int | None:
    if top is not None and (isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= MAX_TOP_LOGPROBS):
        raise fail(f"top_logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS}, got {brief(top)}")
    if top and not info.data.get("logprobs"):
        raise fail("top_logprobs needs logprobs: true")
    return top


def check_response_format(value: Any, info: ValidationInfo) -> dict | None:
    try:
        return parse_response_format(value, t.setting(info, "limits.max_text_chars"))
    except ValidationError as exc:
        e = (exc.errors or [{"field": exc.field or "response_format", "message": exc.message}])[0]
        raise fail(e["message"], field=e["field"]) from None


# OpenAI body fields accepted only at a value that changes nothing here (their default); None: any value, as
# those mean nothing on this server (README, "/v1 fields").
NEUTRAL = {"store": None, "parallel_tool_calls": None, "service_tier": None, "tools": (None,),
           "tool_choice": (None, "none"), "reasoning_effort": None, "prediction": (None,), "modalities": (None, ["text"]),
           "prompt_cache_key": None, "safety_identifier": None, "verbosity": None}


def neutral_message(key: str, value: Any, allowed: tuple | None) -> str | None:
    """Return why a field accepted only at its neutral values refuses value (None: accepted)."""
    # A boolean is not a number here: false is not 0.
    if allowed is None or any(value == a and isinstance(value, bool) == isinstance(a, bool) for a in allowed):
        return None
    return f"{key}: {REFUSED_WHY[key]}" if key in REFUSED_WHY else \
        f"{key} is not supported by this server (give {brief(allowed[0])} or leave it out)"


def neutral_problems(body: Mapping[str, Any], neutral: Mapping[str, tuple | None]) -> list[dict]:
    """Return the problems of the body's neutral fields (for /v1/completions, whose neutral fields differ)."""
    return [{"field": key, "message": m} for key, allowed in neutral.items()
            if key in body and (m := neutral_message(key, body[key], allowed))]


def neutral(key: str) -> Any:
    """An OpenAI field accepted only at a value that changes nothing here (NEUTRAL)."""
    allowed = NEUTRAL[key]

    def check(value: Any) -> Any:
        message = neutral_message(key, value, allowed)
        if message:
            raise fail(message)
        return value

    return Annotated[Any, BeforeValidator(check), Field(None, description="Accepted only at a value that changes "
                                                        "nothing here" + (f": {allowed!r}." if allowed else "."))]


