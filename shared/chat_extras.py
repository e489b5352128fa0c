"""Chat-completion choices and the sampling extras (validated by shared.requests.openai and shared.requests.job).

Torch-free. A chat job with n choices stores n runs, named by choice_variant;
choice i samples with its own seed, choice_seed(seed, i) = seed + i (mod 2**32), so the choices differ
when sampling and are all equal at temperature 0 (greedy), as OpenAI's are.
"""

from __future__ import annotations

from typing import Any, Mapping

from shared.requests.openai import MAX_METADATA, MAX_USER_CHARS, REFUSED_WHY  # noqa: F401 (the OpenAPI document's)

CHAT_VARIANT = "chat"  # the run of a chat job's first (or only) choice
# The sampling extras: job fields (shared.fields) applied by worker.engine.logits; logit_bias is chat-only.
SAMPLING_FIELDS = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
SAMPLING_KEYS = SAMPLING_FIELDS + ("logit_bias",)


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
