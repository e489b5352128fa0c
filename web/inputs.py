"""Reading a request's input, shared by the blueprints: the JSON body, and whether an openai SDK call is a retry."""

from __future__ import annotations

import json
from typing import Any

from flask import request

from shared.errors import BadRequest, UnsupportedMediaType


def json_body() -> Any:
    """Return the request's JSON body; a body that is not JSON (or not UTF-8, or nested too deeply) is a 4xx."""
    if not request.is_json:  # application/json or application/*+json
        raise UnsupportedMediaType(f"send the job as JSON with 'Content-Type: application/json' "
                                   f"(got {request.mimetype or 'no content type'!r})", field="Content-Type")
    raw = request.get_data(cache=True)
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("the body must be UTF-8 encoded JSON", field="body") from None
    except ValueError as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}", field="body") from None
    except RecursionError:  # e.g. [[[[...]]]] nested deeper than the parser's stack
        raise BadRequest("the body is nested too deeply to be a job request", field="body") from None


def sdk_retry() -> bool:
    """Return True when the request is an openai SDK retry (it counts its tries in x-stainless-retry-count)."""
    try:
        return int(request.headers.get("x-stainless-retry-count", "0")) > 0
    except ValueError:
        return False
