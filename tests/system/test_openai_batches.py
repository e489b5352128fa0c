"""OpenAI Files and Batches (/v1) with the real `openai` SDK against a live server and a real worker.

Upload -> batch -> poll -> output download with every custom_id; a malformed line lands in the error file
without stopping the batch; cancel of a running batch; paging.
"""

from __future__ import annotations

import io
import json
import time

import pytest

from tests.system.test_openai_api import MODEL, TOKEN, client, live_server  # noqa: F401  (fixtures)

openai = pytest.importorskip("openai")

QUESTIONS = ["What is the capital of France?", "Name a colour.", "What is 2 + 2?", "Say hello."]


def line(custom_id: str, content: str, max_tokens: int = 6, **body) -> dict:
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": MODEL, "max_tokens": max_tokens, "temperature": 0,
                     "messages": [{"role": "system", "content": "Answer in one short sentence."},
                                  {"role": "user", "content": content}], **body}}


def jsonl(lines: list[dict]) -> bytes:
    return "".join(json.dumps(x) + "\n" for x in lines).encode()


def wait_batch(client, batch_id: str, statuses: set[str], timeout: float = 300):  # noqa: F811
    deadline = time.monotonic() + timeout
    while True:
        b = client.batches.retrieve(batch_id)
        if b.status in statuses:
            return b
        assert time.monotonic() < deadline, f"batch {batch_id} stuck in {b.status}: {b}"
        time.sleep(0.5)


def read_lines(client, file_id: str | None) -> list[dict]:  # noqa: F811
    if file_id is None:
        return []
    return [json.loads(x) for x in client.files.content(file_id).text.splitlines() if x.strip()]


def test_upload_batch_poll_and_download_every_custom_id(client):  # noqa: F811
    lines = [line(f"req-{k}", q, instaboost={"multiplier": 5}) for k, q in enumerate(QUESTIONS)]
    lines.append(line("bad-boost", "Hello?", instaboost={"multiplier": -1}))  # malformed: the error file
    lines.append(line("bad-tag", "<boost>Hello?"))
    f = client.files.create(file=("input.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    assert f.purpose == "batch" and f.bytes == len(jsonl(lines)) and f.object == "file"
    assert client.files.retrieve(f.id).filename == "input.jsonl"
    assert client.files.content(f.id).content == jsonl(lines)

    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h",
                                  metadata={"purpose": "test"})
    assert batch.status in ("in_progress", "finalizing", "completed") and batch.metadata == {"purpose": "test"}
    assert batch.request_counts.total == len(lines)
    done = wait_batch(client, batch.id, {"completed", "failed", "cancelled", "expired"})
    assert done.status == "completed"
    assert (done.request_counts.completed, done.request_counts.failed) == (len(QUESTIONS), 2)
    assert done.completed_at and done.finalizing_at and done.in_progress_at
    out = read_lines(client, done.output_file_id)
    err = read_lines(client, done.error_file_id)
    assert sorted(x["custom_id"] for x in out) == [f"req-{k}" for k in range(len(QUESTIONS))]
    for x in out:
        assert x["response"]["status_code"] == 200 and x["error"] is None
        body = x["response"]["body"]
        assert body["object"] == "chat.completion" and body["choices"][0]["message"]["content"]
        assert body["usage"]["completion_tokens"] >= 1 and body["id"] == x["response"]["request_id"]
    assert sorted(x["custom_id"] for x in err) == ["bad-boost", "bad-tag"]
    for x in err:
        assert x["response"]["status_code"] == 400
        assert set(x["response"]["body"]["error"]) == {"message", "type", "param", "code"}
    # Every line once, none twice.
    assert len(out) + len(err) == len(lines)
    # Each line was an ordinary stored job, answered like a chat completion.
    first = out[0]["response"]["body"]
    assert client.chat.completions.retrieve(first["id"]).choices[0].message.content == \
        first["choices"][0]["message"]["content"]


def test_cancel_a_running_batch(client):  # noqa: F811
    # More lines than one worker batch holds (worker.max_batch_rows, 32): the first step's lines complete while
    # the rest still wait or run, and those are the ones the cancel stops.
    lines = [line(f"c-{k}", QUESTIONS[k % len(QUESTIONS)], max_tokens=48) for k in range(40)]
    f = client.files.create(file=("cancel.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    # Wait until it really runs: a first request done, the rest waiting.
    deadline = time.monotonic() + 120
    while client.batches.retrieve(batch.id).request_counts.completed < 1:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    cancelling = client.batches.cancel(batch.id)
    assert cancelling.status in ("cancelling", "cancelled")
    done = wait_batch(client, batch.id, {"cancelled", "completed", "failed", "expired"})
    assert done.status == "cancelled" and done.cancelled_at and done.cancelling_at
    out, err = read_lines(client, done.output_file_id), read_lines(client, done.error_file_id)
    assert 1 <= len(out) < len(lines)
    assert sorted(x["custom_id"] for x in out + err) == sorted(x["custom_id"] for x in lines)
    assert {x["error"]["code"] for x in err if x["error"]} <= {"batch_cancelled"}
    assert done.request_counts.completed == len(out) and done.request_counts.failed == len(err)
    with pytest.raises(openai.ConflictError):
        client.batches.cancel(batch.id)


def test_list_batches_pages_with_after_and_limit(client):  # noqa: F811
    f = client.files.create(file=("p.jsonl", io.BytesIO(jsonl([line("x", "<boost>unclosed")]))), purpose="batch")
    made = [client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h").id
            for _ in range(3)]
    assert all(client.batches.retrieve(b).status == "failed" for b in made)  # no valid line: failed, with errors
    first = client.batches.list(limit=2)
    assert [b.id for b in first.data] == made[::-1][:2] and first.has_more
    second = client.batches.list(limit=2, after=first.data[-1].id)
    assert second.data[0].id == made[0]
    seen = [b.id for b in client.batches.list(limit=1)]  # the SDK's auto-paging follows after
    assert set(made) <= set(seen)


def test_files_delete(client):  # noqa: F811
    f = client.files.create(file=("d.jsonl", io.BytesIO(jsonl([line("d", "Hi")]))), purpose="batch")
    assert client.files.delete(f.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        client.files.content(f.id)


def test_a_chat_completion_overtakes_queued_batch_lines(client, pg_url):  # noqa: F811
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.store.tables import Job

    # More lines than one worker batch holds (worker.max_batch_rows, 32): those left queued wait behind the chat.
    lines = [line(f"slow-{k}", QUESTIONS[k % len(QUESTIONS)], max_tokens=32) for k in range(40)]
    f = client.files.create(file=("slow.jsonl", io.BytesIO(jsonl(lines))), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    resp = client.chat.completions.create(model=MODEL, max_tokens=4, temperature=0,
                                          messages=[{"role": "user", "content": "Hi!"}])
    with session_scope(pg_url) as s:
        chat_started = s.get(Job, int(resp.id)).started_at
        later = list(s.scalars(select(Job.id).where(Job.batch_id == batch.id, (Job.started_at.is_(None)) |
                                                    (Job.started_at > chat_started))))
    # Sent after all 40 lines, it ran before those no batch had taken in yet: at most the first batch went first.
    assert len(later) >= 40 - 32, later
    try:
        client.batches.cancel(batch.id)
    except openai.ConflictError:  # its lines ran in a few batches: it may have completed already
        pass
    assert wait_batch(client, batch.id, {"cancelled", "completed"}).status in ("cancelled", "completed")
