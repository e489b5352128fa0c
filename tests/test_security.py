"""Security of the web app: CSV injection, escaping, CSRF, the API token, secrets, size limits, headers."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
import uuid

import pytest
from markupsafe import escape
from sqlalchemy import text

from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from tests.fixtures.store import make_test_app

pytestmark = pytest.mark.services
PROBLEM = "application/problem+json"
PAYLOADS = ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>']
BODY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 8}


def csrf_token(client, path="/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def add_job(session, *, instruction="Be brief.", query="Hi?", model="m", status=JobStatus.succeeded,
            error=None, outputs=None) -> int:
    job = Job(status=status, model=model, progress_total=len(outputs or {}), error=error,
              params={"instruction": instruction, "query": query, "engine": "fast", "placement": "system",
                      "max_new_tokens": 8, "temperature": 0.0, "top_p": 1.0, "seed": 42, "start_layer": 8,
                      "num_middle_layers": 5, "head_boost_percentage": 100.0, "multipliers": [10.0],
                      "layer_modes": ["all", "middle"], "model": model})
    session.add(job)
    session.commit()
    for variant, output in (outputs or {}).items():
        lifecycle.record_run(session, job.id, variant, multiplier=1 if variant == "original" else 10,
                        layers="none" if variant == "original" else variant.split("_")[0], output_text=output)
    return job.id


# -- CSV injection ---------------------------------------------------------------------------------

DANGEROUS = ["=HYPERLINK(\"http://evil\",\"x\")", "+1+1", "-2+3", "@SUM(A1:A2)", "\t=1+1", "\r=1+1"]


def test_export_uses_the_shared_neutralizer():
    import web.export
    from shared.csvsafe import neutralize

    assert web.export.neutralize is neutralize
    assert "FORMULA_PREFIXES" not in vars(web.export)


@pytest.mark.parametrize("path", ["/api/runs.csv", "/runs.csv"])
def test_csv_export_neutralizes_formulas_in_outputs_and_user_text(client, db_session, path):
    outputs = {"original": "plain answer", **{f"all_x{i}": d for i, d in enumerate(DANGEROUS)}}
    job_id = add_job(db_session, instruction="=cmd|' /C calc'!A0", query="@evil", outputs=outputs)
    resp = client.get(f"{path}?job_id={job_id}")
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True), newline="")))
    by_variant = {r["variant"]: r for r in rows}
    assert by_variant["original"]["output_text"] == "plain answer"  # harmless text is left alone
    for i, dangerous in enumerate(DANGEROUS):
        assert by_variant[f"all_x{i}"]["output_text"] == "'" + dangerous
    for row in rows:
        assert row["instruction"] == "'=cmd|' /C calc'!A0" and row["query"] == "'@evil"
        for cell in row.values():
            assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), row


# -- escaping ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("payload", PAYLOADS)
def test_every_page_escapes_user_text_outputs_and_errors(client, db_session, heartbeat, payload):
    heartbeat()
    escaped = str(escape(payload))
    job_id = add_job(db_session, instruction=payload, query=payload, model=payload, status=JobStatus.failed,
                     error=f"worker failed: {payload}", outputs={"original": payload, "all_x10": payload})
    pages = {
        "job": client.get(f"/jobs/{job_id}"),
        "jobs": client.get("/jobs"),
        "jobs filtered": client.get("/jobs", query_string={"model": payload}),
        "runs": client.get("/runs"),
        "runs filtered": client.get("/runs", query_string={"model": payload, "variant": payload}),
        "bad filter": client.get("/jobs", query_string={"status": payload}),
        "missing job": client.get(f"/jobs/{payload[:20]}"),
    }
    token = csrf_token(client)
    pages["form errors"] = client.post("/", data={"csrf_token": token, "instruction": payload, "query": payload,
                                                  "placement": payload, "engine": payload, "model": payload,
                                                  "multipliers": payload[:30], "layer_modes": ["all"]})
    for name, resp in pages.items():
        page = resp.get_data(as_text=True)
        assert resp.mimetype == "text/html", name
        assert payload not in page, name
        assert "<script>alert" not in page and "onerror=alert" not in page.replace("onerror=alert(1)&gt;", ""), name
    # The payload was rendered (escaped), not dropped: the job page shows output, error and texts.
    job_page = pages["job"].get_data(as_text=True)
    assert job_page.count(escaped) >= 4
    assert escaped in pages["form errors"].get_data(as_text=True)
    assert pages["form errors"].status_code == 422 and pages["missing job"].status_code == 404


# -- CSRF and the API token -------------------------------------------------------------------------------

def test_forms_need_the_session_csrf_token(client, app, heartbeat, db_session):
    heartbeat()
    data = {"instruction": "a", "query": "b", "multipliers": "10", "layer_modes": ["all"]}
    assert client.post("/", data=data).status_code == 400
    csrf_token(client)  # the client now has a session
    assert client.post("/", data={**data, "csrf_token": "forged"}).status_code == 400
    other = app.test_client()
    stolen = csrf_token(other)
    assert client.post("/", data={**data, "csrf_token": stolen}).status_code == 400  # another session's token
    job_id = add_job(db_session, status=JobStatus.queued)
    assert client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": "forged"}).status_code == 400
    assert db_session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 1
    assert db_session.get(Job, job_id, populate_existing=True).status is JobStatus.queued
    assert client.post("/", data={**data, "csrf_token": csrf_token(client)}).status_code == 303


def test_api_token_is_required_and_only_in_the_header(clean_db, redis_namespace, heartbeat):
    heartbeat()
    token = "tok-" + uuid.uuid4().hex
    client = make_test_app(clean_db, redis_namespace, API_TOKEN=token).test_client()
    refused = [
        client.get("/api/jobs"),
        client.post("/api/jobs", json=BODY),
        client.get("/api/jobs", headers={"Authorization": "Bearer wrong-" + token}),
        client.get("/api/jobs", headers={"Authorization": "Bearer " + token[:-1]}),
        client.get("/api/jobs", headers={"Authorization": "Bearer"}),
        client.get("/api/jobs", headers={"Authorization": token}),
        client.get("/api/jobs", headers={"Authorization": "Basic " + token}),
        client.get("/api/jobs", query_string={"token": token}),
        client.get("/api/jobs", query_string={"access_token": token}),
        client.get("/api/runs.csv", query_string={"api_token": token}),
        client.post("/api/jobs", json=BODY, query_string={"access_token": token}),
        client.post("/api/jobs/1/cancel", data={"access_token": token}),
    ]
    for resp in refused:
        assert resp.status_code == 401 and resp.mimetype == PROBLEM
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        assert token not in resp.get_data(as_text=True)
    assert client.get("/api/jobs").get_json()["errors"][0]["field"] == "Authorization"
    ok = {"Authorization": f"Bearer {token}"}
    assert client.get("/api/jobs", headers=ok).get_json()["items"] == []  # nothing was submitted above
    assert client.post("/api/jobs", json=BODY, headers=ok).status_code == 202
    doc = client.get("/api/openapi.json").get_json()
    assert doc["security"] == [{"bearer": []}] and token not in json.dumps(doc)


# -- secrets ---------------------------------------------------------------------------------------

def test_configured_secrets_never_leak(clean_db, redis_namespace, heartbeat, monkeypatch, caplog, db_session):
    """Distinctive secrets set everywhere; none appears in logs, the database, bodies, exports or docs."""
    from shared.settings import get_settings

    secrets = {"hf": "hf_" + uuid.uuid4().hex, "api": "api-" + uuid.uuid4().hex,
               "key": "key-" + uuid.uuid4().hex, "password": "pw" + uuid.uuid4().hex}
    monkeypatch.setenv("HF_TOKEN", secrets["hf"])
    monkeypatch.setenv("HUGGINGFACE_TOKEN", secrets["hf"])
    get_settings.cache_clear()
    caplog.set_level(logging.DEBUG)
    for name in ("sqlalchemy", "celery", "kombu", "werkzeug", "web", "shared", "redis"):
        caplog.set_level(logging.DEBUG, logger=name)  # libraries that set their own levels log too
    heartbeat()
    # Trust authentication ignores the password; it still travels through every setting and engine.
    db_url = clean_db.replace("postgresql+psycopg://postgres@", f"postgresql+psycopg://postgres:{secrets['password']}@")
    app = make_test_app(db_url, redis_namespace, API_TOKEN=secrets["api"], SETTINGS={"web.secret_key": secrets["key"]})
    assert app.extensions["instaboost"].settings["hf.token"] == secrets["hf"]
    auth = {"Authorization": f"Bearer {secrets['api']}"}
    client = app.test_client()
    seen = []

    def keep(resp):
        seen.append(resp.get_data(as_text=True) + "\n" + str(resp.headers))
        return resp

    job_id = keep(client.post("/api/jobs", json=BODY, headers=auth)).get_json()["id"]
    keep(client.post("/api/jobs", json={**BODY, "query": "", "seed": "x"}, headers=auth))
    keep(client.post("/api/jobs", json={**BODY, "model": "unknown-model"}, headers=auth))
    keep(client.post("/api/jobs", json={**BODY, "hf_token": "x"}, headers=auth))
    keep(client.post("/api/jobs", data=b"{bad", content_type="application/json", headers=auth))
    keep(client.post("/api/jobs", json=BODY, headers={"Authorization": "Bearer nope"}))
    keep(client.get("/api/jobs/99999", headers=auth))
    lifecycle.mark_running(db_session, job_id, "worker-1")
    lifecycle.record_run(db_session, job_id, "original", multiplier=1, layers="none", output_text="Roma")
    lifecycle.mark_failed(db_session, job_id, "boom: the model ran out of memory")
    for path in (f"/api/jobs/{job_id}", "/api/jobs", "/api/runs", "/api/runs.csv", "/api/models", "/api/openapi.json"):
        assert keep(client.get(path, headers=auth)).status_code == 200, path
    for path in ("/", "/jobs", f"/jobs/{job_id}", "/runs", "/runs.csv", "/healthz", "/static/style.css"):
        assert keep(client.get(path)).status_code == 200, path
    token = csrf_token(client)
    keep(client.post("/", data={"csrf_token": token, "instruction": "a", "query": "", "multipliers": "0"}))
    # A broker that cannot be reached, and a database that cannot be reached, with the password in its URL.
    down = make_test_app(db_url.replace("127.0.0.1:5432", "127.0.0.1:1"), redis_namespace,
                         REDIS_URL="redis://127.0.0.1:1/0", API_TOKEN=secrets["api"]).test_client()
    health = keep(down.get("/healthz"))
    assert health.status_code == 503 and health.get_json()["database"].startswith("unreachable")
    keep(down.post("/api/jobs", json=BODY, headers=auth))
    unreachable = keep(down.get("/jobs"))
    assert unreachable.status_code == 503 and unreachable.headers["Retry-After"]

    dump = db_session.execute(text("SELECT (SELECT coalesce(json_agg(j), '[]') FROM jobs j)::text || "
                                   "(SELECT coalesce(json_agg(r), '[]') FROM runs r)::text")).scalar_one()
    assert "Roma" in dump and "out of memory" in dump  # the dump holds the data we wrote
    haystacks = {"logs": caplog.text, "database": dump, **{f"response {i}": s for i, s in enumerate(seen)}}
    loggers = {r.name for r in caplog.records}
    assert {"shared.store.submission", "web.errors"} <= loggers and any(n.startswith("sqlalchemy") for n in loggers), \
        f"the log check would prove nothing: {loggers}"
    for name, hay in haystacks.items():
        for kind, secret in secrets.items():
            assert secret not in hay, f"{kind} secret leaked into {name}"
    get_settings.cache_clear()


# -- limits and headers -------------------------------------------------------------------------------

def test_request_size_limits(clean_db, redis_namespace, heartbeat, db_session):
    heartbeat()
    client = make_test_app(clean_db, redis_namespace, SETTINGS={"limits.max_request_bytes": 2000}).test_client()
    resp = client.post("/api/jobs", json={**BODY, "query": "x" * 5000})
    assert resp.status_code == 413 and resp.mimetype == PROBLEM
    assert resp.get_json()["errors"][0]["field"] == "body"
    token = csrf_token(client)
    resp = client.post("/", data={"csrf_token": token, "instruction": "a", "query": "x" * 5000,
                                  "multipliers": "10", "layer_modes": ["all"]})
    assert resp.status_code == 413 and resp.mimetype == "text/html"
    assert "too large" in resp.get_data(as_text=True)
    assert db_session.execute(text("SELECT count(*) FROM jobs")).scalar_one() == 0
    ok = client.post("/", data={"csrf_token": token, "instruction": "a", "query": "b", "multipliers": "10",
                                "layer_modes": ["all"]})
    assert ok.status_code == 303  # just under the limit is fine


def test_every_response_carries_security_headers(client, db_session):
    job_id = add_job(db_session, outputs={"original": "x"})
    responses = [client.get("/"), client.get(f"/jobs/{job_id}"), client.get("/api/jobs"), client.get("/api/nope"),
                 client.get("/api/runs.csv"), client.get("/healthz"), client.get("/static/job.js"),
                 client.get("/jobs/0"), client.post("/api/jobs", data="x", content_type="text/plain")]
    for resp in responses:
        resp.close()  # ends the streamed export (and its database transaction)
        assert resp.headers["X-Content-Type-Options"] == "nosniff", resp
        assert resp.headers["X-Frame-Options"] == "DENY", resp
        assert resp.headers["Referrer-Policy"] == "same-origin", resp
        assert "frame-ancestors 'none'" in resp.headers["Content-Security-Policy"], resp
    html_csp = responses[0].headers["Content-Security-Policy"]
    assert "default-src 'self'" in html_csp and "script-src" not in html_csp  # no inline scripts allowed
    assert responses[2].headers["Content-Security-Policy"].startswith("default-src 'none'")
