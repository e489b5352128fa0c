"""Schemathesis against /api/openapi.json: no 5xx, every response conforms to the document.

Positive and negative examples, derandomized and bounded per operation, through the WSGI app on real
PostgreSQL and Redis with a live heartbeat for the default model (so valid submissions are queued).
"""

from __future__ import annotations

import html
import os
import re
from urllib.parse import parse_qs, urlsplit

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tests.fixtures.store import DEFAULT_MODEL, live_heartbeat, make_test_app

MAX_EXAMPLES = int(os.environ.get("INSTABOOST_FUZZ_EXAMPLES", "25"))  # raise it for a deeper ad hoc run
MODEL_INFO = {"n_layers": 30, "n_heads": 9, "max_context": 8192}


def with_live_facts(case) -> None:
    """Fit a schema-valid body to what the workers serve now, as a client reads it from GET /api/models.

    The document describes what this deployment accepts; the served model, its layers and context and whether a
    sweep recommends a boost are live facts, so a positive example names the served model and fits it.
    """
    body = case.body
    if not (case.meta and case.meta.generation.mode.is_positive and isinstance(body, dict)):
        return
    if body.get("model") is not None:
        body["model"] = DEFAULT_MODEL
    if body.get("multipliers") == "recommended":  # no sweep has finished here (/api/models: recommended false)
        body["multipliers"] = [3]
    # JSON Schema's integers include 262.0: a float with no fraction is fitted too.
    if isinstance(body.get("start_layer"), (int, float)) and not isinstance(body["start_layer"], bool):
        body["start_layer"] = min(body["start_layer"], MODEL_INFO["n_layers"] - 1)
    if isinstance(body.get("max_new_tokens"), (int, float)) and not isinstance(body["max_new_tokens"], bool):
        body["max_new_tokens"] = min(body["max_new_tokens"], MODEL_INFO["max_context"] - 1)


@pytest.fixture(scope="module")
def fuzz_schema(pg_url, redis_namespace):
    """The app's OpenAPI schema, loaded through WSGI, with a live heartbeat for the default model."""
    with live_heartbeat(redis_namespace, "fuzz-worker", [DEFAULT_MODEL], model_info={DEFAULT_MODEL: MODEL_INFO}):
        app = make_test_app(pg_url, redis_namespace)
        schema = schemathesis.openapi.from_wsgi("/api/openapi.json", app)
        schema.config.generation.update(modes=[schemathesis.GenerationMode.POSITIVE,
                                               schemathesis.GenerationMode.NEGATIVE],
                                        max_examples=MAX_EXAMPLES, deterministic=True)
        yield schema


# /v1 (the OpenAI-compatible API) is fuzzed by tests/test_openai_fuzz.py.
schema = schemathesis.pytest.from_fixture("fuzz_schema").exclude(path_regex="^/v1/")


@schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case):
    with_live_facts(case)
    case.call_and_validate()


# -- undeclared query parameters (issue 9): paging links are built from the declared parameters only -----------

# Names url_for() treats specially, plus names no route declares.
UNDECLARED = ["endpoint", "_external", "_anchor", "_method", "_scheme", "values", "self", "cursor_", "limit "]
LIST_ROUTES = ["/api/jobs", "/api/runs", "/api/runs.csv", "/jobs", "/runs", "/runs.csv"]


@pytest.fixture(scope="module")
def paged_client(pg_url, redis_namespace):
    """A client of the app with three jobs and their runs stored, so limit=1 has a next page everywhere."""
    from shared.db import session_scope
    from shared.store import lifecycle
    from shared.store.tables import Job, JobStatus

    with session_scope(pg_url) as s:
        s.execute(text("TRUNCATE runs, jobs RESTART IDENTITY CASCADE"))
        for _ in range(3):
            job = Job(status=JobStatus.succeeded, model=DEFAULT_MODEL, params={"instruction": "i", "query": "q"},
                      progress_total=1)
            s.add(job)
            s.flush()
            lifecycle.record_run(s, job.id, "original", multiplier=1, layers="none", output_text="x")
    yield make_test_app(pg_url, redis_namespace).test_client()


def next_link(resp) -> str | None:
    if resp.mimetype == "application/json":
        return resp.get_json()["next"]
    found = re.search(r'id="next-page" href="([^"]+)"', resp.get_data(as_text=True))
    return html.unescape(found.group(1)) if found else None


@pytest.mark.parametrize("path", LIST_ROUTES)
@pytest.mark.parametrize("name", UNDECLARED)
def test_undeclared_query_parameters_are_ignored(paged_client, path, name):
    resp = paged_client.get(path, query_string={"limit": "1", name: "x"})
    assert resp.status_code == 200, resp.get_data(as_text=True)[:500]
    if path.endswith(".csv"):
        return
    link = next_link(resp)
    assert link and link.startswith(path + "?"), link  # relative, same route: no _external/_scheme/_anchor
    assert set(parse_qs(urlsplit(link).query)) == {"limit", "cursor"}, link
    assert paged_client.get(link).status_code == 200


@given(st.dictionaries(st.sampled_from(UNDECLARED + ["limit", "cursor", "status", "model", "job_id", "variant"])
                       | st.text(max_size=12), st.text(max_size=12), max_size=6),
       st.sampled_from(LIST_ROUTES))
@settings(max_examples=MAX_EXAMPLES * 4, derandomize=True, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_list_routes_never_fail_on_any_query(paged_client, query, path):
    query = {"limit": "1", **query}  # a page with a next link, unless the query replaces the limit
    resp = paged_client.get(path, query_string=query)
    resp.close()
    assert resp.status_code < 500, (path, query, resp.get_data(as_text=True)[:300])
    if resp.status_code == 200 and not path.endswith(".csv"):
        link = next_link(resp)
        if link:
            declared = {"limit", "cursor", "status", "model", "job_id", "variant"}
            assert set(parse_qs(urlsplit(link).query, keep_blank_values=True)) <= declared, link
