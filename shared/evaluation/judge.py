"""Optional LLM judge through any OpenAI-compatible chat-completions endpoint (off by default).

One POST to ``<url>/chat/completions`` per output, with the standard library (no new dependency). The
judge answers a JSON object: does the output follow the instruction (yes/no) and how fluent is it on
the paper's 0-2 scale. Answers wrapped in prose or a ```json fence are accepted; anything else, an HTTP
error or a timeout raises JudgeError with a message that says what to fix. Proxy settings come from
the environment, as for any urllib request.
"""

from __future__ import annotations

import base64
import http.client
import json
import re
import urllib.error
import urllib.parse
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
        raise JudgeError(f"judge URL must start with http:// or https:// and name a host, got "
                         f"{shown_url(url)!r}", field="judge.url", status=422)
    return url if url.endswith("/chat/completions") else f"{url}/chat/completions"


def split_credentials(url: str) -> tuple[str, str | None]:
    """Return (the URL without user:password@, the decoded "user:password" or None)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return url, None
    if "@" not in parts.netloc:
        return url, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=host)), urllib.parse.unquote(userinfo)


def shown_url(url: str) -> str:
    """Return the URL as errors may show it: no user:password@, no query string (either may hold a key)."""
    bare, _ = split_credentials(url)
    if re.match(r"[a-z]+://[^@/]*@", bare):  # an unparsable URL still loses what precedes its last @
        bare = re.sub(r"^([a-z]+://)[^/]*@", r"\1", bare)
    return bare.split("?", 1)[0] + ("?..." if "?" in bare else "")


def _hide(text: str, secrets: list[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text


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
    """Ask the judge about one output; return {judge_follows, judge_fluency, judge_reason}.

    Credentials in the URL (https://user:password@host/...) are sent as HTTP Basic auth unless api_key is set;
    error messages (which runs store) show the URL without them, and never the key or the password.
    """
    target, userinfo = split_credentials(endpoint(url))
    basic = base64.b64encode(userinfo.encode("utf-8")).decode("ascii") if userinfo else ""
    auth = f"Bearer {api_key}" if api_key else f"Basic {basic}" if basic else ""
    secrets = [s for s in (api_key, basic, userinfo, (userinfo or "").partition(":")[2],
                           urllib.parse.urlsplit(url).query) if s and len(s) >= 3]
    try:
        return _judge(instruction, query, output, target=target, shown=shown_url(target), auth=auth, model=model,
                      timeout=timeout)
    except JudgeError as exc:
        raise JudgeError(_hide(exc.message, secrets), field=exc.field, status=exc.status) from None


def _judge(instruction: str, query: str, output: str, *, target: str, shown: str, auth: str, model: str,
           timeout: float) -> dict[str, Any]:
    body = json.dumps({
        "model": model, "temperature": 0, "max_tokens": MAX_TOKENS,
        "messages": [{"role": "system", "content": SYSTEM_PROMPT},
                     {"role": "user", "content": USER_TEMPLATE.format(instruction=instruction, query=query,
                                                                      output=output)}],
    }).encode("utf-8")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if auth:
        headers["Authorization"] = auth
    request = urllib.request.Request(target, data=body, headers=headers, method="POST")
    slow = f"judge at {shown} did not answer within {timeout:g}s; raise the judge timeout or check the endpoint"
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            raw = response.read()
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace")
        raise JudgeError(f"judge at {shown} answered HTTP {exc.code}: {detail!r}; check the URL, model name "
                         f"and API key") from None
    except TimeoutError:
        raise JudgeError(slow) from None
    except urllib.error.URLError as exc:
        if isinstance(exc.reason, TimeoutError):
            raise JudgeError(slow) from None
        raise JudgeError(f"cannot reach the judge at {shown}: {exc.reason}; check the URL") from None
    except (OSError, http.client.HTTPException) as exc:  # the connection dropped mid-answer
        raise JudgeError(f"judge at {shown} failed mid-answer: {type(exc).__name__}: {exc}") from None
    try:
        content = json.loads(raw)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError):
        raise JudgeError(f"judge at {shown} did not answer an OpenAI chat completion: {raw[:200]!r}; point the "
                         f"URL at an OpenAI-compatible /v1 endpoint") from None
    if not isinstance(content, str):
        raise JudgeError(f"judge at {shown} answered no message text: {raw[:200]!r}")
    return parse_verdict(content)
