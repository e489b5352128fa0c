"""Security of the web app: CSV injection, escaping, CSRF, the API token, secrets, size limits, headers."""

from __future__ import annotations

import csv
import inspect
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
from tests.helpers import PROBLEM

PAYLOADS = ["<script>alert('x')</script>", '"><img src=x onerror=alert(1)>']
OPEN_MESSAGE = "no web.api_token set: the service is open to anyone who can reach it"
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
# Spreadsheets skip blanks and line breaks before a formula.
LEADING = [" =1+1", "\n=cmd|' /C calc'!A0", "\r\n+1+1", "  \t@SUM(A1:A2)", "\u00a0-2+3"]


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


@pytest.mark.parametrize("path", ["/api/runs.csv", "/runs.csv", "/api/jobs.csv", "/jobs.csv"])
def test_every_csv_neutralizes_formulas_after_leading_blanks_and_line_breaks(client, db_session, path):
    outputs = {"original": LEADING[0], **{f"all_x{i}": d for i, d in enumerate(LEADING[1:], 1)}}
    add_job(db_session, instruction=LEADING[1], query=LEADING[2], outputs=outputs)
    resp = client.get(path)
    assert resp.status_code == 200 and resp.mimetype == "text/csv"
    cells = {cell for row in csv.reader(io.StringIO(resp.get_data(as_text=True), newline="")) for cell in row}
    for dangerous in LEADING:
        assert "'" + dangerous in cells and dangerous not in cells, dangerous


def test_the_sweep_table_csv_is_neutralized():
    from shared.calibration import table_csv

    text_ = table_csv({"table": [{"setting": " =1+1", "multiplier": 3.0, "split": "validation"}], "best": None})
    assert list(csv.reader(io.StringIO(text_)))[1][:2] == ["' =1+1", "3.0"]


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


# -- the token protects every route, pages included (issue 9) ------------------------------------------------

# The only routes open with a token set: liveness, readiness, the login form (and logout), static files and the
# API's description. Everything else reads or changes jobs and must refuse an anonymous caller.
OPEN_ENDPOINTS = {"health.healthz", "health.readyz", "auth.login", "auth.logout", "static", "api.openapi"}
FORM = {"instruction": "a", "query": "b", "multipliers": "10", "layer_modes": ["all"], "max_new_tokens": "8"}


def routes(app, job_id: int) -> list[tuple[str, str, str]]:
    """Return (endpoint, method, url) for every route of app that is not open, with job_id filled in."""
    out = []
    for rule in app.url_map.iter_rules():
        if rule.endpoint in OPEN_ENDPOINTS:
            continue
        assert set(rule.arguments) <= {"job_id", "completion_id", "model", "file_id", "batch_id", "sweep_id",
                                       "response_id"}, \
            f"teach this test the arguments of {rule.rule}"
        url = rule.rule.replace("<job_id>", str(job_id)).replace("<completion_id>", str(job_id))
        url = url.replace("<sweep_id>", "1").replace("<response_id>", f"resp_{job_id}")
        url = url.replace("<path:model>", "m").replace("<file_id>", "file-x").replace("<batch_id>", "batch_x")
        out += [(rule.endpoint, method, url) for method in sorted(rule.methods - {"HEAD", "OPTIONS"})]
    return out


def made_up(url: str) -> bool:
    """Return True for URLs naming an object routes() made up (no such file, batch, model, sweep; the job is no chat,
    no response)."""
    return ("/sweeps/1" in url
            or url.startswith("/v1/") and any(x in url for x in ("/file-x", "/batch_x", "/models/m", "/completions/",
                                                                "/responses/resp_")))


def call(client, method: str, url: str, csrf: str, headers: dict | None = None):
    """Send the request a caller of this route would send: JSON to the API, a form with a CSRF token elsewhere."""
    if method == "GET":
        return client.get(url, headers=headers)
    if url.startswith(("/api", "/v1")):
        return client.open(url, method=method, json=BODY if url == "/api/jobs" else {}, headers=headers)
    return client.post(url, data={**FORM, "csrf_token": csrf}, headers=headers)


def test_a_configured_token_protects_every_route_pages_included(clean_db, redis_namespace, heartbeat, db_session):
    heartbeat()
    token = "tok-" + uuid.uuid4().hex
    app = make_test_app(clean_db, redis_namespace, API_TOKEN=token)
    secret = "private-" + uuid.uuid4().hex
    job_id = add_job(db_session, instruction=secret, status=JobStatus.queued, outputs={"original": secret})
    table = routes(app, job_id)
    endpoints = {e for e, _, _ in table}
    assert {"pages.index", "pages.submit", "pages.job", "pages.job_status", "pages.cancel", "pages.job_list",
            "pages.runs", "export.runs_csv", "api.submit", "api.cancel", "api.runs_csv"} <= endpoints, endpoints

    def jobs() -> list[tuple]:
        return db_session.execute(text("SELECT id, status FROM jobs")).all()

    anonymous = app.test_client()
    # The login page hands out a CSRF token for the session: a valid token alone must not open anything.
    csrf = csrf_token(anonymous, "/login")
    for endpoint, method, url in table:
        resp = call(anonymous, method, url, csrf)
        assert resp.status_code == 401, (endpoint, method, resp.status_code)
        assert secret not in resp.get_data(as_text=True), endpoint
        resp.close()  # a streamed body (CSV, SSE) ends inside its request context
    assert jobs() == [(job_id, "queued")]  # nothing was submitted or cancelled
    # A browser asking for a page is sent to the login form, and back afterwards.
    resp = anonymous.get("/jobs?status=queued", headers={"Accept": "text/html"})
    assert resp.status_code == 302 and resp.headers["Location"] == "/login?next=/jobs?status%3Dqueued"

    # 'Authorization: Bearer' opens every route, pages included (scripts read pages and the CSV).
    bearer = app.test_client()
    auth = {"Authorization": f"Bearer {token}"}
    for endpoint, method, url in table:
        if method == "GET":
            resp = call(bearer, method, url, "", auth)
            assert resp.status_code == 200 or (resp.status_code == 404 and made_up(url)), (endpoint, resp.status_code)
            resp.close()
    assert secret in bearer.get(f"/jobs/{job_id}/status.json", headers=auth).get_data(as_text=True)
    assert secret in bearer.get("/runs.csv", headers=auth).get_data(as_text=True)
    assert bearer.post("/", data=FORM, headers=auth).status_code == 303  # no CSRF token needed with the header

    # A browser logs in once; its signed session cookie then opens the pages, and forms still need CSRF.
    browser = app.test_client()
    resp = browser.post("/login", data={"csrf_token": csrf_token(browser, "/login"), "token": token,
                                        "next": f"/jobs/{job_id}"})
    assert resp.status_code == 303 and resp.headers["Location"] == f"/jobs/{job_id}"
    for endpoint, method, url in table:
        if method == "GET":
            resp = browser.get(url)
            assert resp.status_code == 200 or (resp.status_code == 404 and made_up(url)), endpoint
            resp.close()
    assert secret in browser.get("/runs.csv").get_data(as_text=True)
    assert browser.post(f"/jobs/{job_id}/cancel", data={}).status_code == 400  # CSRF still applies
    assert browser.post(f"/jobs/{job_id}/cancel", data={"csrf_token": csrf_token(browser)}).status_code == 303
    assert db_session.get(Job, job_id, populate_existing=True).status is JobStatus.cancelled


def session_cookie(resp) -> str:
    return next(h for h in resp.headers.getlist("Set-Cookie") if h.startswith("session="))


def test_login_is_csrf_protected_constant_time_and_logs_no_secret(clean_db, redis_namespace, caplog):
    token = "tok-" + uuid.uuid4().hex
    app = make_test_app(clean_db, redis_namespace, API_TOKEN=token)
    client = app.test_client()
    caplog.set_level(logging.DEBUG)
    page = client.get("/login")
    assert page.status_code == 200 and 'type="password"' in page.get_data(as_text=True)
    # Without the form's CSRF token the right token is still refused (login CSRF).
    assert client.post("/login", data={"token": token}).status_code == 400
    wrong = client.post("/login", data={"csrf_token": csrf_token(client, "/login"), "token": token + "x"})
    assert wrong.status_code == 401 and 'id="login-error"' in wrong.get_data(as_text=True)
    assert client.get("/jobs").status_code == 401
    # An open redirect through ?next= is not possible: anything but a local path goes to /.
    for target in ("https://evil.example/", "//evil.example/x", "/\\evil.example", "/\t/evil.example",
                   "javascript:alert(1)"):
        client = app.test_client()
        resp = client.post("/login", data={"csrf_token": csrf_token(client, "/login"), "token": token,
                                           "next": target})
        assert resp.status_code == 303 and resp.headers["Location"] == "/", target
    cookie = session_cookie(resp)
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie  # plain http here
    assert client.get("/jobs").status_code == 200
    # Logging out is a CSRF-protected POST; afterwards the session opens nothing.
    assert client.post("/logout").status_code == 400
    assert client.post("/logout", data={"csrf_token": csrf_token(client)}).status_code == 303
    assert client.get("/jobs").status_code == 401
    # The token is compared in constant time and never logged, right or wrong.
    import web.auth

    assert "compare_digest" in inspect.getsource(web.auth)
    assert token not in caplog.text and "failed login" in caplog.text


def test_session_cookie_is_secure_over_https_and_dies_with_the_token(clean_db, redis_namespace):
    token = "tok-" + uuid.uuid4().hex

    def login(app, base_url="http://localhost"):
        client = app.test_client()
        page = client.get("/login", base_url=base_url).get_data(as_text=True)
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
        resp = client.post("/login", data={"csrf_token": csrf, "token": token}, base_url=base_url,
                           headers={"Referer": base_url + "/login"})
        assert resp.status_code == 303
        return client, session_cookie(resp)

    app = make_test_app(clean_db, redis_namespace, API_TOKEN=token)
    assert "Secure" in login(app, "https://localhost")[1]  # auto: Secure when served over https
    always = make_test_app(clean_db, redis_namespace, API_TOKEN=token,
                           SETTINGS={"web.session_cookie_secure": "true"})
    assert "Secure" in login(always)[1]  # a TLS proxy in front: always Secure
    # A session signed for the old token opens nothing once the token changes (same secret key).
    key = {"web.secret_key": "k" * 32}
    client, _ = login(make_test_app(clean_db, redis_namespace, API_TOKEN=token, SETTINGS=key))
    rotated = make_test_app(clean_db, redis_namespace, API_TOKEN=token + "-new", SETTINGS=key)
    jar = client.get_cookie("session")
    other = rotated.test_client()
    other.set_cookie("session", jar.value)
    assert other.get("/jobs").status_code == 401
    # A login lasts web.session_hours (12 by default) from the moment it happened, however busy the session since.
    assert client.get("/jobs").status_code == 200
    with client.session_transaction() as sess:
        sess["auth_at"] -= 12 * 3600 + 1
    assert client.get("/jobs").status_code == 401
    with pytest.raises(Exception, match="web.session_cookie_secure"):
        make_test_app(clean_db, redis_namespace, SETTINGS={"web.session_cookie_secure": "sometimes"})


def test_open_mode_is_announced_and_stays_open(clean_db, redis_namespace, caplog):
    caplog.set_level(logging.WARNING)
    client = make_test_app(clean_db, redis_namespace).test_client()
    assert OPEN_MESSAGE in caplog.text
    assert client.get("/jobs").status_code == 200 and client.get("/runs.csv").status_code == 200
    assert client.get("/login").status_code == 302  # nothing to log in to
    caplog.clear()
    make_test_app(clean_db, redis_namespace, API_TOKEN="tok-" + uuid.uuid4().hex)
    assert OPEN_MESSAGE not in caplog.text


# -- cross-site requests (issue 9) ---------------------------------------------------------------------------

EVIL = {"Origin": "https://evil.example"}


def test_cross_site_requests_cannot_cancel_or_submit(client, heartbeat, db_session):
    """No token (make run's default): what another site's page can make a browser send changes nothing."""
    heartbeat()
    job_id = add_job(db_session, status=JobStatus.queued)
    cancel = f"/api/jobs/{job_id}/cancel"
    attempts = {
        "form-encoded": client.post(cancel, data={"x": "1"}),  # a browser old enough to send no Origin
        "form-encoded, cross-site Origin": client.post(cancel, data={"x": "1"}, headers=EVIL),
        "multipart": client.post(cancel, data={"f": (io.BytesIO(b"x"), "x.txt")}, headers=EVIL),
        "text/plain": client.post(cancel, data="{}", content_type="text/plain"),
        "no body, cross-site Origin": client.post(cancel, headers=EVIL),
        "no body, Sec-Fetch-Site": client.post(cancel, headers={"Sec-Fetch-Site": "cross-site"}),
        "no body, same-site subdomain": client.post(cancel, headers={"Sec-Fetch-Site": "same-site"}),
        "JSON, cross-site Origin": client.post(cancel, json={}, headers=EVIL),
        "JSON, Origin null": client.post(cancel, json={}, headers={"Origin": "null"}),
        "submit as text/plain": client.post("/api/jobs", data=json.dumps(BODY), content_type="text/plain",
                                            headers=EVIL),
        "submit JSON cross-site": client.post("/api/jobs", json=BODY, headers=EVIL),
        "page form cross-site": client.post(f"/jobs/{job_id}/cancel", headers=EVIL,
                                            data={"csrf_token": csrf_token(client)}),
        "page submit cross-site": client.post("/", headers=EVIL, data={**FORM, "csrf_token": csrf_token(client)}),
    }
    for name, resp in attempts.items():
        assert resp.status_code in (403, 415), (name, resp.status_code)
        if resp.mimetype == PROBLEM:  # the API says what to send instead
            body = resp.get_json()
            assert body["errors"][0]["field"] in ("Origin", "Content-Type", "Sec-Fetch-Site"), name
            assert "application/json" in body["detail"] or "origin" in body["detail"].lower(), (name, body)
    assert db_session.execute(text("SELECT id, status FROM jobs")).all() == [(job_id, "queued")]

    # What non-browser clients and this app's own pages send still works.
    same_origin = client.post(cancel, json={}, headers={"Origin": "http://localhost", "Sec-Fetch-Site": "same-origin"})
    assert same_origin.status_code == 200 and same_origin.get_json()["status"] == "cancelled"
    again = add_job(db_session, status=JobStatus.queued)
    # curl -X POST -H 'Content-Type: application/json' .../cancel: no body at all
    assert client.post(f"/api/jobs/{again}/cancel", content_type="application/json").status_code == 200
    third = add_job(db_session, status=JobStatus.queued)
    # curl -X POST -H 'Authorization: Bearer ...' .../cancel (a browser cannot add this header cross-site)
    assert client.post(f"/api/jobs/{third}/cancel", headers={"Authorization": "Bearer x"}).status_code == 200
    assert client.post("/api/jobs", json=BODY).status_code == 202


def test_trusted_origins_may_call_the_api(clean_db, redis_namespace, db_session):
    app = make_test_app(clean_db, redis_namespace, SETTINGS={"web.trusted_origins": "https://ui.example"})
    client = app.test_client()
    job_id = add_job(db_session, status=JobStatus.queued)
    assert client.post(f"/api/jobs/{job_id}/cancel", json={}, headers=EVIL).status_code == 403
    resp = client.post(f"/api/jobs/{job_id}/cancel", json={}, headers={"Origin": "https://ui.example",
                                                                        "Sec-Fetch-Site": "cross-site"})
    assert resp.status_code == 200


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
    assert app.extensions["instaboost"].settings.hf.token == secrets["hf"]
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
    # With a token the pages and their export are closed to anonymous callers...
    for path in ("/", "/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/status.json", "/runs", "/runs.csv"):
        refused = keep(client.get(path))
        assert refused.status_code == 401 and "Roma" not in refused.get_data(as_text=True), path
    for path in ("/healthz", "/readyz", "/login", "/static/style.css"):
        assert keep(client.get(path)).status_code in (200, 503), path
    # ...a wrong token at the login form is refused, and a browser logs in with the right one.
    keep(client.post("/login", data={"csrf_token": csrf_token(client, "/login"), "token": "wrong-" + secrets["api"]}))
    login = keep(client.post("/login", data={"csrf_token": csrf_token(client, "/login"), "token": secrets["api"]}))
    assert login.status_code == 303
    for path in ("/", "/jobs", f"/jobs/{job_id}", f"/jobs/{job_id}/status.json", "/runs", "/runs.csv"):
        assert keep(client.get(path)).status_code == 200, path
    token = csrf_token(client)
    keep(client.post("/", data={"csrf_token": token, "instruction": "a", "query": "", "multipliers": "0"}))
    keep(client.post("/logout", data={"csrf_token": token}))
    # A broker that cannot be reached, and a database that cannot be reached, with the password in its URL.
    down = make_test_app(db_url.replace("127.0.0.1:5432", "127.0.0.1:1"), redis_namespace,
                         REDIS_URL="redis://127.0.0.1:1/0", API_TOKEN=secrets["api"]).test_client()
    health = keep(down.get("/healthz"))
    assert health.status_code == 503 and health.get_json()["database"].startswith("unreachable")
    keep(down.post("/api/jobs", json=BODY, headers=auth))
    unreachable = keep(down.get("/jobs", headers=auth))
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


def test_every_secret_setting_and_url_password_is_scrubbed(clean_db, redis_namespace):
    """The scrub list is the settings declared secret (judge.api_key was missing), plus passwords in URLs."""
    from shared.settings import SETTINGS
    from web.problems import scrub

    values = {s.name: f"{s.name}-{uuid.uuid4().hex}" for s in SETTINGS if s.secret}
    assert "judge.api_key" in values
    values["judge.url"] = "https://judge:j%40dge-pw@judge.example/v1"
    app = make_test_app(clean_db, redis_namespace, SETTINGS=values)
    with app.app_context():
        text_ = scrub(" | ".join([*values.values(), "j@dge-pw"]))
    assert [s for s in values.values() if s in text_] == [] and "dge-pw" not in text_, text_


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


def test_serve_says_when_the_service_is_open(tmp_path):
    """`instaboost serve` announces open mode at start (here it then stops: no Redis), and not with a token."""
    import subprocess
    import sys

    from tests.system.test_serve import free_port, serve_env

    def stderr(*args, **env) -> str:
        return subprocess.run([sys.executable, "-m", "worker.cli.serve", "--port", str(free_port()), *args],
                              cwd=tmp_path, env=serve_env(REDIS_URL="redis://127.0.0.1:1/0", **env),
                              capture_output=True, text=True, timeout=60).stderr

    assert OPEN_MESSAGE in stderr()
    token = "tok-" + uuid.uuid4().hex
    closed = stderr(INSTABOOST_WEB_API_TOKEN=token)
    assert OPEN_MESSAGE not in closed and token not in closed
    # Listening beyond loopback without a token: only loopback Host names are answered, and serve says so.
    assert "INSTABOOST_WEB_ALLOWED_HOSTS" not in stderr()
    assert "INSTABOOST_WEB_ALLOWED_HOSTS" in stderr("--host", "0.0.0.0")


# -- DNS rebinding: the Host allowlist (issue 18) ------------------------------------------------------------

def test_open_mode_answers_only_loopback_host_names(clean_db, redis_namespace, heartbeat, db_session):
    """A page on rebind.example whose name now resolves to 127.0.0.1 reaches the service under its own Host."""
    heartbeat()
    client = make_test_app(clean_db, redis_namespace).test_client()
    job_id = add_job(db_session, status=JobStatus.queued)
    rebound = {"Host": "rebind.example:8000"}
    api = client.get("/api/jobs", headers=rebound)
    assert api.status_code == 400 and api.mimetype == PROBLEM
    assert api.get_json()["errors"][0]["field"] == "Host" and "web.allowed_hosts" in api.get_json()["detail"]
    # Same-origin for the browser (the page and the API share the rebound name): refused all the same.
    cancel = client.post(f"/api/jobs/{job_id}/cancel", json={},
                         headers={**rebound, "Origin": "http://rebind.example:8000", "Sec-Fetch-Site": "same-origin"})
    assert cancel.status_code == 400
    v1 = client.get("/v1/models", headers=rebound)
    assert v1.status_code == 400 and v1.get_json()["error"]["param"] == "Host"  # OpenAI's shape under /v1
    assert client.get("/jobs", headers=rebound).status_code == 400
    assert client.get("/healthz", headers=rebound).status_code == 200  # probes name the host by address
    assert db_session.execute(text("SELECT status FROM jobs")).scalar_one() == "queued"
    for host in ("localhost", "localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST."):
        assert client.get("/api/jobs", headers={"Host": host}).status_code == 200, host


def test_allowed_hosts_setting_and_a_token_widen_the_default(clean_db, redis_namespace):
    named = make_test_app(clean_db, redis_namespace, SETTINGS={"web.allowed_hosts": "boost.lan,.corp.example"})
    client = named.test_client()
    for host, status in (("boost.lan:8000", 200), ("gpu.corp.example", 200), ("corp.example", 200),
                         ("localhost", 400), ("evilcorp.example", 400)):
        assert client.get("/api/jobs", headers={"Host": host}).status_code == status, host
    token = "tok-" + uuid.uuid4().hex
    closed = make_test_app(clean_db, redis_namespace, API_TOKEN=token).test_client()
    # With a token, a rebound page has no credential to send: any Host is answered (compose, proxies).
    assert closed.get("/api/jobs", headers={"Host": "web:8000", "Authorization": f"Bearer {token}"}).status_code == 200
    anyhost = make_test_app(clean_db, redis_namespace, SETTINGS={"web.allowed_hosts": "*"}).test_client()
    assert anyhost.get("/api/jobs", headers={"Host": "10.0.0.7:8000"}).status_code == 200
    from shared.errors import ValidationError

    with pytest.raises(ValidationError, match="web.allowed_hosts"):  # a URL where a host name belongs
        make_test_app(clean_db, redis_namespace, SETTINGS={"web.allowed_hosts": "http://boost.lan"})
