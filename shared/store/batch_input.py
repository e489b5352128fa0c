"""A batch's input: its create request (POST /v1/batches body) and its input file's lines, validated.

Both are declared in shared.requests.batch; a line's body is validated as POST /v1/chat/completions' body.

A line is refused (it goes to the batch's error file with status 400, or 404 for an unserved model, and never
becomes a job) for what POST /v1/chat/completions would refuse in its body, the model-fit check included; the
other lines run. This follows OpenAI, whose per-request errors are lines of the error file; a batch fails as a whole
only when no line is valid (its ``errors`` list the lines).
"""

from __future__ import annotations

from typing import Any

from shared.chat import chat_params
from shared.errors import ValidationError
from shared.requests.batch import (CHAT_ENDPOINT, COMPLETION_WINDOWS, MAX_CUSTOM_ID,  # noqa: F401
                                   create_request, read_line)
from shared.settings import Settings
from shared.store import files, submission
from shared.validation import brief

def _line_error(n: int, custom_id: Any, message: str, param: str | None = None, code: str = "invalid_value",
                status: int = 400) -> dict:
    return {"line": n, "custom_id": custom_id if isinstance(custom_id, str) else None, "message": message,
            "param": param, "code": code, "status": status}


def parse_lines(content: bytes, endpoint: str, settings: Settings, served: set[str],
                beats: list[dict] | None = None) -> tuple[list[tuple[str, dict]], list[dict], int]:
    """Return (valid (custom_id, chat params) lines, refused lines' errors, line count) of a batch input.

    A line is refused as POST /v1/chat/completions would refuse its body, the model-fit check included (layers,
    heads and max_tokens against what the live workers advertise, submission.check_chat_fits).
    """
    good: list[tuple[str, dict]] = []
    bad: list[dict] = []
    seen: set[str] = set()
    total = 0
    for n, raw in files.jsonl_lines(content):
        obj = files.parse_line(n, raw)
        if obj is None:
            continue
        total += 1
        line, problem = read_line(obj)
        cid = obj.get("custom_id")
        if problem is not None and problem["field"] == "custom_id":
            bad.append(_line_error(n, None, f"line {n}: {problem['message']}", "custom_id"))
            continue
        if cid in seen:
            bad.append(_line_error(n, cid, f"line {n}: custom_id {brief(cid)} is used by an earlier line; each "
                                           "must be unique", "custom_id", "duplicate_custom_id"))
            continue
        seen.add(cid)
        if problem is not None:
            bad.append(_line_error(n, cid, f"line {n}: {problem['message']}", problem["field"],
                                   "invalid_url" if problem["field"] == "url" else "invalid_value"))
            continue
        body = line.body
        if isinstance(body, dict) and body.get("stream"):
            body = {**body, "stream": False}  # a batch line is answered in the output file, never streamed
        try:
            params = chat_params(body, settings, priority="batch")
            if params["model"] in served:
                submission.check_chat_fits(params, submission.model_facts(beats or [], params["model"]))
        except ValidationError as exc:
            detail = "; ".join(str(e["message"]) for e in exc.errors) or exc.message
            bad.append(_line_error(n, cid, f"line {n}: {detail}", exc.errors[0]["field"] if exc.errors else None))
            continue
        if params["model"] not in served:
            bad.append(_line_error(n, cid, f"line {n}: no live worker serves model {params['model']!r}", "model",
                                   "model_not_found", 404))
            continue
        good.append((cid, params))
    return good, bad, total
