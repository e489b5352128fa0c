"""Completion jobs: an OpenAI (legacy) completions body validated into a stored job's params, and back into rows.

Torch-free. A completion job holds one row per prompt and choice (runs "p0", "p1", ... for choice 0, "p0_1",
"p0_2", ... for the further choices of n, each sampling with seed + choice), batched by the worker with other rows; a row with max_tokens 0 is a prefill that returns its prompt's logprobs (with echo).

The prompt is a string, a list of strings, a list of token ids or a list of such lists. Its text is the
model's input as it is (no chat template). What is boosted, by ``instaboost.multiplier`` unless a span
gives its own M:

- spans marked ``<boost>…</boost>`` in a string prompt (the tags are removed: the echo shows the prompt
  without them);
- or ``instaboost.spans``: [[start, end], [start, end, M], ...], character offsets into a string prompt
  (token offsets into a token-id prompt), the same for every prompt of the request.

The boost may also come in the ``X-InstaBoost`` request header (the same JSON object as ``instaboost``), for
clients that cannot add a body field to every request (lm-eval's loglikelihood requests); the body wins.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Mapping

from shared.chat import BOOST_KEYS, PRIORITIES, check_target, fingerprint, is_chat, split_boost_tags
from shared.chat import generation_request as chat_request
from shared.chat_extras import choice_index, choice_variants
from shared.errors import ValidationError
from shared.logprobs import MAX_TOP_LOGPROBS, completion_logprobs
from shared.requests.chat import ChatCompletionRequest, InstaBoost, unknown_chat_field
from shared.requests.job import check_field, multiplier_problems
from shared.requests.openai import neutral_problems
from shared.settings import Settings
from shared.validation import Validator, brief

COMPLETIONS_ENDPOINT = "/v1/completions"
MAX_PROMPTS = 64  # prompts per request: each is one row of the job
MAX_PROMPT_TOKENS = 100_000  # token ids per request, all prompts together
USED_KEYS = ("model", "prompt", "max_tokens", "temperature", "top_p", "seed", "n", "stop", "stream", "stream_options",
             "instaboost", "echo", "logprobs")
# Accepted only at the value that changes nothing here.
NEUTRAL = {"user": None, "best_of": (None, 1), "suffix": (None,), "presence_penalty": (0, 0.0, None),
           "frequency_penalty": (0, 0.0, None), "logit_bias": (None,)}
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for completions


def _error(v: Validator, field: str, message: str) -> None:
    v.error(field, message)


def _field(v: Validator, name: str, value: Any) -> Any:
    """Return value validated as the chat request's field name (its default when None), collecting errors in v."""
    got, problems = check_field(name, value, v.settings, model=ChatCompletionRequest, unknown=unknown_chat_field)
    v.errors.extend(problems)
    return got


def _prompts(v: Validator, value: Any) -> list[str | list[int]]:
    """Return the prompts as strings or token-id lists (errors collected in v)."""
    if isinstance(value, str):
        items: list = [value]
    elif isinstance(value, list) and value and all(isinstance(x, int) and not isinstance(x, bool) for x in value):
        items = [value]
    elif isinstance(value, list) and value:
        items = value
    else:
        _error(v, "prompt", f"prompt must be a string, a list of strings, a list of token ids or a list of token-id "
                            f"lists; got {brief(value)}")
        return []
    if len(items) > MAX_PROMPTS:
        _error(v, "prompt", f"prompt holds {len(items)} prompts; at most {MAX_PROMPTS} per request")
        return []
    out, chars, tokens = [], 0, 0
    for i, p in enumerate(items):
        f = f"prompt[{i}]" if len(items) > 1 or not isinstance(value, str) and not isinstance(value[0], int) else "prompt"
        if isinstance(p, str):
            if not p or "\x00" in p:
                _error(v, f, f"{f} must be non-empty text without NUL characters")
                continue
            try:
                p.encode("utf-8")
            except UnicodeEncodeError:
                _error(v, f, f"{f} must be valid Unicode text (it holds a lone surrogate)")
                continue
            chars += len(p)
        elif isinstance(p, list) and p and all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**31
                                               for x in p):
            tokens += len(p)
        else:
            _error(v, f, f"{f} must be non-empty text or a non-empty list of token ids (integers >= 0); got {brief(p)}")
            continue
        out.append(p)
    if chars > v.settings.limits.max_text_chars:
        _error(v, "prompt", f"the prompts hold {chars} characters; at most {v.settings.limits.max_text_chars}")
    if tokens > MAX_PROMPT_TOKENS:
        _error(v, "prompt", f"the prompts hold {tokens} token ids; at most {MAX_PROMPT_TOKENS}")
    return out


def _spans(v: Validator, value: Any) -> list[list] | None:
    """Return instaboost.spans as [[start, end, M or None]] (None when not given)."""
    if value is None:
        return None
    ok = isinstance(value, list) and value and len(value) <= 64
    spans = []
    for s in value if ok else ():
        if not (isinstance(s, list) and len(s) in (2, 3) and all(isinstance(x, int) and not isinstance(x, bool)
                                                                 for x in s[:2]) and 0 <= s[0] < s[1]):
            ok = False
            break
        m = None
        if len(s) == 3:
            m, problems = multiplier_problems(s[2], "instaboost.spans", v.settings)
            if problems:
                v.errors.extend(problems)
                return None
        spans.append([s[0], s[1], m])
    if not ok:
        _error(v, "instaboost.spans", "instaboost.spans must be a list of up to 64 [start, end] or [start, end, M] "
                                      f"with 0 <= start < end (character offsets; token offsets for token-id "
                                      f"prompts); got {brief(value)}")
        return None
    spans.sort()
    if any(a[1] > b[0] for a, b in zip(spans, spans[1:])):
        _error(v, "instaboost.spans", "instaboost.spans must not overlap")
        return None
    return spans


def _segments(v: Validator, f: str, text: str, spans: list[list] | None, m: float) -> list[list]:
    """Return a string prompt's [[text, M or None]] segments from its tags or the char spans."""
    try:
        pieces = split_boost_tags(text, f)
    except ValidationError as exc:
        _error(v, exc.field, exc.message)
        return []
    if any(b for _, b in pieces):
        if spans is not None:
            _error(v, "instaboost.spans", f"{f} has <boost> tags: give tags or instaboost.spans, not both")
        return [[t, m if b else None] for t, b in pieces]
    if spans is None:
        return [[text, None]]
    if spans[-1][1] > len(text):
        _error(v, "instaboost.spans", f"instaboost.spans end at {spans[-1][1]}, past {f}'s {len(text)} characters")
        return []
    out, pos = [], 0
    for a, b, own in spans:
        if a > pos:
            out.append([text[pos:a], None])
        out.append([text[a:b], m if own is None else own])
        pos = b
    if pos < len(text):
        out.append([text[pos:], None])
    return out


def completion_params(body: Any, settings: Settings, *, header_boost: Any = None,
                      priority: str = "interactive") -> dict[str, Any]:
    """Validate an OpenAI completions body; return the params a completion job stores (ValidationError lists all)."""
    if not isinstance(body, Mapping):
        raise ValidationError("the request body must be a JSON object with model and prompt",
                              errors=[{"field": "body", "message": "expected a JSON object"}])
    v = Validator(settings, strict=True)
    for key in [k for k in body if k not in USED_KEYS and k not in NEUTRAL][:10]:
        _error(v, str(key)[:64], f"unrecognized request argument {brief(key)}")
    v.errors.extend(neutral_problems(body, NEUTRAL))
    model = _field(v, "model", body.get("model")) if "model" in body else \
        _error(v, "model", "model is required: a model a live worker serves (see GET /v1/models)")
    n = _field(v, "n", body["n"]) if body.get("n") is not None else 1
    for name in ("stream", "echo"):
        if body.get(name) is not None and not isinstance(body[name], bool):
            _error(v, name, f"{name} must be a boolean, got {brief(body[name])}")
    so = body.get("stream_options")
    if so is not None and (not isinstance(so, Mapping) or any(k not in ("include_usage",) for k in so)):
        _error(v, "stream_options", "stream_options may only hold include_usage")
    k = body.get("logprobs")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or not 0 <= k <= MAX_TOP_LOGPROBS):
        _error(v, "logprobs", f"logprobs must be an integer from 0 to {MAX_TOP_LOGPROBS} (the top tokens per "
                              f"position), got {brief(k)}")
        k = None
    max_new = DEFAULT_MAX_TOKENS
    mt = body.get("max_tokens")
    if mt is not None:
        if isinstance(mt, int) and not isinstance(mt, bool) and mt == 0:
            max_new = 0  # scores the prompt only
        else:
            before = len(v.errors)
            max_new = _field(v, "max_tokens", mt)
            for e in v.errors[before:]:
                e["message"] = e["message"].replace(">= 1", ">= 0")
    decoding = {name: _field(v, name, body.get(name)) for name in ("temperature", "top_p", "seed")}
    raw = body.get("instaboost") if body.get("instaboost") is not None else header_boost
    spans = None
    if isinstance(raw, Mapping):
        spans = _spans(v, raw.get("spans"))
        raw = {key: value for key, value in raw.items() if key != "spans"}
    boost = _field(v, "instaboost", raw) or InstaBoost.model_validate({}, context={"settings": settings})
    boost = boost.resolved(settings) if isinstance(boost, InstaBoost) else boost
    stop = _field(v, "stop", body.get("stop")) or []
    prompts = _prompts(v, body.get("prompt")) if "prompt" in body else \
        _error(v, "prompt", "prompt is required: a string, a list of strings or token ids") or []
    stream = bool(body.get("stream"))
    if stream and len(prompts) > 1:
        _error(v, "stream", "stream takes one prompt; send several prompts without stream, or one request each")
    if stream and isinstance(n, int) and n > 1:
        _error(v, "n", "stream takes n = 1 here; send n > 1 without stream (or n streamed requests with seeds "
                       "seed, seed + 1, ...)")
    if isinstance(n, int) and len(prompts) * n > MAX_PROMPTS:
        _error(v, "n", f"{len(prompts)} prompts x n = {n} make {len(prompts) * n} choices; at most {MAX_PROMPTS} "
                       "per request")
    rows = []
    for i, p in enumerate(prompts if not v.errors else ()):
        f = f"prompt[{i}]" if len(prompts) > 1 else "prompt"
        if isinstance(p, list):
            if spans is not None and spans[-1][1] > len(p):
                _error(v, "instaboost.spans", f"instaboost.spans end at {spans[-1][1]}, past {f}'s {len(p)} tokens")
            rows.append({"ids": p, "spans": [[a, b, boost["multiplier"] if m is None else m]
                                             for a, b, m in spans or ()]})
        else:
            rows.append({"segments": _segments(v, f, p, spans, boost["multiplier"])})
    mults = [m for r in rows for m in ([s[2] for s in r["spans"]] if "ids" in r else
                                       [m for _, m in r["segments"] if m is not None])]
    if raw is not None and not v.errors and not mults:
        _error(v, "instaboost", "instaboost has nothing to boost: mark the span with <boost>…</boost> in the prompt "
                                "or give instaboost.spans")
    if v.errors:
        fields = ", ".join(dict.fromkeys(e["field"] for e in v.errors))
        raise ValidationError(f"invalid request: fix {fields}", errors=v.errors)
    check_target(boost, mults)
    layer_mode = boost["layers"] if isinstance(boost["layers"], str) else "all"
    first = rows[0]
    return {
        "kind": "completion", "model": model,
        # The job API's fields, so pages, lists and the CSV show a completion like any other job.
        "instruction": "\n".join(t for r in rows if "segments" in r for t, m in r["segments"] if m is not None),
        "query": "".join(t for t, _ in first["segments"]) if "segments" in first else f"<{len(first['ids'])} tokens>",
        "multipliers": [max(mults, key=lambda x: abs(x - 1)) if mults else 1.0], "layer_modes": [layer_mode],
        "start_layer": boost["start_layer"], "num_middle_layers": boost["num_middle_layers"],
        "head_boost_percentage": boost["head_boost_percentage"], "seed": decoding["seed"], "placement": "raw",
        "engine": settings.instaboost.engine, "max_new_tokens": max_new, "temperature": decoding["temperature"],
        "top_p": decoding["top_p"], "attention": False,
        # Completion only.
        "prompts": rows, "n": n, "echo": bool(body.get("echo")), "logprobs": k, "layers": boost["layers"],
        "heads": boost["heads"], "stop": stop, "stream": stream, "scope": boost["scope"],
        "target_mass": boost["target_mass"],
        "include_usage": bool(isinstance(so, Mapping) and so.get("include_usage")),
        "priority": priority if priority in PRIORITIES else "interactive",
    }


def is_completion(params: Mapping[str, Any]) -> bool:
    """Return whether stored job params are a completion job's."""
    return isinstance(params, Mapping) and params.get("kind") == "completion"


def openai_rows(params: Mapping[str, Any]) -> list[str] | None:
    """Return the runs an OpenAI job (chat or completion) stores, in order; None for an instaboost job."""
    if is_chat(params):
        return choice_variants(params)  # one row per choice (n), decoded together
    if is_completion(params):
        # Choice 0 keeps the name jobs stored before n had; OpenAI's order: prompt by prompt, its choices in turn.
        return [f"p{i}" if c == 0 else f"p{i}_{c}" for i in range(len(params["prompts"]))
                for c in range(int(params.get("n") or 1))]
    return None


def completion_row(row: str) -> tuple[int, int]:
    """Return (prompt index, choice index) of a completion run's name ("p3" or "p3_1")."""
    prompt, _, c = row[1:].partition("_")
    return int(prompt), int(c or 0)


def openai_request(params: Mapping[str, Any], row: str):
    """Return the engine's GenerationRequest for one run of a stored chat or completion job."""
    if is_chat(params):
        return chat_request(params, choice_index(row) or 0)
    prompt, c = completion_row(row)
    p = params["prompts"][prompt]
    k = params["logprobs"]
    segments = p.get("segments") or [["-", None]]  # a token-id prompt: the chat request only carries the settings
    base = chat_request({**params, "messages": [{"role": "user", "segments": segments}]}, c)
    extra = {"logprobs": k, "prompt_logprobs": k if params["echo"] and k is not None else None, "exact_text": True}
    if params["echo"] and params["max_new_tokens"] == 0 and k is None:
        extra["prompt_logprobs"] = 0  # echo alone: the prompt's tokens still come back
    if "ids" in p:
        return replace(base, messages=None, prompt_ids=tuple(p["ids"]),
                       prompt_spans=tuple((a, b, m) for a, b, m in p["spans"]), **extra)
    return replace(base, **extra)


def prompt_text(params: Mapping[str, Any], row: int) -> str | None:
    """Return a string prompt's text as the model saw it (tags removed); None for token ids."""
    p = params["prompts"][row]
    return "".join(t for t, _ in p["segments"]) if "segments" in p else None


def choice(params: Mapping[str, Any], index: int, run) -> dict:
    """Return one text_completion choice (index = prompt * n + choice) for a stored run (echo, logprobs as asked)."""
    stored = run.logprobs or {}
    prompt = stored.get("prompt")
    echo_text = ""
    if params["echo"]:
        echo_text = prompt_text(params, index // int(params.get("n") or 1))
        if echo_text is None:
            echo_text = "".join(prompt["tokens"]) if prompt else ""
    logprobs = None
    if params["logprobs"] is not None:
        logprobs = completion_logprobs([prompt if params["echo"] else None, stored.get("output")])
    return {"index": index, "text": echo_text + run.produced_text, "logprobs": logprobs,
            "finish_reason": run.finish_reason or "stop"}


def completion_body(job, runs: list) -> dict:
    """Return the OpenAI text_completion object of a finished completion job (runs in openai_rows order)."""
    p = sum(r.prompt_tokens for r in runs)
    c = sum(r.output_tokens for r in runs)
    return {
        "id": f"cmpl-{job.id}", "object": "text_completion", "created": int(job.created_at.timestamp()),
        "model": job.model, "system_fingerprint": fingerprint(job.params),
        "choices": [choice(job.params, i, r) for i, r in enumerate(runs)],
        "usage": {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c},
        "instaboost": {"job_id": job.id, "multiplier": job.params["multipliers"][0],
                       "layers": runs[0].layers if runs else None},
    }


__all__ = ["completion_params", "is_completion", "openai_rows", "openai_request", "completion_body", "choice",
           "COMPLETIONS_ENDPOINT", "BOOST_KEYS"]
