"""Server-rendered pages: the form, CSRF, escaping, job and run pages."""

from __future__ import annotations

import html
import re

from markupsafe import escape

from shared.store import lifecycle
from shared.store.tables import Job, JobStatus
from tests.fixtures.store import DEFAULT_MODEL

XSS = "<script>alert('x')</script>"


def csrf_token(client, path="/") -> str:
    return re.search(r'name="csrf_token" value="([^"]+)"', client.get(path).get_data(as_text=True)).group(1)


def form(client, **fields):
    data = {"csrf_token": csrf_token(client), "instruction": "Answer in French.", "query": "Hello?",
            "multipliers": "10", "layer_modes": ["all", "middle"], "max_new_tokens": "8", **fields}
    return client.post("/", data=data)


def test_form_renders_with_stable_ids_and_served_models(client, heartbeat):
    heartbeat(DEFAULT_MODEL, "other-model")
    page = client.get("/").get_data(as_text=True)
    for element_id in ("instruction", "query", "model", "multipliers", "submit", "start_layer", "num_middle_layers",
                       "head_boost_percentage", "seed", "placement", "engine", "max_new_tokens", "temperature",
                       "top_p", "layer_modes-all", "layer_modes-middle"):
        assert f'id="{element_id}"' in page, element_id
    assert '<option value="other-model"' in page and f'<option value="{DEFAULT_MODEL}" selected' in page
    assert "cdn" not in page.lower() and "http://" not in page and "https://" not in page


def test_form_warns_when_no_worker_runs(client):
    assert 'id="workers-warning"' in client.get("/").get_data(as_text=True)


def test_successful_submit_redirects_303_to_the_job(client, heartbeat, db_session):
    heartbeat()
    resp = form(client)
    assert resp.status_code == 303
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    job = db_session.get(Job, job_id)
    assert job.status is JobStatus.queued and job.params["max_new_tokens"] == 8


def test_form_errors_keep_typed_values(client, heartbeat):
    heartbeat()
    resp = form(client, query="  ", multipliers="5, zero", temperature="hot", layer_modes=["middle"],
                instruction='Say "hi" & <b>bye</b>', seed="123")
    assert resp.status_code == 422
    page = resp.get_data(as_text=True)
    assert 'id="query-error"' in page and 'id="multipliers-error"' in page and 'id="temperature-error"' in page
    assert 'id="instruction-error"' not in page
    assert str(escape('Say "hi" & <b>bye</b>')) in page  # kept, escaped
    assert 'value="5, zero"' in page and 'value="hot"' in page and 'value="123"' in page
    assert re.search(r'value="middle" id="layer_modes-middle"\s+checked', page)
    assert not re.search(r'value="all" id="layer_modes-all"\s+checked', page)
    assert "<details id=\"advanced\" open>" in page  # temperature lives there: show it


def test_model_without_worker_is_a_field_error(client, heartbeat):
    # No heartbeat at all may be transient (Redis just restarted, workers starting): 503, still shown on the field.
    resp = form(client)
    assert resp.status_code == 503 and 'id="model-error"' in resp.get_data(as_text=True)
    heartbeat("some-other-model")
    resp = form(client)
    assert resp.status_code == 422 and 'id="model-error"' in resp.get_data(as_text=True)


def test_form_post_without_csrf_token_is_rejected(client, heartbeat):
    heartbeat()
    resp = client.post("/", data={"instruction": "a", "query": "b"})
    assert resp.status_code == 400 and "CSRF" in resp.get_data(as_text=True)
    assert client.get("/api/jobs").get_json()["items"] == []


def test_job_page_escapes_and_compares_side_by_side(client, heartbeat, db_session):
    heartbeat()
    resp = form(client, instruction=XSS, query=XSS)
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    lifecycle.mark_running(db_session, job_id, "worker-1")
    lifecycle.record_run(db_session, job_id, "original", multiplier=1, layers="none", output_text=f"plain {XSS}")
    lifecycle.record_run(db_session, job_id, "all_x10", multiplier=10, layers="all", output_text="boosted")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert XSS not in page and str(escape(XSS)) in page
    assert 'id="job-status"' in page and ">running<" in page
    assert '<meta http-equiv="refresh"' in page  # no-JS fallback while running
    all_block = page.split('id="variant-all_x10"')[1].split('id="variant-middle_x10"')[0]
    assert "plain &lt;script&gt;" in all_block and "boosted" in all_block
    middle_block = page.split('id="variant-middle_x10"')[1]
    assert "pending" in middle_block
    assert 'id="cancel"' in page
    status = client.get(f"/jobs/{job_id}/status.json").get_json()
    assert status["status"] == "running" and len(status["runs"]) == 2


def test_form_accepts_near_equal_multipliers_as_distinct_variants(client, heartbeat, db_session):
    heartbeat()
    resp = form(client, multipliers="2.0000001, 2.0000002", layer_modes=["all"])
    assert resp.status_code == 303
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    assert db_session.get(Job, job_id).progress_total == 3
    lifecycle.record_run(db_session, job_id, "all_x2.0000002", multiplier=2.0000002, layers="all", output_text="b")
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    first = page.split('id="variant-all_x2.0000001"')[1].split('id="variant-all_x2.0000002"')[0]
    second = page.split('id="variant-all_x2.0000002"')[1]
    assert "M = 2.0000001" in first and "pending" in first
    assert "M = 2.0000002" in second and ">b</pre>" in second


def test_job_page_draws_attention_on_the_instruction(client, heartbeat, db_session):
    heartbeat()
    resp = form(client, instruction="Answer in French.", query="Capital of Italy?")
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    lifecycle.mark_running(db_session, job_id, "worker-1")
    mass = {"unboosted": [0.1, 0.2, 0.1, 0.05], "boosted": [0.1, 0.2, 0.6, 0.05]}
    lifecycle.record_run(db_session, job_id, "all_x10", multiplier=10, layers="all", output_text="x", attention_mass=mass)
    lifecycle.record_run(db_session, job_id, "middle_x10", multiplier=10, layers="middle", output_text="y",
                    attention_mass={"boosted": "garbage"})
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    figure = page.split('id="mass-all_x10"')[1].split("</figure>")[0]
    # Four layers across the plot; the boosted line peaks at layer 2, at the top of the 90-pixel box.
    boosted = figure.split('class="mass-boosted" points="')[1].split('"')[0].split()
    assert len(boosted) == 4 and boosted[2].endswith(",4.0")
    assert "mean 0.113" in figure and "mean 0.238" in figure and "layers 0–3" in figure
    assert 'id="mass-middle_x10"' not in page  # a malformed record draws nothing rather than failing


def test_finished_job_page_stops_refreshing(client, db_session):
    job = Job(status=JobStatus.succeeded, model="m", params={"instruction": "i", "query": "q"}, progress_total=1)
    db_session.add(job)
    db_session.commit()
    page = client.get(f"/jobs/{job.id}").get_data(as_text=True)
    assert 'http-equiv="refresh"' not in page and 'id="cancel"' not in page
    assert client.get("/jobs/987654").status_code == 404


def test_cancel_button(client, heartbeat):
    heartbeat()
    job_id = int(form(client).headers["Location"].rsplit("/", 1)[1])
    token = csrf_token(client, f"/jobs/{job_id}")
    resp = client.post(f"/jobs/{job_id}/cancel", data={"csrf_token": token})
    assert resp.status_code == 303
    page = client.get(resp.headers["Location"]).get_data(as_text=True)
    assert ">cancelled<" in page and "Cancelled." in page
    assert client.post(f"/jobs/{job_id}/cancel").status_code == 400  # no CSRF token


def test_jobs_list_filters_and_pages(client, db_session):
    for i in range(4):
        db_session.add(Job(status=JobStatus.failed if i == 0 else JobStatus.queued, model="m",
                           params={"instruction": f"{XSS}{i}", "query": "q"}, progress_total=1))
    db_session.commit()
    page = client.get("/jobs?limit=3").get_data(as_text=True)
    assert page.count("<tr>") == 1 + 3 and 'id="next-page"' in page and XSS not in page
    nxt = html.unescape(re.search(r'id="next-page" href="([^"]+)"', page).group(1))
    assert client.get(nxt).get_data(as_text=True).count("<tr>") == 1 + 1
    failed = client.get("/jobs?status=failed").get_data(as_text=True)
    assert failed.count("<tr>") == 2 and "status-failed" in failed
    assert client.get("/jobs?status=nope").status_code == 422


def test_runs_page_export_link_carries_filters(client, db_session):
    job = Job(status=JobStatus.succeeded, model="m", params={"instruction": "i", "query": "q"}, progress_total=2)
    db_session.add(job)
    db_session.commit()
    lifecycle.record_run(db_session, job.id, "original", multiplier=1, layers="none", output_text=XSS)
    lifecycle.record_run(db_session, job.id, "all_x10", multiplier=10, layers="all", output_text="=HYPERLINK()")
    page = client.get(f"/runs?job_id={job.id}&variant=all_x10").get_data(as_text=True)
    assert XSS not in page
    href = html.unescape(re.search(r'id="export-csv" href="([^"]+)"', page).group(1))
    assert href.startswith("/runs.csv?") and f"job_id={job.id}" in href and "variant=all_x10" in href
    body = client.get(href).get_data(as_text=True)
    assert body.count("\n") == 2 and "'=HYPERLINK()" in body
    assert client.get("/runs").get_data(as_text=True).count("<tr>") == 1 + 2


def test_pages_send_security_headers(client):
    resp = client.get("/jobs")
    assert "default-src 'self'" in resp.headers["Content-Security-Policy"]
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/static/style.css").status_code == 200 and client.get("/static/job.js").status_code == 200


def test_web_never_imports_the_ml_stack(pg_url, redis_namespace):
    import subprocess
    import sys

    # The session's namespace: the app records its database as the owner of the prefix it starts on.
    code = ("import sys; from web import create_app; "
            f"app = create_app({{'DATABASE_URL': {pg_url!r}, 'REDIS_NAMESPACE': {redis_namespace!r}}}); "
            "app.test_client().get('/healthz'); "
            "bad = [m for m in ('torch', 'transformers', 'transformer_lens', 'worker') if m in sys.modules]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


def test_form_takes_scope_and_an_empty_target_mass(client, heartbeat, db_session):
    heartbeat()
    page = client.get("/").get_data(as_text=True)
    assert 'name="target_mass"' in page and 'name="scope"' in page
    resp = form(client, scope="prompt", target_mass="")
    assert resp.status_code == 303
    job_id = int(resp.headers["Location"].rsplit("/", 1)[1])
    params = db_session.get(Job, job_id).params
    assert (params["scope"], params["target_mass"], params["multipliers"]) == ("prompt", None, [10.0])
    resp = form(client, target_mass="0.3")
    params = db_session.get(Job, int(resp.headers["Location"].rsplit("/", 1)[1])).params
    assert (params["target_mass"], params["multipliers"]) == (0.3, [10.0])  # M given: the target comes after it
