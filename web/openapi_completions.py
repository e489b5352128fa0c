"""The POST /v1/completions body's schema (web/v1_completions.py): chat's decoding fields and boost, and a prompt."""

from __future__ import annotations

from typing import Any

from shared.completions import MAX_PROMPTS, NEUTRAL
from shared.logprobs import MAX_TOP_LOGPROBS
from shared.settings import Settings
from web.apidoc import body
from web.openapi import chat_request_schema


def completion_request_schema(settings: Settings) -> dict[str, Any]:
    """Return the POST /v1/completions body's schema; the decoding fields and the boost as chat's."""
    chat = chat_request_schema(settings)["properties"]
    text = {"type": "string", "minLength": 1, "pattern": "^[^\\u0000]*$"}
    ids = {"type": "array", "minItems": 1, "items": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}
    span = {"type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"},
            "description": "[start, end] or [start, end, M]: character offsets into a string prompt, token offsets "
                           "into a token-id prompt."}
    boost = chat["instaboost"]["anyOf"][0] if "anyOf" in chat["instaboost"] else chat["instaboost"]
    boost = {**boost, "properties": {**boost["properties"], "spans": {
        "type": ["array", "null"], "items": span, "minItems": 1, "maxItems": 64}}}
    neutral = {key: {} if allowed is None else {"enum": list(allowed)} for key, allowed in NEUTRAL.items()}
    return {
        "type": "object", "required": ["model", "prompt"], "additionalProperties": False,
        "properties": {
            "model": chat["model"],
            "prompt": {"anyOf": [text, ids, {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": text},
                                 {"type": "array", "minItems": 1, "maxItems": MAX_PROMPTS, "items": ids}],
                       "description": "A string, a list of strings, token ids, or a list of token-id lists "
                                      f"(at most {MAX_PROMPTS} prompts; each is one row of the job)."},
            "max_tokens": {"type": ["integer", "null"], "minimum": 0,
                           "maximum": chat["max_tokens"]["maximum"] if "maximum" in chat["max_tokens"] else 100_000,
                           "description": "New tokens per prompt (default 16); 0 scores the prompt only."},
            "echo": {"type": ["boolean", "null"], "description": "Return the prompt before the text (and with "
                                                                 "logprobs, the prompt's token logprobs)."},
            "logprobs": {"type": ["integer", "null"], "minimum": 0, "maximum": MAX_TOP_LOGPROBS,
                         "description": "The top tokens' logprobs per position (raw: before temperature and top_p)."},
            "temperature": chat["temperature"], "top_p": chat["top_p"], "seed": chat["seed"],
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": settings.v1.max_n,
                  "description": "Choices per prompt, each a row of the job sampled with seed + i; choices come "
                                 "prompt by prompt (index = prompt * n + choice); stream takes n = 1."},
            "stop": chat["stop"], "stream": chat["stream"], "stream_options": chat["stream_options"],
            "instaboost": {"anyOf": [boost, {"type": "null"}]},
            **neutral,
        },
    }


COMPLETION_REQUEST = body("CompletionRequest", completion_request_schema)
