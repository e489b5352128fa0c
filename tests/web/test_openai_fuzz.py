"""Schemathesis over the /v1 part of the OpenAPI document: no 5xx, every response conforms to the document.

Positive and negative examples through the WSGI app on real PostgreSQL and Redis, with a live heartbeat for
the default model. Chat completions are fuzzed with negative examples only: a valid one is queued and, with
no worker in this test, would wait out v1.wait_seconds (a 504 that tests/test_openai_inputs.py checks).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app
MAX_EXAMPLES = int(os.environ.get("INSTABOOST_FUZZ_EXAMPLES", "25"))
# Fuzzed with negative examples only: a valid chat is queued and waits; a schema-valid upload is random bytes,
# not JSONL, which no schema can say.
NEGATIVE_ONLY = ["v1CreateChatCompletion", "v1CreateCompletion", "v1CreateResponse", "v1UploadFile"]


def _load(pg_url: str, redis_namespace: str, positive: bool, chat: bool):
    app = make_test_app(pg_url, redis_namespace, SETTINGS={"v1.wait_seconds": 0.5})
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    modes = [schemathesis.GenerationMode.NEGATIVE] + ([schemathesis.GenerationMode.POSITIVE] if positive else [])
    schema.config.generation.update(modes=modes, max_examples=MAX_EXAMPLES, deterministic=True)
    return schema


@pytest.fixture(scope="module")
def v1_heartbeat(redis_namespace):
    model_info = {DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}}
    with live_heartbeat(redis_namespace, "fuzz-v1-worker", [DEFAULT_MODEL], model_info=model_info):
        yield


@pytest.fixture(scope="module")
def v1_schema(pg_url, redis_namespace, v1_heartbeat):
    return _load(pg_url, redis_namespace, positive=True, chat=False)


@pytest.fixture(scope="module")
def v1_chat_schema(pg_url, redis_namespace, v1_heartbeat):
    return _load(pg_url, redis_namespace, positive=False, chat=True)


# Filters on the lazy schema: the fixture's own schema is filtered again by these.
v1 = schemathesis.pytest.from_fixture("v1_schema").include(path_regex="^/v1/").exclude(operation_id=NEGATIVE_ONLY)
v1_chat = schemathesis.pytest.from_fixture("v1_chat_schema").include(operation_id=NEGATIVE_ONLY)


@v1.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_v1_conforms_to_its_openapi_document(case):
    case.call_and_validate()


@v1_chat.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_v1_chat_refuses_what_its_document_refuses(case):
    case.call_and_validate()
