"""Schemathesis against /api/openapi.json: no 5xx, every response conforms to the document.

Positive and negative examples, derandomized and bounded per operation, through the WSGI app on real
PostgreSQL and Redis with a live heartbeat for the default model (so valid submissions are queued).
"""

from __future__ import annotations

import json
import os
import time

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from shared.celery_config import heartbeat_prefix
from tests.fixtures.store import DEFAULT_MODEL, make_test_app

pytestmark = pytest.mark.services
MAX_EXAMPLES = int(os.environ.get("INSTABOOST_FUZZ_EXAMPLES", "25"))  # raise it for a deeper ad hoc run


@pytest.fixture(scope="module")
def fuzz_schema(pg_url, redis_namespace):
    """The app's OpenAPI schema, loaded through WSGI, with a live heartbeat for the default model."""
    from shared.celery_config import redis_client

    client = redis_client()
    key = heartbeat_prefix(redis_namespace) + "fuzz-worker"
    client.set(key, json.dumps({"hostname": "fuzz-worker", "models": [DEFAULT_MODEL], "pid": os.getpid(),
                                "started_at": time.time(), "seen_at": time.time(),
                                "model_info": {DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}}}),
               ex=600)
    app = make_test_app(pg_url, redis_namespace)
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
    schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                           schemathesis.GenerationMode.NEGATIVE],
                                    max_examples=MAX_EXAMPLES, deterministic=True)
    yield schema
    client.delete(key)
    queues = list(client.scan_iter(match=f"{redis_namespace}:models.*"))
    if queues:
        client.delete(*queues)
    client.close()


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate()
