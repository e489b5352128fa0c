"""The OpenAPI part for /v1/completions (web/v1_completions.py): its request schema, response and operations."""

from __future__ import annotations

from typing import Any, Mapping

from shared.completions import MAX_PROMPTS, NEUTRAL
from shared.logprobs import MAX_TOP_LOGPROBS


def completion_request_schema(settings: Mapping[str, Any], models: list[str], chat_schema: dict) -> dict[str, Any]:
    """Return the POST /v1/completions body's schema; the decoding fields and the boost as chat_schema has them."""
    chat = chat_schema["properties"]
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
            "n": {"type": ["integer", "null"], "minimum": 1, "maximum": settings["v1.max_n"],
                  "description": "Choices per prompt, each a row of the job sampled with seed + i; choices come "
                                 "prompt by prompt (index = prompt * n + choice); stream takes n = 1."},
            "stop": chat["stop"], "stream": chat["stream"], "stream_options": chat["stream_options"],
            "instaboost": {"anyOf": [boost, {"type": "null"}]},
            **neutral,
        },
    }


_CHOICE_LOGPROBS = {"type": ["object", "null"], "properties": {
    "tokens": {"type": "array", "items": {"type": "string"}},
    "token_logprobs": {"type": "array", "items": {"type": ["number", "null"]}},
    "top_logprobs": {"type": "array", "items": {"type": ["object", "null"]}},
    "text_offset": {"type": "array", "items": {"type": "integer"}}}}

COMPLETION_SCHEMAS: dict[str, Any] = {
    "Completion": {
        "type": "object", "required": ["id", "object", "created", "model", "choices", "usage"],
        "properties": {
            "id": {"type": "string", "description": "cmpl-<the id of the job that ran it>."},
            "object": {"const": "text_completion"}, "created": {"type": "integer"}, "model": {"type": "string"},
            "system_fingerprint": {"type": "string"},
            "choices": {"type": "array", "items": {
                "type": "object", "required": ["index", "text", "finish_reason", "logprobs"],
                "properties": {"index": {"type": "integer"}, "text": {"type": "string"},
                               "finish_reason": {"type": "string", "enum": ["stop", "length"]},
                               "logprobs": _CHOICE_LOGPROBS}}},
            "usage": {"type": "object"}, "instaboost": {"type": "object"},
        },
    },
}


def completion_paths(oai_error, v1_common: dict, cross_site: dict, retry_after: dict) -> dict[str, Any]:
    """Return the /v1/completions operations."""
    return {
        "/v1/completions": {"post": {
            "operationId": "v1CreateCompletion", "summary": "Create a completion (a stored completion job)",
            "description": "OpenAI's legacy completions: echo and logprobs for likelihood evaluation (lm-eval's "
                           "local-completions), max_tokens 0 to score a prompt. The boost: <boost>…</boost> in a "
                           "string prompt, or instaboost.spans; in the body's instaboost or the X-InstaBoost header.",
            "parameters": [
                {"name": "X-InstaBoost", "in": "header", "required": False, "schema": {"type": "string"},
                 "description": "The boost as a JSON object like the body's instaboost (the body wins)."},
                {"name": "Idempotency-Key", "in": "header", "required": False,
                 "schema": {"type": "string", "minLength": 1, "maxLength": 255}}],
            "requestBody": {"required": True, "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/CompletionRequest"}}}},
            "responses": {
                "200": {"description": "The completion; with stream, server-sent text_completion chunks and "
                                       "data: [DONE].",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Completion"}},
                                    "text/event-stream": {"schema": {"type": "string"}}}},
                "400": oai_error("Invalid request (OpenAI's invalid_request_error)."),
                "404": oai_error("No live worker serves the model (code model_not_found)."),
                "409": oai_error("Cancelled, or the Idempotency-Key was used with another body."),
                "413": oai_error("The body is too large."),
                "429": {**oai_error("Too many queued jobs or waiting completions."), "headers": retry_after},
                "503": {**oai_error("The broker is unreachable."), "headers": retry_after},
                "504": oai_error("Not finished within v1.wait_seconds; poll GET /v1/completions/{id}."),
                **v1_common, **cross_site}}},
        "/v1/completions/{completion_id}": {"get": {
            "operationId": "v1GetCompletion", "summary": "A stored completion by id (cmpl-<job id>)",
            "parameters": [{"name": "completion_id", "in": "path", "required": True, "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The completion.", "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/Completion"}}}},
                "400": oai_error("Its job failed on its input."), "404": oai_error("No such completion."),
                "409": oai_error("Not finished yet."), **v1_common}}},
    }
