"""The POST /v1/responses body's schema (web/v1_responses.py); its bounds are chat's (a response is a chat job).

Everything the body schema refuses, shared.responses refuses too (the Schemathesis test sends such bodies).
"""

from __future__ import annotations

from typing import Any

from shared.responses import ID_PATTERN, INCLUDABLE, MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_USER, NEUTRAL
from shared.settings import Settings
from web.apidoc import body
from web.openapi import _nullable, chat_request_schema

TEXT = {"type": "string", "pattern": "^[^\\u0000]*$"}


def responses_request_schema(settings: Settings) -> dict[str, Any]:
    """Return the POST /v1/responses body's schema; numbers and the boost as chat's (web.openapi)."""
    chat = chat_request_schema(settings)["properties"]
    part = {"type": "object", "required": ["type", "text"],
            "properties": {"type": {"type": "string", "enum": ["input_text", "output_text"]}, "text": TEXT}}
    item = {
        "type": "object", "required": ["role", "content"], "additionalProperties": False,
        "properties": {
            "type": {"const": "message"},
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant"]},
            "content": {"anyOf": [TEXT, {"type": "array", "items": part}]},
            "id": {}, "status": {},
            "boost": chat["messages"]["items"]["properties"]["boost"],
        },
    }
    neutral: dict[str, Any] = {}
    for key, allowed in NEUTRAL.items():
        if allowed is None:
            neutral[key] = {}
        elif () in allowed:  # an empty list, or null
            neutral[key] = {"type": ["array", "null"], "maxItems": 0}
        else:
            neutral[key] = {"enum": list(allowed)}
    return {
        "type": "object", "required": ["model", "input"], "additionalProperties": False,
        "properties": {
            "model": chat["model"],
            "input": {"anyOf": [TEXT, {"type": "array", "minItems": 1, "items": item}],
                      "description": "A user message, or message items whose content is text (input_text parts)."},
            "instructions": _nullable({**TEXT, "description": "A system message first; with instaboost and no "
                                                              "<boost> tags, what is boosted."}),
            "max_output_tokens": chat["max_completion_tokens"], "temperature": chat["temperature"],
            "top_p": chat["top_p"], "stream": chat["stream"],
            "previous_response_id": _nullable({"type": "string", "pattern": f"^{ID_PATTERN}$",
                                               "description": "Continue from a stored response: its input and "
                                                              "output come first, unboosted."}),
            "store": _nullable({"type": "boolean", "description": "Accepted; every response is stored as a job."}),
            "metadata": _nullable({"type": "object", "maxProperties": MAX_METADATA,
                                   "propertyNames": {"maxLength": MAX_METADATA_KEY},
                                   "additionalProperties": {"type": "string", "maxLength": MAX_METADATA_VALUE}}),
            "user": _nullable({"type": "string", "maxLength": MAX_USER}),
            "instaboost": chat["instaboost"],
            "include": _nullable({"type": "array", "items": {"type": "string", "enum": list(INCLUDABLE)},
                                  "description": "Nothing to include here: no reasoning items are produced."}),
            **neutral,
        },
    }


RESPONSE_REQUEST = body("ResponseRequest", responses_request_schema)
