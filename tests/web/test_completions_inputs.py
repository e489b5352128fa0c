"""Bad input to /v1/completions: each new field out of range or of the wrong type answers an OpenAI-shaped 400 and
stores nothing. Real PostgreSQL and Redis, a heartbeat announcing the default model, no worker."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.store import DEFAULT_MODEL
from tests.web.test_openai_inputs import snapshot, v1_app  # noqa: F401  (fixture)


def comp(**over) -> dict:
    body = {"model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 1}
    body.update(over)
    return {k: v for k, v in body.items() if v is not ...}


CASES = [
    ("no-prompt", comp(prompt=...)),
    ("prompt-number", comp(prompt=42)),
    ("prompt-empty-string", comp(prompt="")),
    ("prompt-empty-list", comp(prompt=[])),
    ("prompt-nul", comp(prompt="a\x00b")),
    ("prompt-mixed-list", comp(prompt=["a", 3])),
    ("prompt-negative-id", comp(prompt=[1, -2])),
    ("prompt-bool-id", comp(prompt=[True, 2])),
    ("prompt-empty-id-list", comp(prompt=[[1, 2], []])),
    ("prompt-too-many", comp(prompt=["a"] * 65)),
    ("echo-string", comp(echo="yes")),
    ("logprobs-21", comp(logprobs=21)),
    ("logprobs-negative", comp(logprobs=-1)),
    ("logprobs-bool", comp(logprobs=True)),
    ("logprobs-float", comp(logprobs=1.5)),
    ("max-tokens-negative", comp(max_tokens=-1)),
    ("max-tokens-string", comp(max_tokens="1")),
    ("n-0", comp(n=0)),
    ("n-past-max-n", comp(n=9)),
    ("n-string", comp(n="2")),
    ("n-float", comp(n=1.5)),
    ("n-bool", comp(n=True)),
    ("n-times-prompts-past-64", comp(prompt=["a"] * 9, n=8)),
    ("n-2-stream", comp(n=2, stream=True)),
    ("best-of-2", comp(best_of=2)),
    ("presence-penalty-false", comp(presence_penalty=False)),
    ("suffix", comp(suffix="x")),
    ("stop-number", comp(stop=5)),
    ("stream-string", comp(stream="true")),
    ("stream-several-prompts", comp(prompt=["a", "b"], stream=True)),
    ("unknown-field", comp(frobnicate=1)),
    ("unclosed-boost", comp(prompt="a <boost>b")),
    ("boost-nothing-to-boost", comp(instaboost={"multiplier": 5})),
    ("spans-not-list", comp(instaboost={"spans": "0-3"})),
    ("spans-reversed", comp(instaboost={"spans": [[5, 2]]})),
    ("spans-past-text", comp(instaboost={"spans": [[0, 999]]})),
    ("spans-overlap", comp(instaboost={"spans": [[0, 5], [3, 8]]})),
    ("spans-m-zero", comp(instaboost={"spans": [[0, 3, 0]]})),
    ("spans-and-tags", comp(prompt="<boost>The</boost> capital", instaboost={"spans": [[0, 3]]})),
    ("spans-past-tokens", comp(prompt=[1, 2, 3], instaboost={"spans": [[0, 4]]})),
    ("boost-m-string", comp(prompt="<boost>a</boost> b", instaboost={"multiplier": "ten"})),
]


@pytest.mark.parametrize("name, body", CASES, ids=[c[0] for c in CASES])
def test_bad_completion_input_is_a_400_in_openai_shape(v1_app, pg_url, redis_client, redis_namespace,  # noqa: F811
                                                      name, body):
    before = snapshot(pg_url, redis_client, redis_namespace)
    resp = v1_app.test_client().post("/v1/completions", json=body)
    err = resp.get_json()
    assert resp.status_code == 400, err
    assert set(err) == {"error"} and set(err["error"]) == {"message", "type", "param", "code"}, err
    assert err["error"]["type"] == "invalid_request_error" and err["error"]["message"]
    assert snapshot(pg_url, redis_client, redis_namespace) == before


@pytest.mark.parametrize("header", ["not json", "[1, 2]", json.dumps({"multiplier": 0, "spans": [[0, 3]]})])
def test_a_bad_boost_header_is_a_400(v1_app, header):  # noqa: F811
    resp = v1_app.test_client().post("/v1/completions", json=comp(), headers={"X-InstaBoost": header})
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"]["param"] in ("X-InstaBoost", "instaboost.multiplier")


def test_the_param_names_the_field(v1_app):  # noqa: F811
    err = v1_app.test_client().post("/v1/completions", json=comp(logprobs=99)).get_json()["error"]
    assert err["param"] == "logprobs" and "0 to 20" in err["message"]


def test_n_is_checked_against_v1_max_n_and_stream(v1_app):  # noqa: F811
    c = v1_app.test_client()
    err = c.post("/v1/completions", json=comp(n=9)).get_json()["error"]
    assert err["param"] == "n" and "8" in err["message"]
    err = c.post("/v1/completions", json=comp(n=2, stream=True)).get_json()["error"]
    assert err["param"] == "n" and "stream" in err["message"]
