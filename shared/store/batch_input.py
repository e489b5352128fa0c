"""A batch's input: its create request (POST /v1/batches body) and its input file's lines, validated.

A line is refused (it goes to the batch's error file with status 400, or 404 for an unserved model, and never
becomes a job) for what POST /v1/chat/completions would refuse in its body, the model-fit check included; the
other lines run. This follows OpenAI, whose per-request errors are lines of the error file; a batch fails as a whole
only when no line is valid (its ``errors`` list the lines).
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Mapping

from shared.chat import CHAT_ENDPOINT, chat_params
from shared.errors import BadRequest, ValidationError
from shared.store import files, submission
from shared.validation import brief

COMPLETION_WINDOWS = {"24h": timedelta(hours=24)}
MAX_CUSTOM_ID = 512
MAX_METADATA_KEYS = 16


def _line_error(n: int, custom_id: Any, message: str, param: str | None = None, code: str = "invalid_value",
                status: int = 400) -> dict:
    return {"line": n, "custom_id": custom_id if isinstance(custom_id, str) else None, "message": message,
            "param": param, "code": code, "status": status}


def parse_lines(content: bytes, endpoint: str, settings: Mapping[str, Any], served: set[str],
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
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid or len(cid) > MAX_CUSTOM_ID:
            bad.append(_line_error(n, None, f"line {n}: custom_id must be a non-empty string of at most "
                                            f"{MAX_CUSTOM_ID} characters", "custom_id"))
            continue
        if cid in seen:
            bad.append(_line_error(n, cid, f"line {n}: custom_id {brief(cid)} is used by an earlier line; each "
                                           "must be unique", "custom_id", "duplicate_custom_id"))
            continue
        seen.add(cid)
        unknown = [k for k in obj if k not in ("custom_id", "method", "url", "body")]
        if unknown:
            bad.append(_line_error(n, cid, f"line {n}: unknown keys {', '.join(map(brief, unknown[:5]))}; a line "
                                           "holds custom_id, method, url and body"))
            continue
        if obj.get("method") != "POST":
            bad.append(_line_error(n, cid, f"line {n}: method must be POST, got {brief(obj.get('method'))}",
                                   "method"))
            continue
        if obj.get("url") != endpoint:
            bad.append(_line_error(n, cid, f"line {n}: url must be the batch's endpoint {endpoint}, got "
                                           f"{brief(obj.get('url'))}", "url", "invalid_url"))
            continue
        body = obj.get("body")
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


def _metadata(value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_METADATA_KEYS or not all(
            isinstance(k, str) and len(k) <= 64 and isinstance(v, str) and len(v) <= 512 for k, v in value.items()):
        raise ValidationError(f"metadata must be an object of at most {MAX_METADATA_KEYS} string keys (64 "
                              "characters) and string values (512 characters)", field="metadata")
    return value


def create_request(body: Any) -> dict:
    """Return the validated create request: input_file_id, endpoint, completion_window, metadata."""
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object with input_file_id, endpoint and completion_window",
                         field="body")
    unknown = [k for k in body if k not in ("input_file_id", "endpoint", "completion_window", "metadata")]
    if unknown:
        raise ValidationError(f"unrecognized request argument {brief(unknown[0])}", field=str(unknown[0])[:64])
    if body.get("endpoint") != CHAT_ENDPOINT:
        raise ValidationError(f"endpoint must be {CHAT_ENDPOINT} (the one this server batches); got "
                              f"{brief(body.get('endpoint'))}", field="endpoint")
    window = body.get("completion_window")
    if not isinstance(window, str) or window not in COMPLETION_WINDOWS:
        raise ValidationError(f"completion_window must be one of {', '.join(COMPLETION_WINDOWS)}; got "
                              f"{brief(window)}", field="completion_window")
    meta = _metadata(body.get("metadata"))
    file_id = body.get("input_file_id")
    if not isinstance(file_id, str) or not file_id:
        raise ValidationError("input_file_id must be the id of a file uploaded with purpose batch",
                              field="input_file_id")
    return {"input_file_id": file_id, "endpoint": CHAT_ENDPOINT, "completion_window": window, "meta": meta}
