"""Chat-completion fields besides the messages and the boost: the sampling extras, user and metadata, and n.

Torch-free (the web validates with it). A chat job with n choices stores n runs, named by choice_variant;
choice i samples with its own seed, choice_seed(seed, i) = seed + i (mod 2**32), so the choices differ
when sampling and are all equal at temperature 0 (greedy), as OpenAI's are.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

from shared.fields import MAX_LOGIT_BIAS
from shared.validation import Validator, brief

CHAT_VARIANT = "chat"  # the run of a chat job's first (or only) choice
# The sampling extras: job fields (shared.fields) applied by worker.engine.logits; logit_bias is chat-only.
SAMPLING_FIELDS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
SAMPLING_KEYS = SAMPLING_FIELDS + ("logit_bias",)
MAX_METADATA = 16  # pairs; keys <= 64 characters, values <= 512, as OpenAI allows
MAX_USER_CHARS = 512
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


def choice_variant(index: int) -> str:
    """Return the run (variant) name of a chat job's choice: "chat" for the first, "chat_<i>" after it."""
    return CHAT_VARIANT if index == 0 else f"{CHAT_VARIANT}_{index}"


def choice_index(variant: str) -> int | None:
    """Return the choice a chat run's variant name holds, or None for another name."""
    if variant == CHAT_VARIANT:
        return 0
    head, _, tail = variant.partition("_")
    return int(tail) if head == CHAT_VARIANT and tail.isdigit() else None


def choice_variants(params: Mapping[str, Any]) -> list[str]:
    """Return the run names a chat job stores: one per choice (n)."""
    return [choice_variant(i) for i in range(int(params.get("n") or 1))]


def choice_seed(seed: int, index: int) -> int:
    """Return choice index's sampling seed: seed + index (modulo 2**32), so each choice draws its own tokens."""
    return (int(seed) + index) % 2**32


def logit_bias_param(v: Validator, value: Any) -> dict[str, float]:
    """Return logit_bias as {token id text: bias}; the worker refuses ids past its model's vocabulary."""
    if value is None:
        return {}
    if not isinstance(value, Mapping) or len(value) > MAX_LOGIT_BIAS:
        v.error("logit_bias", f"logit_bias must be an object of at most {MAX_LOGIT_BIAS} entries {{\"token id\": "
                              f"bias}}; got {brief(value)}")
        return {}
    out = {}
    for k, b in value.items():
        key = str(k)
        if not TOKEN_ID.fullmatch(key):
            v.error("logit_bias", f"logit_bias keys must be token ids (integers >= 0 as text); got {brief(k)}")
            return {}
        if isinstance(b, bool) or not isinstance(b, (int, float)) or not -100 <= b <= 100:
            v.error("logit_bias", f"logit_bias[{key}] must be a number in [-100, 100]; got {brief(b)}")
            return {}
        out[str(int(key))] = float(b)
    return out


def _text(value: str) -> bool:
    """Return whether the text can be stored: no NUL (PostgreSQL), no lone surrogate (UTF-8)."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return "\x00" not in value


def user_param(v: Validator, value: Any) -> str | None:
    """Return the end user's id to store with the job (OpenAI's user), or None."""
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_USER_CHARS or not _text(value):
        v.error("user", f"user must be a string of at most {MAX_USER_CHARS} characters (valid text without NUL); "
                        f"got {brief(value)}")
        return None
    return value


def metadata_param(v: Validator, value: Any) -> dict[str, str] | None:
    """Return the metadata pairs to store with the job, or None."""
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(x, str) and len(x) <= 512 and _text(k + x)
            for k, x in value.items()):
        v.error("metadata", f"metadata must be an object of at most {MAX_METADATA} string pairs (keys up to 64 "
                            f"characters, values up to 512, valid text without NUL); got {brief(value)}")
        return None
    return dict(value)
