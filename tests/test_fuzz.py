"""Schemathesis against /api/openapi.json: no 5xx, every response conforms to the document.

Positive and negative examples, derandomized and bounded per operation, through the WSGI app on real
PostgreSQL and Redis with a live heartbeat for the default model (so valid submissions are queued).
"""

from __future__ import annotations

import os

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app

pytestmark = pytest.mark.services
MAX_EXAMPLES = int(os.environ.get("INSTABOOST_FUZZ_EXAMPLES", "25"))  # raise it for a deeper ad hoc run


@pytest.fixture(scope="module")
def fuzz_schema(pg_url, redis_namespace):
    """The app's OpenAPI schema, loaded through WSGI, with a live heartbeat for the default model."""
    model_info = {DEFAULT_MODEL: {"n_layers": 30, "n_heads": 9, "max_context": 8192}}
    with live_heartbeat(redis_namespace, "fuzz-worker", [DEFAULT_MODEL], model_info=model_info):
        app = make_test_app(pg_url, redis_namespace)
        schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
        schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                               schemathesis.GenerationMode.NEGATIVE],
                                        max_examples=MAX_EXAMPLES, deterministic=True)
        yield schema


schema = schemathesis.pytest.from_fixture("fuzz_schema")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    case.call_and_validate()
