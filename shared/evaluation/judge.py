"""Optional LLM judge through any OpenAI-compatible chat-completions endpoint (off by default).

One POST to ``<url>/chat/completions`` per output, with the standard library (no new dependency). The
judge answers a JSON object: does the output follow the instruction (yes/no) and how fluent is it on
the paper's 0-2 scale. Answers wrapped in prose or a ```json fence are accepted; anything else, an HTTP
error or a timeout raises JudgeError with a message that says what to fix. Proxy settings come from
the environment, as for any urllib request.
"""

from __future__ import annotations

import http.client
import json
import re
import urllib.error
import urllib.request
from typing import Any

from shared.errors import InstaBoostError

TIMEOUT = 60.0
MAX_TOKENS = 300

SYSTEM_PROMPT = """You grade one response of an AI assistant. You get the instruction the assistant was \
given (its system prompt), the user's query and the response.

Judge two things:
1. follows: does the response obey the instruction? Answer "yes" or "no".
2. fluency: how fluent and coherent is the response, whatever the instruction says?
   0 = not fluent: gibberish, loops or repetition, copies the instruction, empty, or ignores the query.
   1 = somewhat fluent: understandable but with clear problems (awkward, partly repetitive, cut off).
   2 = fluent: natural, coherent text that addresses the query.

Reply with only a JSON object, no other text:
{"follows": "yes" or "no", "fluency": 0, 1 or 2, "reason": "one short sentence"}"""

USER_TEMPLATE = "Instruction:\n{instruction}\n\nQuery:\n{query}\n\nResponse:\n{output}"


class JudgeError(InstaBoostError):
    """The judge endpoint failed or answered something that is not a verdict."""

    status = 502
    title = "Judge failed"


def endpoint(url: str) -> str:
    """Return the chat-completions URL for a base URL such as http://host:8000/v1 (a full URL is kept)."""
    url = url.strip().rstrip("/")
    if not re.match(r"https?://[^/\s]+", url):
        raise JudgeError(f"judge URL must start with http:// or https:// and name a host, got {url!r}",
                         field="judge.url", status=422)
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def parse_verdict(content: str) -> dict[str, Any]:
    """Read the judge's reply into {judge_follows, judge_fluency, judge_reason}; raise JudgeError if it is not one."""
    start, end = content.find("{"), content.rfind("}")
    try:
        data = json.loads(content[start:end + 1]) if 0 <= start < end else None
    except ValueError:
        data = None
    if not isinstance(data, dict):
        raise JudgeError(f"the judge did not answer a JSON object; it said {content[:200]!r}. Use a model that "
                         f"follows the judge prompt")
    follows = data.get("follows")
    if isinstance(follows, str):
        follows = {"yes": True, "no": False, "true": True, "false": False}.get(follows.strip().lower())
    fluency = data.get("fluency")
    if isinstance(fluency, str) and re.fullmatch(r"\s*[0-9.]+\s*", fluency):
        fluency = float(fluency)
    problems = []
    if not isinstance(follows, bool):
        problems.append(f"follows must be yes or no, got {data.get('follows')!r}")
    if isinstance(fluency, bool) or not isinstance(fluency, (int, float)) or not 0 <= fluency <= 2:
        problems.append(f"fluency must be a number from 0 to 2, got {data.get('fluency')!r}")
    if problems:
        raise JudgeError(f"the judge's verdict is malformed: {'; '.join(problems)} (reply {content[:200]!r})")
    reason = data.get("reason")
    return {"judge_follows": follows, "judge_fluency": float(fluency),
            "judge_reason": reason.strip()[:500] if isinstance(reason, str) else None}


def judge_output(instruction: str, query: str, output: str, *, url: str, model: str, api_key: str = "",
                 timeout: float = TIMEOUT) -> dict[str, Any]:
    """Ask the judge about one output; return {judge_follows, judge_fluency, judge_reason}."""
    target = endpoint(url)
    body = json.dumps({
        "model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                     {"role": "user", "content": USER_TEMPLATE.format(instruction=instruction, query=query,
                                                                      output=output)}],
    }).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    slow = f"judge at {target} did not answer within {timeout:g}s; raise the judge timeout or check the endpoint"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace")
        raise JudgeError(f"judge at {target} answered HTTP {exc.code}: {detail!r}; check the URL, model name "
                         f"and API key") from None
    except TimeoutError:
        raise JudgeError(slow) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise JudgeError(slow) from None
        raise JudgeError(f"cannot reach the judge at {target}: {exc.reason}; check the URL") from None
    except (OSError, http.client.HTTPException) as exc:  # the connection dropped mid-answer
        raise JudgeError(f"judge at {target} failed mid-answer: {type(exc).__name__}: {exc}") from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError(f"judge at {target} did not answer an OpenAI chat completion: {raw[:200]!r}; point the "
                         f"URL at an OpenAI-compatible /v1 endpoint") from None
    if not isinstance(content, str):
        raise JudgeError(f"judge at {target} answered no message text: {raw[:200]!r}")
    return parse_verdict(content)
