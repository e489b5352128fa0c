"""The OpenAI-compatible API (/v1) driven by the real `openai` SDK against a live server and a real worker.

A threaded werkzeug server runs the real app (bearer token on); a real Celery worker runs the real model.
Generations stay tiny.
"""

from __future__ import annotations

import html
import threading

import pytest

from tests.fixtures.store import make_test_app

openai = pytest.importorskip("openai")

TOKEN = "v1-test-token"
MODEL = "smollm2-135m-instruct"
MESSAGES = [{"role": "system", "content": "Answer only in French."},
            {"role": "user", "content": "What is the capital of Germany? Explain briefly."}]


@pytest.fixture(scope="module")
def live_server(celery_worker, pg_url):
    """(base URL, app) of a live server on the worker's namespace, with a bearer token required."""
    from werkzeug.serving import make_server

    app = make_test_app(pg_url, celery_worker.namespace, API_TOKEN=TOKEN)
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}", app
    server.shutdown()
    thread.join(10)


@pytest.fixture(scope="module")
def client(live_server):
    return openai.OpenAI(base_url=live_server[0] + "/v1", api_key=TOKEN, max_retries=0, timeout=120)


def stored_job(db_url: str, job_id: int):
    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(db_url) as s:
        job = s.get(Job, job_id)
        return job.status.value, job.kind, dict(job.params), [(r.variant, r.multiplier, r.output_text, r.finish_reason)
                                                             for r in job.runs]


def test_models_lists_what_live_workers_serve(client):
    ids = [m.id for m in client.models.list().data]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_without_boost_is_plain_hf_greedy_and_a_stored_job(client, plain_model, pg_url):
    import torch

    from tests.fixtures.model import plain_greedy

    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0)
    tok = plain_model.tokenizer
    ids = torch.tensor([tok(tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True),
                            add_special_tokens=False)["input_ids"]])
    want_text, want_n = plain_greedy(plain_model.model, tok, ids, 16)
    choice = resp.choices[0]
    assert choice.message.content == want_text and choice.message.role == "assistant"
    assert resp.usage.completion_tokens == want_n and resp.usage.prompt_tokens > 10
    assert resp.usage.total_tokens == resp.usage.prompt_tokens + resp.usage.completion_tokens
    assert choice.finish_reason == ("length" if want_n == 16 else "stop")
    assert resp.system_fingerprint.startswith("fp_") and resp.object == "chat.completion"
    status, kind, params, runs = stored_job(pg_url, int(resp.id))  # the id is the job's id
    assert (status, kind) == ("succeeded", "chat")
    assert all(m is None for msg in params["messages"] for _, m in msg["segments"])  # nothing boosted
    assert runs == [("chat", 1.0, want_text, choice.finish_reason)]
    # The stored completion can be read again by its id.
    again = client.chat.completions.retrieve(resp.id)
    assert again.choices[0].message.content == want_text


def test_chat_with_a_boost_in_extra_body(client, pg_url):
    plain = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0)
    boosted = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=12, temperature=0,
        extra_body={"instaboost": {"multiplier": 30, "layers": "all", "placement": "system"}})
    status, _, params, runs = stored_job(pg_url, int(boosted.id))
    assert status == "succeeded"
    assert params["messages"][0]["segments"] == [["Answer only in French.", 30.0]]  # the system message by default
    assert runs[0][1] == 30.0
    assert boosted.choices[0].message.content != plain.choices[0].message.content  # the boost changed the answer
    # <boost> tags and a per-message M: only those spans are boosted, each with its own M.
    tagged = client.chat.completions.create(
        model=MODEL, max_tokens=8, temperature=0,
        messages=[{"role": "system", "content": "You are helpful."},
                  {"role": "user", "content": "What is the capital of Germany? <boost>Answer in French.</boost>"},
                  {"role": "assistant", "content": "OK.", "boost": 0.5},
                  {"role": "user", "content": "Go on."}],
        extra_body={"instaboost": {"multiplier": 8}})
    _, _, params, _ = stored_job(pg_url, int(tagged.id))
    assert [m["segments"] for m in params["messages"]] == [
        [["You are helpful.", None]], [["What is the capital of Germany? ", None], ["Answer in French.", 8.0]],
        [["OK.", 0.5]], [["Go on.", None]]]


def test_streaming_yields_the_same_text_then_usage(client):
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=16, temperature=0,
                  extra_body={"instaboost": {"multiplier": 5}})
    whole = client.chat.completions.create(**kwargs)
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) >= 2  # really streamed in pieces
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == [whole.choices[0].finish_reason]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    assert {c.id for c in chunks} == {chunks[0].id} and chunks[0].object == "chat.completion.chunk"


def _output_tokens(db_url: str, job_id: int) -> int:
    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(db_url) as s:
        return sum(r.output_tokens for r in s.get(Job, job_id).runs)


def test_n_choices_are_rows_of_one_job_each_with_its_own_seed(client, pg_url, live_server):
    """n=3 seeded sampling: three choices (seeds 11, 12, 13), stored as three runs of one job, and the same three
    on resubmit; streamed, each chunk names its choice and the stream ends after all three."""
    kwargs = dict(model=MODEL, messages=MESSAGES, max_tokens=8, temperature=1.0, seed=11, n=3,
                  extra_body={"top_k": 50, "repetition_penalty": 1.1, "metadata": {"run": "n3"}, "user": "u-1"})
    resp = client.chat.completions.create(**kwargs)
    texts = [c.message.content for c in resp.choices]
    assert [c.index for c in resp.choices] == [0, 1, 2] and len(set(texts)) == 3
    status, _, params, runs = stored_job(pg_url, int(resp.id))
    assert status == "succeeded" and params["n"] == 3 and params["metadata"] == {"run": "n3"}
    assert params["user"] == "u-1" and params["top_k"] == 50 and params["repetition_penalty"] == 1.1
    assert sorted((v, text) for v, _, text, _ in runs) == [("chat", texts[0]), ("chat_1", texts[1]),
                                                           ("chat_2", texts[2])]
    assert resp.usage.completion_tokens == _output_tokens(pg_url, int(resp.id))  # summed over the three choices
    again = client.chat.completions.create(**kwargs)
    assert again.id != resp.id and [c.message.content for c in again.choices] == texts
    # Choice 1 alone with seed 12 draws what choice 1 drew: seed + i.
    one = client.chat.completions.create(**{**kwargs, "n": 1, "seed": 12})
    assert one.choices[0].message.content == texts[1]
    chunks = list(client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **kwargs))
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == i)
                for i in range(3)]
    assert streamed == texts
    assert sorted(c.choices[0].index for c in chunks if c.choices and c.choices[0].finish_reason) == [0, 1, 2]
    assert chunks[-1].usage.completion_tokens == resp.usage.completion_tokens
    web, auth = live_server[1].test_client(), {"Authorization": f"Bearer {TOKEN}"}
    page = html.unescape(web.get(f"/jobs/{resp.id}", headers=auth).get_data(as_text=True))
    assert all(text in page for text in texts)  # one row per choice on the job page
    job = web.get(f"/api/jobs/{resp.id}", headers=auth).get_json()
    assert job["params"]["metadata"] == {"run": "n3"} and job["params"]["user"] == "u-1"


def test_temperature_0_gives_n_equal_choices(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6, temperature=0, n=2)
    assert resp.choices[0].message.content == resp.choices[1].message.content


def test_stop_strings_cut_the_text(client):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0)
    text = resp.choices[0].message.content
    word = text.split()[2]
    cut = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=24, temperature=0, stop=[word])
    assert cut.choices[0].message.content == text[:text.index(word)].strip()
    assert cut.choices[0].finish_reason == "stop"


@pytest.mark.parametrize("extra, param", [
    ({"instaboost": {"multiplier": 0}}, "instaboost.multiplier"),
    ({"instaboost": {"multiplier": -3}}, "instaboost.multiplier"),
    ({"instaboost": {"layers": "some"}}, "instaboost.layers"),
    ({"instaboost": {"placement": "nowhere"}}, "instaboost.placement"),
    ({"instaboost": {"colour": 1}}, "instaboost.colour"),
])
def test_a_bad_boost_is_a_clean_400_in_openai_shape(client, extra, param):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=4, extra_body=extra)
    assert exc.value.status_code == 400
    body = exc.value.body
    assert set(body) == {"message", "type", "param", "code"} and body["type"] == "invalid_request_error"
    assert body["param"] == param


def test_errors_take_openai_shape(client, live_server):
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, max_tokens=4,
                                       messages=[{"role": "user", "content": "<boost>unclosed"}])
    assert "unclosed" in exc.value.body["message"]
    with pytest.raises(openai.NotFoundError) as exc:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert exc.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as exc:
        client.chat.completions.create(model=MODEL, messages=MESSAGES, n=99)
    assert exc.value.body["param"] == "n"
    anonymous = openai.OpenAI(base_url=live_server[0] + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as exc:
        anonymous.models.list()
    assert exc.value.body["type"] == "invalid_request_error" and exc.value.body["code"] == "invalid_api_key"


def test_chat_messages_go_ahead_of_other_work(clean_db, redis_namespace, heartbeat, redis_client):
    """With no worker consuming, a chat job's message waits in the most urgent priority list, batch lines last."""
    from shared.celery_config import PRIORITY, model_queue
    from shared.chat import chat_params
    from shared.db import session_scope
    from shared.job_request import JobRequest
    from shared.store import submission
    from shared.store.tables import Batch
    from tests.fixtures.store import make_test_app

    heartbeat(MODEL)
    app = make_test_app(clean_db, redis_namespace)
    s = app.extensions["instaboost"]
    kw = {"settings": s.settings, "celery_app": s.celery, "redis": s.redis}
    with session_scope(clean_db) as session:
        job = submission.submit_job(session, JobRequest.from_dict({"instruction": "a", "query": "b", "model": MODEL},
                                                                  s.settings), **kw)
        chat = submission.submit_chat(session, chat_params({"model": MODEL, "messages": MESSAGES}, s.settings), **kw)
        batch = Batch(id="batch_x", status="in_progress", endpoint="/v1/chat/completions", input_file_id="file_x",
                      completion_window="24h")
        line, = submission.submit_batch_jobs(session, batch, [("c1", chat_params(
            {"model": MODEL, "messages": MESSAGES}, s.settings, priority="batch"))],
            settings=s.settings, celery_app=s.celery)
    from shared.worker_registry import waiting_job_ids

    queue = f"{redis_namespace}:{model_queue(MODEL)}"

    def ids_in(priority: int) -> set[int]:
        from shared.worker_registry import message_job_id

        key = queue + ("" if priority == 0 else f"\x06\x16{priority}")
        return {message_job_id(raw) for raw in redis_client.lrange(key, 0, -1)}

    assert ids_in(PRIORITY["interactive"]) == {chat.id}
    assert ids_in(PRIORITY["default"]) == {job.id}
    assert ids_in(PRIORITY["batch"]) == {line}
    assert waiting_job_ids(redis_client, model_queue(MODEL), redis_namespace) == {chat.id, job.id, line}


def test_a_chat_completion_is_an_ordinary_job_on_the_pages_and_in_the_csv(client, live_server):
    resp = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=6,
                                          extra_body={"instaboost": {"multiplier": 4}})
    web = live_server[1].test_client()
    auth = {"Authorization": f"Bearer {TOKEN}"}
    page = web.get(f"/jobs/{resp.id}", headers=auth)
    assert page.status_code == 200 and resp.choices[0].message.content in page.get_data(as_text=True)
    assert web.get("/jobs", headers=auth).status_code == 200
    job = web.get(f"/api/jobs/{resp.id}", headers=auth).get_json()
    assert job["status"] == "succeeded" and job["params"]["kind"] == "chat"
    csv_text = web.get(f"/runs.csv?job_id={resp.id}", headers=auth).get_data(as_text=True)
    assert "chat" in csv_text and len(csv_text.strip().splitlines()) == 2


def test_closing_a_stream_cancels_its_running_job(live_server, pg_url):
    """A client that leaves mid-answer: the job stops (cancelled) instead of generating for nobody."""
    import http.client
    import json
    import socket
    import time

    host, port = live_server[0].removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=120)
    conn.request("POST", "/v1/chat/completions", headers={"Content-Type": "application/json",
                                                          "Authorization": f"Bearer {TOKEN}"},
                 body=json.dumps({"model": MODEL, "max_tokens": 1000, "temperature": 0, "stream": True,
                                  "messages": [{"role": "user", "content": "Count from 1 to 1000, one per line."}]}))
    sock = conn.sock
    resp = conn.getresponse()
    assert resp.status == 200
    job_id = int(resp.getheader("X-InstaBoost-Job-Id"))
    while True:  # up to the first text: the worker is generating it
        line = resp.readline()
        assert line, "the stream ended before any text"
        event = json.loads(line[6:]) if line.startswith(b"data: {") else {}
        if event.get("choices") and event["choices"][0]["delta"].get("content"):
            break
    sock.shutdown(socket.SHUT_RDWR)
    resp.close()
    conn.close()
    deadline = time.monotonic() + 120
    while (status := stored_job(pg_url, job_id)[0]) in ("running", "cancelling"):
        assert time.monotonic() < deadline, status
        time.sleep(0.3)
    assert status == "cancelled"
