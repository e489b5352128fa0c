"""Calibration sweeps in the service: the API and its problem bodies, the stop rule driving jobs step by step
(in-process on the real model), the page with its chart, the CSVs, and `multipliers: "recommended"`."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from shared.settings import load_settings
from shared.store.tables import Job, JobStatus, Run, Sweep, utcnow


CASES = {
    "lower": {"instruction": "Write everything in lowercase letters only.", "query": "Name two colours.",
              "checks": [{"type": "lowercase"}]},
    "short": {"instruction": "Answer in at most five words.", "query": "What is the sun?",
              "ifeval": [{"id": "length_constraints:number_words", "kwargs": {"num_words": 6,
                                                                               "relation": "less than"}}]},
}
SMALL = {"cases": CASES, "grid": [1, 3, 5], "layer_modes": ["all"], "max_new_tokens": 4, "fluency_floor": 0}


def drive(db_url: str, sweep_id: int, limit: int = 20) -> list[int]:
    """Run the sweep's queued jobs in this process (as a worker would) until none is left; return their ids."""
    from worker.jobs.delivery import execute_job

    settings = load_settings(overrides={"database.url": db_url})
    ran = []
    from shared.db import session_scope

    for _ in range(limit):
        with session_scope(db_url) as s:
            queued = list(s.scalars(select(Job.id).where(Job.sweep_id == sweep_id, Job.status == JobStatus.queued)
                                    .order_by(Job.id)))
        if not queued:
            return ran
        for job_id in queued:
            assert execute_job(job_id, "pytest@host", db_url=db_url, settings=settings) == "succeeded"
            ran.append(job_id)
    raise AssertionError("the sweep kept creating jobs")


@pytest.mark.parametrize("body, field", [
    ({}, "pack"),
    ({"pack": "nope"}, "pack"),
    ({"pack": "default", "cases": CASES}, "pack"),
    ({"pack": "default", "grid": [1]}, "grid"),
    ({"pack": "default", "grid": "fibonacci"}, "grid"),
    ({"pack": "default", "layer_modes": ["sideways"]}, "layer_modes[0]"),
    ({"pack": "default", "head_fractions": [0]}, "head_fractions[0]"),
    ({"pack": "default", "fluency_floor": 3}, "fluency_floor"),
    ({"pack": "default", "limit": 1}, "limit"),
    ({"pack": "default", "colour": "blue"}, "colour"),
    ({"pack": "default", "target_mass": 1.5}, "target_mass"),
    ({"pack": "default", "scope": "decode"}, "scope"),
    ({"pack": "default", "scopes": ["all", "decode"]}, "scopes[1]"),
    ({"pack": "default", "scopes": "generated"}, "scopes"),
    ({"pack": "default", "scopes": []}, "scopes"),
    ({"pack": "default", "scope": "prompt", "scopes": ["generated"]}, "scopes"),
    ({"pack": "default", "target_masses": [0.3, 1.5]}, "target_masses[1]"),
    ({"pack": "default", "target_masses": ["0.3"]}, "target_masses[0]"),
    ({"pack": "default", "target_masses": [None, 0.3], "grid": [0.5, 3]}, "target_masses"),
    ({"pack": "default", "target_mass": 0.3, "target_masses": [0.5]}, "target_masses"),
    ({"cases": {"only": CASES["lower"]}}, "cases"),
    ({"cases": {"bad name!": CASES["lower"], "b": CASES["short"]}}, "cases.bad name!"),
    ({"cases": {"a": {"instruction": " ", "query": "q"}, "b": CASES["short"]}}, "cases.a.instruction"),
    ({"cases": {"a": {**CASES["lower"], "checks": [{"type": "lowercas"}]}, "b": CASES["short"]}}, "cases.a.checks[0]"),
])
def test_bad_sweep_requests_get_a_problem_body_naming_the_field(client, heartbeat, body, field):
    heartbeat("smollm2-135m-instruct")
    resp = client.post("/api/sweeps", json=body)
    assert resp.status_code == 422, resp.get_data(as_text=True)
    problem = resp.get_json()
    assert resp.mimetype == "application/problem+json" and problem["status"] == 422
    assert field in [e["field"] for e in problem["errors"]], problem


def test_bad_dimension_values_say_how_to_fix_them(client, heartbeat):
    heartbeat("smollm2-135m-instruct")
    problem = client.post("/api/sweeps", json={"pack": "default", "scopes": ["decode"], "target_masses": [2],
                                               "head_fractions": [0]}).get_json()
    by_field = {e["field"]: e["message"] for e in problem["errors"]}
    assert {"scopes[0]", "target_masses[0]", "head_fractions[0]"} <= set(by_field), problem
    assert "all, generated, prompt" in by_field["scopes[0]"] and "(0, 1)" in by_field["target_masses[0]"]
    problem = client.post("/api/sweeps", json={"pack": "default", "target_masses": [0.3],
                                               "grid": [0.5, 3]}).get_json()
    assert "drop the grid's M below 1 (0.5)" in problem["errors"][0]["message"], problem


def test_unknown_sweeps_are_404_and_the_api_document_describes_sweeps(client):
    for path in ("/api/sweeps/999", "/api/sweeps/999.csv", "/api/sweeps/abc"):
        resp = client.get(path)
        assert resp.status_code == 404 and resp.mimetype == "application/problem+json", path
    doc = client.get("/api/openapi.json").get_json()
    for path in ("/api/sweeps", "/api/sweeps/{sweep_id}", "/api/sweeps/{sweep_id}.csv", "/api/jobs.csv"):
        assert path in doc["paths"], path
    assert "SweepRequest" in doc["components"]["schemas"]


def test_a_sweep_without_a_served_model_is_refused(client, heartbeat):
    resp = client.post("/api/sweeps", json={"pack": "default"})  # no heartbeat at all: maybe transient
    assert resp.status_code == 503 and resp.headers["Retry-After"]
    heartbeat("another-model")  # workers are up, none serves the model: a bad request
    resp = client.post("/api/sweeps", json={"pack": "default"})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "model"


def test_a_small_sweep_walks_the_grid_step_by_step_and_recommends(client, heartbeat, clean_db):
    heartbeat("smollm2-135m-instruct")
    resp = client.post("/api/sweeps", json=SMALL)
    assert resp.status_code == 202, resp.get_data(as_text=True)
    sweep = resp.get_json()
    assert resp.headers["Location"].endswith(f"/api/sweeps/{sweep['id']}")
    assert sweep["status"] == "running" and sweep["current_multiplier"] == 3.0 and sweep["jobs"]["total"] == 2
    ran = drive(clean_db, sweep["id"])
    assert len(ran) == 4  # 2 cases x M = 3, 5 (each job's original is the shared M = 1 baseline)

    done = client.get(f"/api/sweeps/{sweep['id']}").get_json()
    assert done["status"] == "succeeded" and done["jobs"] == {"total": 4, "succeeded": 4}
    assert {(r["multiplier"], r["split"]) for r in done["table"]} == {(m, s) for m in (1.0, 3.0, 5.0)
                                                                      for s in ("validation", "test")}
    rec = done["recommendation"]
    assert rec["multiplier"] in (1.0, 3.0, 5.0) and rec["layers"] == "all" and rec["reason"]
    with __import__("shared.db", fromlist=["session_scope"]).session_scope(clean_db) as s:
        cells = s.execute(select(Job.case_name, Job.sweep_multiplier)).all()
        assert sorted(cells) == sorted((c, m) for c in CASES for m in (3.0, 5.0))  # each cell once
        assert all(r.scores and r.scores.get("fluency") is not None for r in s.scalars(select(Run)))
        row = s.get(Sweep, sweep["id"])
        assert row.recommended_multiplier == rec["multiplier"]

    table = list(csv.DictReader(io.StringIO(client.get(f"/api/sweeps/{sweep['id']}.csv").get_data(as_text=True))))
    assert len(table) == 6 and sum(r["recommended"] == "True" for r in table) == 2

    page = client.get(f"/sweeps/{sweep['id']}").get_data(as_text=True)
    assert 'id="sweep-chart"' in page and "<svg" in page and 'id="recommended-band"' in page
    assert f'href="/jobs/{ran[0]}"' in page  # per-case drill-down to the jobs
    assert f"/jobs.csv?sweep_id={sweep['id']}" in page

    wide = list(csv.DictReader(io.StringIO(client.get(f"/api/jobs.csv?sweep_id={sweep['id']}")
                                           .get_data(as_text=True))))
    assert len(wide) == 4 and {r["test_case"] for r in wide} == set(CASES)
    assert list(wide[0])[:8] == ["test_case", "run_index", "original_length", "all_layers_length",
                                 "middle_layers_length", "original_output", "all_layers_output",
                                 "middle_layers_output"]
    assert sorted(r["run_index"] for r in wide) == ["0", "0", "1", "1"]
    assert all(r["original_fluency"] and r["all_layers_fluency"] for r in wide)


def test_the_stop_rule_ends_a_sweep_at_the_baseline_when_no_output_is_fluent_enough(client, heartbeat, clean_db):
    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json={**SMALL, "fluency_floor": 2}).get_json()
    drive(clean_db, sweep["id"])
    done = client.get(f"/api/sweeps/{sweep['id']}").get_json()
    # 4-token answers are truncated (fluency <= 1.5 < 2): the walk stops at M = 1 after the first step.
    assert done["status"] == "succeeded" and done["jobs"]["total"] == 2 and done["recommendation"] is None
    assert "no recommendation" in done["choices"][0]["reason"]


def test_the_sweep_form_starts_a_sweep_and_shows_errors(client, heartbeat):
    heartbeat("smollm2-135m-instruct")
    page = client.get("/sweeps").get_data(as_text=True)
    assert 'id="sweep-form"' in page and 'name="pack"' in page
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    bad = client.post("/sweeps", data={"csrf_token": token, "source": "pack", "pack": "default", "grid": "1",
                                       "layer_modes": "all", "head_fractions": "1", "fluency_floor": "1"})
    assert bad.status_code == 422 and "at least one M other than 1" in bad.get_data(as_text=True)
    ok = client.post("/sweeps", data={"csrf_token": token, "source": "upload", "pack": "default", "grid": "1, 3",
                                      "layer_modes": "all", "head_fractions": "1", "fluency_floor": "1",
                                      "max_new_tokens": "4",
                                      "cases_file": (io.BytesIO(b"- {name: a, instruction: Be brief., query: Hi}\n"
                                                                b"- {name: b, instruction: Be brief., query: Yo}\n"),
                                                     "cases.yaml")},
                     content_type="multipart/form-data")
    assert ok.status_code == 303 and "/sweeps/" in ok.headers["Location"]


def test_the_recovery_loop_advances_a_sweep_whose_worker_died_before_advancing_it(client, heartbeat, clean_db,
                                                                             redis_namespace):
    from worker.jobs.recovery import JobRecovery
    from worker.jobs.delivery import run_delivery
    from worker.jobs.runner import Options

    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json=SMALL).get_json()
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace})
    from shared.db import session_scope

    with session_scope(clean_db) as s:
        step1 = list(s.scalars(select(Job.id).where(Job.sweep_id == sweep["id"])))
    for job_id in step1:  # the jobs finish, but their worker "dies" before advancing the sweep
        assert run_delivery(job_id, Options(worker="gone@host", settings=settings, db_url=clean_db)) == "succeeded"
    assert client.get(f"/api/sweeps/{sweep['id']}").get_json()["current_multiplier"] == 3.0
    done = JobRecovery(settings, db_url=clean_db).run_pass()
    assert done["sweeps"] == [sweep["id"]]
    after = client.get(f"/api/sweeps/{sweep['id']}").get_json()
    assert after["current_multiplier"] == 5.0 and after["jobs"]["total"] == 4
    assert JobRecovery(settings, db_url=clean_db).run_pass()["sweeps"] == []  # nothing to do until step 2 ends
    with session_scope(clean_db) as s:
        assert s.scalar(select(Job.enqueued_at).where(Job.sweep_id == sweep["id"], Job.sweep_multiplier == 5.0)
                        .limit(1)) is not None  # the new step's messages were sent


def test_cancelling_a_sweep_cancels_its_queued_jobs(client, heartbeat):
    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json=SMALL).get_json()
    resp = client.post(f"/api/sweeps/{sweep['id']}/cancel", json={})
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert resp.get_json()["jobs"] == {"total": 2, "cancelled": 2}
    assert client.post(f"/api/sweeps/{sweep['id']}/cancel", json={}).status_code == 200  # repeat: a no-op


def test_multipliers_recommended_takes_the_latest_finished_sweep_or_says_there_is_none(client, heartbeat, clean_db):
    heartbeat("smollm2-135m-instruct")
    base = {"instruction": "Answer only in French.", "query": "Hi?", "max_new_tokens": 4}
    resp = client.post("/api/jobs", json={**base, "multipliers": "recommended"})
    assert resp.status_code == 422 and resp.get_json()["errors"][0]["field"] == "multipliers"
    assert "no" in resp.get_json()["detail"] or "none" in resp.get_json()["detail"]
    # Whether "recommended" works now is a live fact of /api/models; the document always describes it.
    assert client.get("/api/models").get_json()["models"][0]["recommended"] is False

    from shared.db import session_scope
    from shared.store.tables import utcnow

    with session_scope(clean_db) as s:
        for m, layers, hf, cfg in ((3.0, "all", 1.0, {}),  # the later one wins, with its scope
                                   (7.0, "middle", 0.5, {"params": {"scope": "generated", "target_mass": None}})):
            s.add(Sweep(status="succeeded", model="smollm2-135m-instruct", pack="ifeval", config=cfg, stage_index=3,
                        recommended_multiplier=m, recommended_layers=layers, recommended_head_fraction=hf,
                        finished_at=utcnow()))
            s.commit()
    job = client.post("/api/jobs", json={**base, "multipliers": "recommended"}).get_json()
    assert job["params"]["multipliers"] == [7.0] and job["params"]["layer_modes"] == ["middle"]
    assert job["params"]["head_boost_percentage"] == 50.0 and job["params"]["scope"] == "generated"
    job = client.post("/api/jobs", json={**base, "multipliers": ["recommended"], "layer_modes": ["all"],
                                         "scope": "all"}).get_json()
    assert job["params"]["multipliers"] == [7.0] and job["params"]["layer_modes"] == ["all"]
    assert job["params"]["scope"] == "all"
    assert client.get("/api/models").get_json()["models"][0]["recommended"] is True
    with session_scope(clean_db) as s:  # a sweep that stored its whole setting (scope and target mass columns)
        s.add(Sweep(status="succeeded", model="smollm2-135m-instruct", pack="ifeval", config={}, stage_index=3,
                    recommended_multiplier=5.0, recommended_layers="middle", recommended_head_fraction=0.5,
                    recommended_scope="prompt", recommended_target_mass=0.4, finished_at=utcnow()))
        s.commit()
    job = client.post("/api/jobs", json={**base, "multipliers": "recommended"}).get_json()
    assert {k: job["params"][k] for k in ("multipliers", "layer_modes", "head_boost_percentage", "scope",
                                          "target_mass")} == {"multipliers": [5.0], "layer_modes": ["middle"],
                                                              "head_boost_percentage": 50.0, "scope": "prompt",
                                                              "target_mass": 0.4}
    assert client.get("/api/models").get_json()["models"][0]["recommendation"]["target_mass"] == 0.4
    schema = client.get("/api/openapi.json").get_json()["components"]["schemas"]["JobRequest"]
    assert {"const": "recommended"} in schema["properties"]["multipliers"]["anyOf"]
    # The form takes it too.
    page = client.get("/").get_data(as_text=True)
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    resp = client.post("/", data={"csrf_token": token, **base, "max_new_tokens": "4", "multipliers": "recommended",
                                  "layer_modes": ["all"], "head_boost_percentage": "100", "scope": "all",
                                  "target_mass": ""})
    assert resp.status_code == 303
    job = client.get("/api/jobs/" + resp.headers["Location"].rsplit("/", 1)[1]).get_json()
    # The form sends every field at its default: "recommended" takes the whole setting there.
    assert (job["params"]["multipliers"], job["params"]["layer_modes"], job["params"]["head_boost_percentage"],
            job["params"]["scope"], job["params"]["target_mass"]) == ([5.0], ["middle"], 50.0, "prompt", 0.4)


def test_sweeps_pass_the_queued_job_cap_and_the_running_sweeps_bound(clean_db, redis_namespace, heartbeat):
    """Sweep steps count against limits.max_queued_jobs like jobs: a sweep that does not fit is refused (429,
    nothing stored), a later step that does not fit waits; limits.max_running_sweeps bounds running sweeps."""
    from shared.db import session_scope
    from shared.store import sweeps
    from tests.fixtures.store import make_test_app

    heartbeat("smollm2-135m-instruct")
    limits = {"limits.max_queued_jobs": 3, "limits.max_running_sweeps": 2}
    app = make_test_app(clean_db, redis_namespace, SETTINGS=limits)
    client, settings = app.test_client(), app.extensions["instaboost"].settings
    job = {"instruction": "Be brief.", "query": "Hi?", "max_new_tokens": 4, "multipliers": [3]}
    first = client.post("/api/sweeps", json=SMALL)
    assert first.status_code == 202 and first.get_json()["jobs"]["queued"] == 2
    refused = client.post("/api/sweeps", json=SMALL)  # 2 more jobs would make 4 > 3
    assert refused.status_code == 429 and "limits.max_queued_jobs" in refused.get_json()["detail"]
    assert refused.headers["Retry-After"]
    assert len(client.get("/api/sweeps").get_json()["items"]) == 1  # nothing of it was stored
    normal = client.post("/api/jobs", json=job)
    assert normal.status_code == 202, normal.get_json()  # the sweep left room for it: 3 queued
    assert client.post("/api/jobs", json=job).status_code == 429

    # The first step ends (its jobs are cancelled here); the next one (2 jobs) does not fit beside 2 queued: it waits.
    sweep_id = first.get_json()["id"]
    cancel_step(client, sweep_id)
    assert client.post("/api/jobs", json=job).status_code == 202
    with session_scope(clean_db) as s:
        assert sweeps.advance(s, sweep_id, settings) == "running"
    waiting = client.get(f"/api/sweeps/{sweep_id}").get_json()
    assert waiting["status"] == "running" and waiting["current_multiplier"] == 3.0 and waiting["jobs"]["total"] == 2
    assert client.post(f"/api/jobs/{normal.get_json()['id']}/cancel", json={}).status_code == 200
    with session_scope(clean_db) as s:  # room again: the step starts on the next try
        assert sweeps.advance(s, sweep_id, settings) == "running"
    moved = client.get(f"/api/sweeps/{sweep_id}").get_json()
    assert moved["current_multiplier"] == 5.0 and moved["jobs"] == {"total": 4, "cancelled": 2, "queued": 2}

    # A third sweep would pass limits.max_running_sweeps (2) even with room in the queue.
    busy = make_test_app(clean_db, redis_namespace, SETTINGS={**limits, "limits.max_queued_jobs": 100,
                                                               "limits.max_running_sweeps": 1}).test_client()
    resp = busy.post("/api/sweeps", json=SMALL)
    assert resp.status_code == 429 and "limits.max_running_sweeps" in resp.get_json()["detail"], resp.get_json()
    assert resp.get_json()["title"] == "Too many running sweeps"


def cancel_step(client, sweep_id: int) -> None:
    """End the sweep's unfinished jobs (cancelled is final: the sweep may move to its next step)."""
    from shared.db import session_scope
    from shared.store import lifecycle

    db_url = client.application.extensions["instaboost"].settings.database.url
    with session_scope(db_url) as s:
        for job_id in list(s.scalars(select(Job.id).where(Job.sweep_id == sweep_id,
                                                          Job.status == JobStatus.queued))):
            lifecycle.cancel_job(s, job_id)


def test_a_step_that_fails_validation_fails_the_sweep_with_its_message(client, heartbeat, clean_db, redis_namespace):
    from worker.jobs.recovery import JobRecovery

    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json=SMALL).get_json()
    cancel_step(client, sweep["id"])
    # A limit lowered since the sweep started: its next step's jobs (max_new_tokens 4) are no longer valid.
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace,
                                        "limits.max_new_tokens": 2})
    assert JobRecovery(settings, db_url=clean_db).run_pass()["sweeps"] == [sweep["id"]]
    failed = client.get(f"/api/sweeps/{sweep['id']}").get_json()
    assert failed["status"] == "failed" and failed["finished_at"], failed
    assert failed["error"].startswith("step M=5 cannot run: ") and "max_new_tokens" in failed["error"], failed["error"]


def test_one_broken_batch_holds_up_neither_the_other_batches_nor_the_sweeps(client, heartbeat, clean_db,
                                                                          redis_namespace):
    from shared.db import session_scope
    from shared.store.tables import Batch
    from worker.jobs.recovery import JobRecovery

    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json=SMALL).get_json()
    cancel_step(client, sweep["id"])
    with session_scope(clean_db) as s:
        # Finished batches (no job left); the broken one's stored line errors lack their fields: finalizing raises.
        for batch_id, line_errors in (("batch_broken1", [{"line": 1}]), ("batch_ok", []),
                                      ("batch_broken2", [{"line": 2}])):
            s.add(Batch(id=batch_id, status="in_progress", endpoint="/v1/chat/completions", input_file_id="file-x",
                        completion_window="24h", request_total=len(line_errors), line_errors=line_errors,
                        created_at=utcnow()))
        s.commit()
    settings = load_settings(overrides={"database.url": clean_db, "redis.namespace": redis_namespace})
    done = JobRecovery(settings, db_url=clean_db).run_pass()
    assert done["batches"] == ["batch_ok"] and done["sweeps"] == [sweep["id"]], done
    assert client.get(f"/api/sweeps/{sweep['id']}").get_json()["current_multiplier"] == 5.0


def test_a_sweep_runs_its_jobs_with_its_scope_and_target_mass(client, heartbeat, db_session):
    """Issue 21: a sweep passes scope and target_mass to every job; each job's original stays unboosted."""
    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json={**SMALL, "scope": "generated", "target_mass": 0.3}).get_json()
    jobs = list(db_session.scalars(select(Job).where(Job.sweep_id == sweep["id"])))
    assert jobs and all((j.params["scope"], j.params["target_mass"]) == ("generated", 0.3) for j in jobs)
    client.post(f"/api/sweeps/{sweep['id']}/cancel", json={})


def test_a_sweep_over_scopes_recommends_a_whole_setting_and_shows_it_side_by_side(client, heartbeat, clean_db):
    """Issue 21: scopes are a sweep dimension; each (case, M, scope) is one job, each scope walks the grid with the
    stop rule, the recommendation names its scope (stored on the sweep), and the page and CSV show a column per
    dimension that varies."""
    from shared.db import session_scope

    heartbeat("smollm2-135m-instruct")
    resp = client.post("/api/sweeps", json={**SMALL, "scopes": ["all", "generated"]})
    assert resp.status_code == 202, resp.get_data(as_text=True)
    sweep = resp.get_json()
    assert sweep["jobs"]["total"] == 4 and sweep["dimensions"] == ["scope"]  # 2 cases x 2 scopes at M = 3
    assert [s["scope"] for s in sweep["settings"]] == ["all", "generated"]
    drive(clean_db, sweep["id"])
    done = client.get(f"/api/sweeps/{sweep['id']}").get_json()
    assert done["status"] == "succeeded" and done["jobs"] == {"total": 8, "succeeded": 8}
    assert {(r["scope"], r["multiplier"]) for r in done["table"] if r["multiplier"] != 1} == {
        (sc, m) for sc in ("all", "generated") for m in (3.0, 5.0)}
    assert {c["scope"] for c in done["choices"]} == {"all", "generated"}
    rec = done["recommendation"]
    assert rec and rec["scope"] in ("all", "generated") and rec["multiplier"] in (1.0, 3.0, 5.0)
    with session_scope(clean_db) as s:
        cells = s.execute(select(Job.case_name, Job.sweep_multiplier, Job.sweep_setting, Job.params)).all()
        assert sorted((c, m, key) for c, m, key, _ in cells) == sorted(
            (c, m, key) for c in CASES for m in (3.0, 5.0) for key in ("", "generated|"))
        assert all(p["scope"] == ("generated" if key else "all") for _, _, key, p in cells)
        row = s.get(Sweep, sweep["id"])
        assert (row.recommended_multiplier, row.recommended_scope) == (rec["multiplier"], rec["scope"])

    heartbeat("smollm2-135m-instruct")  # again: driving the sweep took longer than a heartbeat lives
    models = client.get("/api/models").get_json()["models"]
    assert models[0]["recommendation"] == {"sweep_id": sweep["id"], "multiplier": rec["multiplier"],
                                           "layers": "all", "head_fraction": 1.0, "scope": rec["scope"],
                                           "target_mass": None, "boilerplate_multiplier": 1.0}
    job = client.post("/api/jobs", json={"instruction": "Be brief.", "query": "Hi?", "max_new_tokens": 4,
                                         "multipliers": "recommended"}).get_json()
    assert (job["params"]["multipliers"], job["params"]["scope"]) == ([rec["multiplier"]], rec["scope"])

    table = list(csv.DictReader(io.StringIO(client.get(f"/api/sweeps/{sweep['id']}.csv").get_data(as_text=True))))
    assert {"layers", "head_fraction", "scope", "target_mass", "boilerplate_multiplier"} <= set(table[0])
    assert {r["scope"] for r in table} == {"all", "generated"}
    page = client.get(f"/sweeps/{sweep['id']}").get_data(as_text=True)
    head = page.split('id="sweep-table"')[1].split("</thead>")[0]
    assert '<th class="dim-scope">Scope</th>' in head and "Target mass" not in head  # only what varies
    assert page.count('<td class="dim-scope">generated</td>') >= 4
    assert f"scope {rec['scope']}" in page.split('id="recommendation"')[1].split("</p>")[0]


def test_a_sweep_over_target_masses_runs_one_job_per_target_and_the_form_takes_them(client, heartbeat, clean_db):
    from shared.db import session_scope

    heartbeat("smollm2-135m-instruct")
    sweep = client.post("/api/sweeps", json={**SMALL, "target_masses": [None, 0.3]}).get_json()
    assert sweep["jobs"]["total"] == 4 and sweep["dimensions"] == ["target_mass"]
    with session_scope(clean_db) as s:
        targets = sorted((j.params["target_mass"] or 0, j.sweep_setting) for j in
                         s.scalars(select(Job).where(Job.sweep_id == sweep["id"])))
    assert targets == [(0, ""), (0, ""), (0.3, "all|0.3"), (0.3, "all|0.3")]
    client.post(f"/api/sweeps/{sweep['id']}/cancel", json={})
    page = client.get("/sweeps").get_data(as_text=True)
    assert 'id="scopes-generated"' in page and 'name="target_masses"' in page
    token = page.split('name="csrf_token" value="')[1].split('"')[0]
    form = {"csrf_token": token, "source": "pack", "pack": "default", "grid": "1, 3", "layer_modes": "all",
            "head_fractions": "1", "fluency_floor": "1", "max_new_tokens": "4", "limit": "2"}
    bad = client.post("/sweeps", data={**form, "scopes": ["all", "prompt"], "target_masses": "none, 1.5"})
    assert bad.status_code == 422 and "a target mass is a number in (0, 1)" in bad.get_data(as_text=True)
    ok = client.post("/sweeps", data={**form, "scopes": ["all", "prompt"], "target_masses": "none, 0.4"})
    assert ok.status_code == 303, ok.get_data(as_text=True)
    made = client.get("/api/sweeps/" + ok.headers["Location"].rsplit("/", 1)[1]).get_json()
    assert [(s["scope"], s["target_mass"]) for s in made["settings"]] == [
        ("all", None), ("prompt", None), ("all", 0.4), ("prompt", 0.4)]
    assert made["jobs"]["total"] == 8 and made["dimensions"] == ["scope", "target_mass"]
    client.post(f"/api/sweeps/{made['id']}/cancel", json={})
