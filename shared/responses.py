"""Responses API requests (POST /v1/responses, text only) translated into chat jobs, and chat jobs back into responses.

Torch-free. A response is an ordinary chat job (shared.chat): the request becomes chat messages
(``instructions`` a leading system message, then the conversation of ``previous_response_id``, then ``input``),
validated by shared.chat.chat_params, so the boost, its defaults and every bound are chat's. What only the
Responses API needs (instructions, the conversation so far, metadata, user, store) rides in params["response"].

A continued conversation (previous_response_id) is the earlier response's input and output as plain,
unboosted context: the boost applies to this request's instructions and <boost> tags, as OpenAI applies
``instructions`` to one response only.
"""

from __future__ import annotations

import re
import time
from typing import Any, Mapping

from shared.chat import chat_params, fingerprint
from shared.errors import BadRequest, Conflict, ValidationError
from shared.settings import Settings
from shared.validation import brief

API = "responses"
ID_PREFIX, MESSAGE_PREFIX = "resp_", "msg_"
ID_PATTERN = "resp_[0-9]{1,10}"
# Request fields taken and used (instaboost: the boost, as chat's extension).
USED_KEYS = ("model", "input", "instructions", "max_output_tokens", "temperature", "top_p", "stream",
             "previous_response_id", "store", "metadata", "user", "instaboost", "include")
# What include may ask for: encrypted reasoning (Inspect asks for it with store false), of which there is none here.
INCLUDABLE = ("reasoning.encrypted_content",)
# Fields accepted at a value that changes nothing here (None: any value; stored nowhere, listed in the README).
NEUTRAL = {"tools": (None, ()), "tool_choice": (None, "none"), "reasoning": (None,),
           "parallel_tool_calls": None, "service_tier": None, "truncation": (None, "disabled"),
           "background": (None, False), "prompt_cache_key": None, "safety_identifier": None,
           "text": (None, {"format": {"type": "text"}})}
# Fields refused with what to do instead (the rest of OpenAI's Responses fields are refused as unrecognized).
REFUSED = {"tools": "tools are not supported: this server generates text only",
           "tool_choice": "tool_choice is not supported: this server has no tools (leave it out or give 'none')",
           "reasoning": "reasoning is not supported: the served models are not reasoning models",
           "text": "text may only be {\"format\": {\"type\": \"text\"}}: structured output is not supported on "
                   "/v1/responses",
           "truncation": "truncation may only be 'disabled': a conversation longer than the model's context is "
                         "refused",
           "background": "background is not supported: leave it out, or poll GET /v1/responses/{id} after a 504"}
ITEM_KEYS = ("type", "role", "content", "id", "status", "boost")
TEXT_PARTS = ("input_text", "output_text")
MAX_METADATA, MAX_METADATA_KEY, MAX_METADATA_VALUE, MAX_USER = 16, 64, 512, 512


class PreviousNotFound(BadRequest):
    """previous_response_id names no stored response (answered 400, as OpenAI does)."""

    code = "previous_response_not_found"


def response_id(job_id: int) -> str:
    """Return a response's id: its job's id behind OpenAI's resp_ prefix."""
    return f"{ID_PREFIX}{job_id}"


def job_id_of(rid: Any) -> int | None:
    """Return the job id a response id names, or None when it is not one of ours."""
    if not isinstance(rid, str) or not re.fullmatch(ID_PATTERN, rid):
        return None
    n = int(rid[len(ID_PREFIX):])
    return n if 0 < n < 2**31 else None


def is_response(params: Mapping[str, Any]) -> bool:
    """Return whether stored job params are a Responses API request's."""
    return isinstance(params, Mapping) and params.get("api") == API


def _refuse(errors: list[dict], field: str, message: str) -> None:
    errors.append({"field": field, "message": message})


def _part_text(errors: list[dict], part: Any, field: str) -> str | None:
    if isinstance(part, Mapping) and part.get("type") in TEXT_PARTS and isinstance(part.get("text"), str):
        return part["text"]
    kind = part.get("type") if isinstance(part, Mapping) else None
    what = f"a part of type {kind}" if isinstance(kind, str) else brief(part)
    _refuse(errors, field, f"{field} is {what}: only text parts {{\"type\": \"input_text\", \"text\": ...}} are "
                           "supported (no images, files or audio)")
    return None


def _item(errors: list[dict], item: Any, field: str) -> dict | None:
    """Return one input item as a chat message {role, content[, boost]}, or None (the error recorded)."""
    if not isinstance(item, Mapping):
        _refuse(errors, field, f"{field} must be a message object {{role, content}}, got {brief(item)}")
        return None
    kind = item.get("type", "message")
    if kind != "message":
        _refuse(errors, f"{field}.type", f"{field}.type {brief(kind)} is not supported: only message items with "
                                         "text (function calls, tool outputs, reasoning and references are not)")
        return None
    unknown = [k for k in item if k not in ITEM_KEYS]
    if unknown:
        _refuse(errors, field, f"{field} has unknown keys {', '.join(map(brief, unknown[:5]))}; allowed: "
                               + ", ".join(ITEM_KEYS))
        return None
    content = item.get("content")
    if isinstance(content, list):
        texts = [_part_text(errors, p, f"{field}.content[{k}]") for k, p in enumerate(content)]
        if any(t is None for t in texts):
            return None
        content = "".join(texts)
    elif not isinstance(content, str):
        _refuse(errors, f"{field}.content", f"{field}.content must be a string or a list of input_text parts, got "
                                            f"{brief(content)}")
        return None
    message = {"role": item.get("role"), "content": content}
    if item.get("boost") is not None:
        message["boost"] = item["boost"]
    return message


def _input(errors: list[dict], value: Any) -> list[dict]:
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if not isinstance(value, list) or not value:
        _refuse(errors, "input", f"input must be a string or a non-empty list of message items, got {brief(value)}")
        return []
    return [m for m in (_item(errors, it, f"input[{i}]") for i, it in enumerate(value)) if m is not None]


def _metadata(errors: list[dict], value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > MAX_METADATA or not all(
            isinstance(k, str) and len(k) <= MAX_METADATA_KEY and isinstance(v, str) and len(v) <= MAX_METADATA_VALUE
            for k, v in value.items()):
        _refuse(errors, "metadata", f"metadata must be an object of up to {MAX_METADATA} string values (keys up to "
                                    f"{MAX_METADATA_KEY} characters, values up to {MAX_METADATA_VALUE})")
        return None
    return dict(value)


def _neutral(errors: list[dict], body: Mapping[str, Any]) -> None:
    for key, allowed in NEUTRAL.items():
        if key not in body or allowed is None:
            continue
        value = body[key]
        if any(value == a and type(value) is type(a) for a in allowed) or (value == [] and () in allowed):
            continue  # by type too: JSON's 0 is not false
        _refuse(errors, key, REFUSED.get(key, f"{key} is not supported by this server (leave it out)"))


def _include(errors: list[dict], value: Any) -> None:
    if value is None:
        return
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        _refuse(errors, "include", f"include must be a list of strings, got {brief(value)}")
        return
    for k, v in enumerate(value):
        if v not in INCLUDABLE:
            why = "logprobs are not available on /v1/responses" if "logprobs" in v else "there is no such output here"
            _refuse(errors, f"include[{k}]", f"include[{k}] {brief(v)} is not supported: {why} (leave it out; "
                                             f"allowed: {', '.join(INCLUDABLE)})")
            return


def conversation(previous: Mapping[str, Any] | None) -> list[dict]:
    """Return the plain conversation a continued response starts from: the earlier input, then its output."""
    if previous is None:
        return []
    return [*previous["conversation"], {"role": "assistant", "text": previous["output"]}]


def responses_params(body: Any, settings: Settings, previous: Mapping[str, Any] | None = None
                     ) -> dict[str, Any]:
    """Validate a Responses API body; return the chat job params it runs as (ValidationError names every field).

    previous: {"id", "conversation", "output"} of the response previous_response_id names (load_previous).
    """
    if not isinstance(body, Mapping):
        raise ValidationError("the request body must be a JSON object with model and input",
                              errors=[{"field": "body", "message": "expected a JSON object"}])
    errors: list[dict] = []
    for key in [k for k in body if k not in USED_KEYS and k not in NEUTRAL][:10]:
        _refuse(errors, str(key)[:64], f"unrecognized request argument {brief(key)}")
    _neutral(errors, body)
    _include(errors, body.get("include"))
    if "input" not in body:
        _refuse(errors, "input", "input is required: a string, or a list of {role, content} message items")
    items = _input(errors, body.get("input")) if "input" in body else []
    instructions = body.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        _refuse(errors, "instructions", f"instructions must be a string, got {brief(instructions)}")
    metadata = _metadata(errors, body.get("metadata"))
    user = body.get("user")
    if user is not None and (not isinstance(user, str) or len(user) > MAX_USER):
        _refuse(errors, "user", f"user must be a string of up to {MAX_USER} characters")
    store = body.get("store")
    if store is not None and not isinstance(store, bool):
        _refuse(errors, "store", f"store must be a boolean, got {brief(store)}")
    prev_id = body.get("previous_response_id")
    if prev_id is not None and job_id_of(prev_id) is None:
        _refuse(errors, "previous_response_id", f"previous_response_id must be a response id like resp_123, got "
                                                f"{brief(prev_id)}")
    if errors:
        fields = ", ".join(dict.fromkeys(e["field"] for e in errors))
        raise ValidationError(f"invalid request: fix {fields}", errors=errors)
    lead = [{"role": "system", "content": instructions}] if instructions else []
    chat_body = {"model": body.get("model"), "messages": lead + items,
                 **{k: body[k] for k in ("temperature", "top_p", "stream", "instaboost") if k in body}}
    if "max_output_tokens" in body:
        chat_body["max_completion_tokens"] = body["max_output_tokens"]
    try:
        params = chat_params(chat_body, settings)
    except ValidationError as exc:
        raise renamed(exc, len(lead)) from None
    history = conversation(previous)
    new = params["messages"][len(lead):]
    total = sum(len(m["text"]) for m in history) + sum(len(t) for m in params["messages"] for t, _ in m["segments"])
    if total > settings.limits.max_text_chars:
        raise ValidationError(f"the conversation holds {total} characters; at most {settings.limits.max_text_chars}"
                              " are allowed: start a new one", field="previous_response_id" if history else "input")
    params["messages"] = (params["messages"][:len(lead)] + [{"role": m["role"], "segments": [[m["text"], None]]
                                                              if m["text"] else []} for m in history] + new)
    params["api"] = API
    params["response"] = {
        "instructions": instructions or None, "previous_response_id": prev_id, "metadata": metadata or {},
        "user": user, "store": store is not False, "max_output_tokens": body.get("max_output_tokens"),
        # This request's input after the earlier turns, as plain text: what a continuation starts from.
        "conversation": history + [{"role": m["role"], "text": "".join(t for t, _ in m["segments"])} for m in new],
    }
    return params


def renamed(exc: ValidationError, lead: int = 0) -> ValidationError:
    """Return chat's error with its field names as the Responses request spells them (lead: instructions given)."""

    def item(m: re.Match) -> str:
        i = int(m.group(1))
        return "instructions" if i < lead else f"input[{i - lead}]"

    def rename(text: str | None) -> str | None:
        if not text:
            return text
        text = re.sub(r"messages\[(\d+)\](\.content)?", lambda m: item(m) if int(m.group(1)) < lead else m.group(0),
                      text)
        text = re.sub(r"messages\[(\d+)\]", item, text)
        text = text.replace("messages", "input").replace("max_completion_tokens", "max_output_tokens")
        return re.sub(r"\bmax_tokens\b", "max_output_tokens", text)

    errors = [{**e, "field": rename(e.get("field")), "message": rename(str(e.get("message", "")))}
              for e in exc.errors]
    fields = ", ".join(dict.fromkeys(str(e["field"]) for e in errors))
    return ValidationError(f"invalid request: fix {fields}" if errors else rename(exc.message),
                           field=rename(exc.field), errors=errors)


def load_previous(session, rid: str | None) -> dict | None:
    """Return {"id", "conversation", "output"} of the stored response rid names; raise when it cannot continue."""
    from sqlalchemy import select

    from shared.chat import CHAT_VARIANT
    from shared.store.tables import Job, JobStatus, Run

    if rid is None:
        return None
    n = job_id_of(rid)
    job = session.get(Job, n) if n is not None else None
    if job is None or not is_response(job.params):
        raise PreviousNotFound(f"previous response with id {brief(rid)} not found (see GET /v1/responses/{{id}})",
                               field="previous_response_id")
    if not job.status.finished:
        raise Conflict(f"previous response {rid} is still {job.status.value}; continue from it once it is "
                       f"completed (GET /v1/responses/{rid})", field="previous_response_id")
    run = session.execute(select(Run).where(Run.job_id == job.id, Run.variant == CHAT_VARIANT)).scalar_one_or_none()
    if job.status is not JobStatus.succeeded or run is None:
        raise ValidationError(f"previous response {rid} {job.status.value}: it has no output to continue from",
                              field="previous_response_id")
    return {"id": rid, "conversation": job.params["response"]["conversation"], "output": run.produced_text}


def _status(job, run) -> str:
    from shared.store.tables import JobStatus

    if job.status is JobStatus.succeeded and run is not None:
        return "incomplete" if run.finish_reason == "length" else "completed"
    return {"queued": "queued", "running": "in_progress", "cancelling": "in_progress", "cancelled": "cancelled"}.get(
        job.status.value, "failed")


def message_item(job_id: int, text: str | None, status: str) -> dict:
    """Return the assistant message output item (content empty while nothing was generated)."""
    content = [] if text is None else [output_text(text)]
    return {"type": "message", "id": f"{MESSAGE_PREFIX}{job_id}", "status": status, "role": "assistant",
            "content": content}


def output_text(text: str) -> dict:
    """Return an output_text content part."""
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def response_object(job_id: int, params: Mapping[str, Any], created: float, status: str, *, text: str | None = None,
                    usage: tuple[int, int] | None = None, error: str | None = None,
                    boost: dict | None = None) -> dict:
    """Return the OpenAI response object of a response job in a given state."""
    r = params.get("response") or {}
    done = status in ("completed", "incomplete")
    body = {
        "id": response_id(job_id), "object": "response", "created_at": int(created), "status": status,
        "background": False, "completed_at": int(time.time()) if done else None,
        "error": {"code": "server_error", "message": error} if status == "failed" else None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": r.get("instructions"), "max_output_tokens": r.get("max_output_tokens"),
        "metadata": r.get("metadata") or {}, "model": params["model"],
        "output": [message_item(job_id, text, "incomplete" if status == "incomplete" else "completed")]
        if done else [],
        "parallel_tool_calls": False, "previous_response_id": r.get("previous_response_id"), "reasoning": None,
        "service_tier": "default", "store": r.get("store", True), "temperature": params.get("temperature"),
        "text": {"format": {"type": "text"}}, "tool_choice": "none", "tools": [], "top_p": params.get("top_p"),
        "truncation": "disabled", "user": r.get("user"),
        "usage": None if usage is None else {
            "input_tokens": usage[0], "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": usage[1], "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": usage[0] + usage[1]},
        "system_fingerprint": fingerprint(dict(params)),
    }
    if boost is not None:
        body["instaboost"] = boost
    return body


def response_body(job, run) -> dict:
    """Return the OpenAI response object of a stored response job, in whatever state it is."""
    status = _status(job, run)
    done = status in ("completed", "incomplete")
    body = response_object(job.id, job.params, job.created_at.timestamp(), status,
                           text=run.produced_text if done else None,
                           usage=(run.prompt_tokens, run.output_tokens) if done else None,
                           error=(job.error or "the job failed") if status == "failed" else None,
                           boost={"job_id": job.id, "multiplier": run.multiplier, "layers": run.layers,
                                  "placement": job.params.get("placement")} if done else {"job_id": job.id})
    if done and job.finished_at is not None:
        body["completed_at"] = int(job.finished_at.timestamp())
    return body


__all__ = ["responses_params", "response_body", "response_object", "load_previous", "response_id", "job_id_of",
           "is_response", "PreviousNotFound", "renamed", "message_item", "output_text", "conversation"]
