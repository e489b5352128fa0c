"""Stored token logprobs (worker.engine.logprobs sections) in OpenAI's two shapes: completions and chat.

A run stores {"prompt": section or None, "output": section or None}; a section holds per token its id, its
text, its logprob (None for a prompt's first token) and its top-k as [[text, logprob]]. Torch-free.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

MAX_TOP_LOGPROBS = 20  # chat top_logprobs and completions logprobs: OpenAI's chat bound, vLLM's completions bound


def _entries(section: Mapping[str, Any] | None) -> list[tuple[str, float | None, list]]:
    if not section:
        return []
    return list(zip(section["tokens"], section["logprobs"], section["top"]))


def completion_logprobs(sections: Sequence[Mapping[str, Any] | None], start: int = 0) -> dict:
    """Return a completions choice's logprobs: tokens, token_logprobs, top_logprobs, text_offset.

    sections in order (the echoed prompt, then the output); text_offset counts characters from start, each
    token's offset the sum of the texts before it (as vLLM reports it).
    """
    out: dict[str, list] = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    at = start
    for section in sections:
        for token, lp, top in _entries(section):
            out["tokens"].append(token)
            out["token_logprobs"].append(lp)
            # A dict, as OpenAI's legacy API has it (two tokens decoding to the same text keep the likelier).
            out["top_logprobs"].append(None if lp is None else {t: v for t, v in reversed(top)})
            out["text_offset"].append(at)
            at += len(token)
    return out


def _token(text: str, lp: float) -> dict:
    return {"token": text, "logprob": lp, "bytes": list(text.encode("utf-8"))}


def chat_logprobs(stored: Mapping[str, Any] | None) -> dict | None:
    """Return a chat choice's logprobs ({"content": [...], "refusal": None}) from a run's stored logprobs."""
    if not stored or stored.get("output") is None:
        return None
    return {"content": [{**_token(t, lp), "top_logprobs": [_token(a, b) for a, b in top]}
                        for t, lp, top in _entries(stored["output"])], "refusal": None}
