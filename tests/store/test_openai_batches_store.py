"""OpenAI batches in the store (shared.store.batches) on real PostgreSQL and Redis, no worker: the statuses a
live run rarely reaches (expired, failed lines), and finalization raced by several callers writing the files once.
"""

from __future__ import annotations

import io
import json
import threading
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from shared.db import session_scope
from shared.errors import BadRequest
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


# -- creation: atomic, idempotent, recovered by the recovery loop --------------------------------------------------


BODY = {"endpoint": "/v1/chat/completions", "completion_window": "24h"}


def upload(db_url: str, settings, lines: list[str]) -> str:
    with session_scope(db_url) as s:
        return files.create_file(s, "batch", "in.jsonl", io.BytesIO("\n".join(lines).encode()), settings=settings).id


def create(db_url: str, services, file_id: str, **kw) -> str:
    with session_scope(db_url) as s:
        return batches.create_batch(s, {**BODY, "input_file_id": file_id}, settings=services.settings,
                                    celery_app=services.celery, redis=services.redis, **kw).id


def counts(db_url: str) -> tuple[list[str], int]:
    with session_scope(db_url) as s:
        return list(s.scalars(select(Batch.status))), s.scalar(select(func.count()).select_from(Job))


def test_a_database_drop_during_create_stores_nothing_and_the_retried_create_stores_one_batch(clean_db,
                                                                                             redis_namespace,
                                                                                             heartbeat):
    """Before creates were atomic, the batch row was committed first: the drop left it validating forever, and
    the SDK's retry of the 503 created a second batch."""
    from sqlalchemy import event
    from sqlalchemy.engine import Engine
    from sqlalchemy.exc import OperationalError

    from tests.jobs.test_faults import PausableProxy

    heartbeat(DEFAULT_MODEL)
    services = make_test_app(clean_db, redis_namespace).extensions["instaboost"]
    file_id = upload(clean_db, services.settings, [line(f"r{k}") for k in range(3)])
    proxy = PausableProxy()
    via_proxy = clean_db.replace("@127.0.0.1:5432/", f"@127.0.0.1:{proxy.port}/")

    def drop_on_job_insert(conn, cursor, statement, *args):
        if conn.engine.url.port == proxy.port and statement.lstrip().upper().startswith("INSERT INTO JOBS"):
            proxy.pause()  # the database goes away while the batch's jobs are being stored

    event.listen(Engine, "before_cursor_execute", drop_on_job_insert)
    try:
        with pytest.raises(OperationalError):
            create(via_proxy, services, file_id, idempotency_key="key-1")
    finally:
        event.remove(Engine, "before_cursor_execute", drop_on_job_insert)
        proxy.close()
    assert counts(clean_db) == ([], 0)  # nothing half-written: no batch left validating, no job
    first = create(clean_db, services, file_id, idempotency_key="key-1")
    again = create(clean_db, services, file_id, idempotency_key="key-1")  # the response was lost: retried again
    assert again == first and counts(clean_db) == (["in_progress"], 3)
    with pytest.raises(BadRequest, match="other parameters"):
        with session_scope(clean_db) as s:
            batches.create_batch(s, {**BODY, "input_file_id": file_id, "metadata": {"a": "b"}},
                                 settings=services.settings, celery_app=services.celery, redis=services.redis,
                                 idempotency_key="key-1")


def test_a_keyless_sdk_retry_returns_the_batch_its_first_try_stored(clean_db, redis_namespace, heartbeat):
    heartbeat(DEFAULT_MODEL)
    services = make_test_app(clean_db, redis_namespace).extensions["instaboost"]
    file_id = upload(clean_db, services.settings, [line("a"), line("b")])
    first = create(clean_db, services, file_id)
    assert create(clean_db, services, file_id, retry=True) == first  # its answer was lost: the SDK retried
    assert create(clean_db, services, file_id) != first  # a new call is a new batch
    assert counts(clean_db) == (["in_progress", "in_progress"], 4)


def test_the_recovery_loop_moves_on_a_batch_a_dead_create_left_validating(clean_db, redis_namespace):
    """Batches an interrupted create of an earlier version left validating: failed (no jobs) or in progress."""
    from shared.settings import load_settings
    from worker.jobs.recovery import JobRecovery

    old = utcnow() - batches.STALE_VALIDATING - timedelta(seconds=5)
    with session_scope(clean_db) as s:
        for batch_id, created in (("batch_nojobs", old), ("batch_withjobs", old), ("batch_young", utcnow())):
            s.add(Batch(id=batch_id, status="validating", endpoint="/v1/chat/completions", input_file_id="file-x",
                        completion_window="24h", request_total=1, line_errors=[], created_at=created,
                        expires_at=created + timedelta(hours=24)))
        s.add(Job(status=JobStatus.queued, model=DEFAULT_MODEL, params={}, kind="chat", batch_id="batch_withjobs",
                  custom_id="a", enqueued_at=utcnow()))
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace})
    done = JobRecovery(settings, db_url=clean_db).run_pass()
    assert sorted(done["validating"]) == ["batch_nojobs", "batch_withjobs"]
    with session_scope(clean_db) as s:
        status = dict(s.execute(select(Batch.id, Batch.status)).all())
        error = s.get(Batch, "batch_nojobs").errors["data"][0]
    assert status == {"batch_nojobs": "failed", "batch_withjobs": "in_progress", "batch_young": "validating"}
    assert error["code"] == "creation_interrupted" and "create the batch again" in error["message"]


def test_lines_the_broker_refused_after_the_commit_are_sent_by_the_recovery_loop(clean_db, redis_namespace, heartbeat):
    """The batch and its jobs are committed before their messages go out: a broker that refuses them leaves the
    jobs in the outbox (enqueued_at NULL), never a half-created batch, and the recovery loop's outbox sends them."""
    from shared.celery_config import make_celery
    from shared.settings import load_settings
    from worker.jobs.recovery import JobRecovery

    heartbeat(DEFAULT_MODEL)
    services = make_test_app(clean_db, redis_namespace).extensions["instaboost"]
    file_id = upload(clean_db, services.settings, [line("a"), line("b")])
    dead = make_celery(load_settings(overrides={"redis.url": "redis://127.0.0.1:1/0",
                                                "redis.namespace": redis_namespace}))
    with session_scope(clean_db) as s:
        b = batches.create_batch(s, {**BODY, "input_file_id": file_id}, settings=services.settings, celery_app=dead,
                                 redis=services.redis)
        assert b.status == "in_progress"
        assert list(s.scalars(select(Job.enqueued_at).where(Job.batch_id == b.id))) == [None, None]
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace,
                                        "sweeper.outbox_grace": 0})
    assert len(JobRecovery(settings, db_url=clean_db).run_pass()["outbox"]) == 2
    with session_scope(clean_db) as s:
        assert None not in list(s.scalars(select(Job.enqueued_at).where(Job.batch_id == b.id)))


def test_racing_creates_with_one_idempotency_key_store_one_batch(clean_db, redis_namespace, heartbeat):
    heartbeat(DEFAULT_MODEL)
    services = make_test_app(clean_db, redis_namespace).extensions["instaboost"]
    file_id = upload(clean_db, services.settings, [line("a"), line("b")])
    barrier = threading.Barrier(4)
    ids = []

    def go():
        barrier.wait()
        ids.append(create(clean_db, services, file_id, idempotency_key="race-1"))

    threads = [threading.Thread(target=go) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(ids) == 4 and len(set(ids)) == 1
    assert counts(clean_db) == (["in_progress"], 2)
