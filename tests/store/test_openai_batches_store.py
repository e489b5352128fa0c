"""OpenAI batches in the store (shared.store.batches) on real PostgreSQL and Redis, no worker: the statuses a
live run rarely reaches (expired, failed lines), and finalization raced by several callers writing the files once.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta

from sqlalchemy import func, select, update

from shared.db import session_scope
from shared.store import batches, files, lifecycle
from shared.store.tables import Batch, File, Job, JobStatus, utcnow
from tests.fixtures.store import DEFAULT_MODEL, make_test_app


def line(cid: str, **body) -> str:
    return json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                       "body": {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}],
                                "max_tokens": 4, **body}})


def make_batch(db_url: str, namespace: str, lines: list[str]) -> str:
    s_ = make_test_app(db_url, namespace).extensions["instaboost"]
    with session_scope(db_url) as s:
        f = files.create_file(s, "batch", "in.jsonl", io.BytesIO("\n".join(lines).encode()), settings=s_.settings)
        b = batches.create_batch(s, {"input_file_id": f.id, "endpoint": "/v1/chat/completions",
                                     "completion_window": "24h"}, settings=s_.settings, celery_app=s_.celery,
                                 redis=s_.redis)
        return b.id


def file_lines(db_url: str, file_id: str | None) -> list[dict]:
    if file_id is None:
        return []
    with session_scope(db_url) as s:
        return [json.loads(x) for x in s.get(File, file_id).content.decode().splitlines()]


def test_a_batch_past_its_window_expires_with_its_unfinished_lines_in_the_error_file(clean_db, redis_namespace,
                                                                                     heartbeat):
    heartbeat(DEFAULT_MODEL)
    batch_id = make_batch(clean_db, redis_namespace, [line("a"), line("b"), line("bad", instaboost={"multiplier": 0})])
    with session_scope(clean_db) as s:
        b = batches.get_batch(s, batch_id)
        assert b.status == "in_progress" and len(b.line_errors) == 1
        first = s.scalar(select(Job.id).where(Job.batch_id == batch_id).order_by(Job.id))
        lifecycle.mark_running(s, first, "w1")
        lifecycle.record_run(s, first, "chat", multiplier=1.0, layers="none", output_text="Bonjour",
                             prompt_tokens=5, output_tokens=1, finish_reason="stop")
        lifecycle.mark_succeeded(s, first)
        s.commit()
        s.execute(update(Batch).where(Batch.id == batch_id).values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
        b = batches.refresh_batch(s, batch_id)
        assert b.status == "expired" and b.expired_at is not None
        assert batches.batch_to_dict(s, b)["request_counts"] == {"total": 3, "completed": 1, "failed": 2}
        out, err = file_lines(clean_db, b.output_file_id), file_lines(clean_db, b.error_file_id)
    assert [x["custom_id"] for x in out] == ["a"]
    assert out[0]["response"]["body"]["choices"][0]["message"]["content"] == "Bonjour"
    assert {x["custom_id"]: (x["error"] or {}).get("code") for x in err} == {"b": "batch_expired", "bad": None}
    assert next(x for x in err if x["custom_id"] == "bad")["response"]["status_code"] == 400


def test_racing_finalizers_write_the_files_once(clean_db, redis_namespace, heartbeat):
    heartbeat(DEFAULT_MODEL)
    batch_id = make_batch(clean_db, redis_namespace, [line(f"r{k}") for k in range(4)])
    with session_scope(clean_db) as s:
        for job_id in s.scalars(select(Job.id).where(Job.batch_id == batch_id)):
            lifecycle.mark_running(s, job_id, "w1")
            lifecycle.mark_failed(s, job_id, "boom")
        s.commit()
        files_before = s.scalar(select(func.count()).select_from(File))
    barrier = threading.Barrier(4)
    finals = []

    def finalize():
        with session_scope(clean_db) as s:
            barrier.wait()
            finals.append(batches.refresh_batch(s, batch_id).status)

    threads = [threading.Thread(target=finalize) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with session_scope(clean_db) as s:
        b = batches.get_batch(s, batch_id)
        assert b.status == "completed" and b.output_file_id is None
        assert s.scalar(select(func.count()).select_from(File)) == files_before + 1  # one error file, once
        assert all(j.status is JobStatus.failed for j in s.scalars(select(Job).where(Job.batch_id == batch_id)))
    err = file_lines(clean_db, b.error_file_id)
    assert sorted(x["custom_id"] for x in err) == [f"r{k}" for k in range(4)]
    assert all(x["response"]["status_code"] == 500 and "boom" in x["response"]["body"]["error"]["message"]
               for x in err)
    assert len(finals) == 4 and set(finals) <= {"finalizing", "completed"}  # a loser may see the winner at work
