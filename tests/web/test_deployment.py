"""Deployment identity (issue 25): a database is one deployment, and the Redis key prefix belongs to one of them.

Two deployments on one prefix took each other's jobs; the web app now refuses a prefix another database owns,
and what it lists (live workers, waiting messages) leaves other deployments out.
"""

from __future__ import annotations

import json
import uuid

import pytest

from shared import deployment
from shared.celery_config import TASK_NAME, job_priority, make_celery, model_queue
from shared.settings import load_settings
from shared.worker_registry import live_workers, waiting_job_ids
from tests.fixtures.store import DEFAULT_MODEL, TEST_REDIS_URL, make_test_app, write_heartbeat
from tests.fixtures.worker import purge_namespace
from tests.helpers import assert_problem

BODY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 8}


@pytest.fixture
def other_db(tmp_path):
    """Another deployment: a new SQLite database, migrated (so it has its own identity)."""
    from shared.db import upgrade

    url = f"sqlite:///{tmp_path / 'other.db'}"
    upgrade(url)
    return url


@pytest.fixture
def namespace(redis_namespace):
    """A Redis prefix of this test alone (each test decides which database owns it)."""
    ns = f"{redis_namespace}_dep{uuid.uuid4().hex[:6]}"
    yield ns
    purge_namespace(ns)


def test_each_database_gets_one_identity_from_its_migration(clean_db, other_db):
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.store.tables import Deployment

    ours, theirs = deployment.local_identity(clean_db), deployment.local_identity(other_db)
    assert ours != theirs and str(uuid.UUID(ours)) == ours and str(uuid.UUID(theirs)) == theirs
    with session_scope(other_db) as s:
        assert s.scalar(select(func.count()).select_from(Deployment)) == 1


def test_the_web_app_refuses_a_prefix_another_database_owns(clean_db, other_db, namespace, redis_client):
    make_test_app(other_db, namespace)  # the first to start owns the prefix
    owner = json.loads(redis_client.get(deployment.owner_key(namespace)))
    assert owner == {"id": deployment.local_identity(other_db), "database": other_db}
    with pytest.raises(deployment.DeploymentConflict) as refused:
        make_test_app(clean_db, namespace)
    message = refused.value.message
    assert other_db in message and deployment.mask_url(clean_db) in message  # both databases named
    assert "INSTABOOST_REDIS_NAMESPACE" in message and refused.value.status == 503
    make_test_app(other_db, namespace)  # its owner starts again as often as it likes


def test_a_submission_into_a_prefix_another_deployment_took_is_refused(clean_db, other_db, namespace,
                                                                        redis_client):
    app = make_test_app(clean_db, namespace)
    write_heartbeat(redis_client, namespace, "ours", [DEFAULT_MODEL])
    # Redis lost the owner key (an emptied Redis) and another deployment's worker claimed the prefix since.
    redis_client.delete(deployment.owner_key(namespace))
    deployment.claim(redis_client, namespace, other_db)
    client = app.test_client()
    body = assert_problem(client.post("/api/jobs", json=BODY), 503)
    assert other_db in body["detail"] and "redis.namespace" in body["detail"]
    assert client.get("/api/jobs").get_json()["items"] == []  # no job stored, no message queued
    assert not [k for k in redis_client.scan_iter(match=f"{namespace}:models.*")]


def test_a_prefix_redis_lost_is_claimed_again_on_submit(clean_db, namespace, redis_client):
    app = make_test_app(clean_db, namespace)
    write_heartbeat(redis_client, namespace, "ours", [DEFAULT_MODEL])
    redis_client.delete(deployment.owner_key(namespace))
    assert app.test_client().post("/api/jobs", json=BODY).status_code == 202
    assert deployment.owner_id(redis_client, namespace) == deployment.local_identity(clean_db)


def test_workers_and_messages_of_another_deployment_are_left_out(clean_db, other_db, namespace, redis_client):
    ours, theirs = deployment.local_identity(clean_db), deployment.local_identity(other_db)
    client = make_test_app(clean_db, namespace).test_client()
    write_heartbeat(redis_client, namespace, "ours", [DEFAULT_MODEL], deployment=ours)
    write_heartbeat(redis_client, namespace, "theirs", ["their-model"], deployment=theirs)
    write_heartbeat(redis_client, namespace, "older", [DEFAULT_MODEL])  # a beat that names no deployment
    assert {w["hostname"] for w in live_workers(redis_client, namespace)} == {"ours", "older"}
    listed = client.get("/api/models").get_json()
    assert {w["hostname"] for w in listed["workers"]} == {"ours", "older"}
    assert [m["name"] for m in listed["models"]] == [DEFAULT_MODEL]

    # Every job message names its sender's deployment; the queue's waiting jobs are this deployment's only.
    queue = model_queue(DEFAULT_MODEL)
    for db_url, job_id in ((other_db, 5), (clean_db, 6)):
        settings = load_settings(overrides={"database.url": db_url, "redis.url": TEST_REDIS_URL,
                                            "redis.namespace": namespace})
        make_celery(settings).send_task(TASK_NAME, args=[job_id], queue=queue)
    raw = redis_client.lrange(f"{namespace}:{queue}", 0, -1)
    assert sorted(json.loads(m)["headers"][deployment.HEADER] for m in raw) == sorted([ours, theirs])
    assert waiting_job_ids(redis_client, queue, namespace) == {6}


def test_the_interactive_list_alone_holds_the_chats_waiting(clean_db, namespace, redis_client):
    """The continuous runner reads it at every step: only messages sent at the interactive priority."""
    queue = model_queue(DEFAULT_MODEL)
    settings = load_settings(overrides={"database.url": clean_db, "redis.url": TEST_REDIS_URL,
                                        "redis.namespace": namespace})
    app = make_celery(settings)
    for job_id, kind, batch in ((7, "chat", None), (8, "job", None), (9, "chat", "batch_1")):
        app.send_task(TASK_NAME, args=[job_id], queue=queue, priority=job_priority(kind, batch))
    assert waiting_job_ids(redis_client, queue, namespace) == {7, 8, 9}
    assert waiting_job_ids(redis_client, queue, namespace, interactive=True) == {7}
