"""The LLM judge against a local stand-in OpenAI-compatible server (nothing leaves 127.0.0.1)."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from shared.evaluation.judge import JudgeError, endpoint, judge_output, parse_verdict


class StandIn(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_POST(self):
        server = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        server.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
        if server.mode == "slow":
            time.sleep(1.0)
        if server.mode in ("500", "401"):
            self.send_response(int(server.mode))
            self.end_headers()
            self.wfile.write(b"model crashed" if server.mode == "500" else
                             f"bad credentials: {self.headers.get('Authorization')}".encode())
            return
        payload = ({"error": "not a completion"} if server.mode == "not_openai"
                   else {"choices": [{"message": {"role": "assistant", "content": server.content}}]})
        data = json.dumps(payload).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # the timeout test's client hangs up before the slow answer: a broken pipe, expected


@pytest.fixture
def judge(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = Server(("127.0.0.1", 0), StandIn)
    server.mode, server.content, server.requests = "ok", "", []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield server
    server.shutdown()
    server.server_close()


def ask(server, **kw):
    return judge_output("Answer only in French.", "What is the capital of Germany?", "Berlin est la capitale.",
                        url=server.url, model="judge-model", **kw)


def test_a_good_verdict(judge):
    judge.content = '{"follows": "yes", "fluency": 2, "reason": "French and fluent."}'
    assert ask(judge, api_key="sk-test") == {"judge_follows": True, "judge_fluency": 2.0,
                                             "judge_reason": "French and fluent."}
    [req] = judge.requests
    assert req["path"] == "/v1/chat/completions"
    assert req["headers"]["Authorization"] == "Bearer sk-test"
    assert req["body"]["model"] == "judge-model" and req["body"]["temperature"] == 0
    assert "Berlin est la capitale." in req["body"]["messages"][1]["content"]


def test_a_fenced_verdict_in_prose_is_read(judge):
    judge.content = 'Sure.\n```json\n{"follows": false, "fluency": "1", "reason": "English"}\n```'
    assert ask(judge)["judge_follows"] is False and ask(judge)["judge_fluency"] == 1.0
    assert "Authorization" not in judge.requests[0]["headers"]


@pytest.mark.parametrize("content,message", [
    ("I think it follows the instruction.", "did not answer a JSON object"),
    ('{"follows": "maybe", "fluency": 2}', "follows must be yes or no"),
    ('{"follows": "yes", "fluency": 5}', "fluency must be a number from 0 to 2"),
    ('{"follows": "yes", "fluency": 1', "did not answer a JSON object"),
])
def test_a_malformed_verdict_is_a_clear_error(judge, content, message):
    judge.content = content
    with pytest.raises(JudgeError, match=message) as err:
        ask(judge)
    assert err.value.status == 502


def test_http_500_is_a_clear_error(judge):
    judge.mode = "500"
    with pytest.raises(JudgeError, match="answered HTTP 500: 'model crashed'; check the URL"):
        ask(judge)


def test_credentials_in_the_url_are_sent_as_basic_auth_and_never_shown_in_errors(judge):
    import base64

    host = judge.url.split("://", 1)[1]
    judge.content = '{"follows": "yes", "fluency": 2}'
    assert judge_output("i", "q", "o", url=f"http://judge:pa%3Ass@{host}", model="m")["judge_follows"] is True
    assert judge.requests[0]["headers"]["Authorization"] == "Basic " + base64.b64encode(b"judge:pa:ss").decode()
    judge.mode = "401"  # a server that echoes what it got
    for url, key in ((f"http://judge:pa%3Ass@{host}", ""), (judge.url, "sk-secret-key")):
        with pytest.raises(JudgeError) as err:
            judge_output("i", "q", "o", url=url, model="m", api_key=key)
        message = err.value.message
        assert f"judge at http://{host}/chat/completions answered HTTP 401" in message, message
        for secret in ("pa:ss", "pa%3Ass", "judge:", "sk-secret-key", base64.b64encode(b"judge:pa:ss").decode()):
            assert secret not in message, message
    judge.shutdown()
    judge.server_close()
    with pytest.raises(JudgeError) as err:
        judge_output("i", "q", "o", url=f"http://judge:pa%3Ass@{host}", model="m", timeout=2)
    assert "cannot reach the judge at http://127.0.0.1" in err.value.message and "pa" not in err.value.message


def test_a_timeout_is_a_clear_error(judge):
    judge.mode = "slow"
    started = time.monotonic()
    with pytest.raises(JudgeError, match="did not answer within 0.2s; raise the judge timeout"):
        ask(judge, timeout=0.2)
    assert time.monotonic() - started < 1.0


def test_a_non_openai_answer_is_a_clear_error(judge):
    judge.mode = "not_openai"
    with pytest.raises(JudgeError, match="OpenAI chat completion"):
        ask(judge)


def test_an_unreachable_judge_is_a_clear_error(judge):
    port = judge.server_address[1]
    judge.shutdown()
    judge.server_close()
    with pytest.raises(JudgeError, match="cannot reach the judge"):
        judge_output("i", "q", "o", url=f"http://127.0.0.1:{port}/v1", model="m", timeout=2)


def test_endpoint_urls():
    assert endpoint("http://h:8000/v1") == "http://h:8000/v1/chat/completions"
    assert endpoint("https://h/v1/") == "https://h/v1/chat/completions"
    assert endpoint("http://h/v1/chat/completions") == "http://h/v1/chat/completions"
    with pytest.raises(JudgeError, match="http:// or https://") as err:
        endpoint("ftp://h")
    assert err.value.status == 422


def test_parse_verdict_keeps_a_short_reason():
    out = parse_verdict('{"follows": true, "fluency": 0.5, "reason": "' + "x" * 900 + '"}')
    assert out["judge_fluency"] == 0.5 and len(out["judge_reason"]) == 500
