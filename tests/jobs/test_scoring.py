"""Scores on every run, on the real default model: the scorers on hand-made outputs, perplexity under the
unboosted model, and a job whose runs store their scores (checks pass/fail) and export them in the CSV."""

from __future__ import annotations

import csv
import io
import random

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.evaluation.scorers import COLUMNS, score_output
from shared.job_request import JobRequest
from shared.settings import load_settings
from shared.store.tables import Job, Run
from tests.fixtures.model import make_request

FLUENT = "The capital of France is Paris, a large city on the river Seine known for its museums and cafes."
INSTRUCTION = "Always answer in one short paragraph and never use bullet points or numbered lists."


def test_a_repeated_line_scores_as_repetitive_and_not_fluent():
    loop = "\n".join(f"{i}. Stay healthy" for i in range(14, 40))
    s = score_output(loop, instruction="Write everything in lowercase.", query="Give me health tips.")
    assert s["repetitive"] and s["repeated_ngram_share"] >= 0.3 and s["longest_repeat_words"] >= 20
    assert s["fluency"] < 0.5
    fluent = score_output(FLUENT, instruction="Answer briefly.", query="What is the capital of France?")
    assert not fluent["repetitive"] and fluent["fluency"] == 2.0


def test_a_copied_instruction_is_caught():
    copied = f"Sure. {INSTRUCTION} Paris is the capital."
    s = score_output(copied, instruction=INSTRUCTION, query="What is the capital of France?")
    assert s["copied"] and s["copy_run_words"] >= 6 and s["fluency"] < 1.0
    clean = score_output(FLUENT, instruction=INSTRUCTION, query="What is the capital of France?")
    assert not clean["copied"]


def test_perplexity_of_a_fluent_sentence_is_below_that_of_its_words_shuffled(fast_engine):
    words = FLUENT.split()
    shuffled = " ".join(random.Random(0).sample(words, len(words)))
    req = make_request(multiplier=10.0, instruction="Answer briefly.", query="What is the capital of France?")
    fluent, salad, empty = fast_engine.perplexity([req, req, req], [FLUENT, shuffled, ""])
    assert 1.0 <= fluent < salad and empty is None
    assert fluent < 25 < salad  # fluent text keeps q_ppl = 1, word salad is penalized
    # Batched and one by one agree, and the boost in the request is ignored (the plain model scores).
    alone = fast_engine.perplexity([make_request(multiplier=1.0, instruction="Answer briefly.",
                                                 query="What is the capital of France?")], [FLUENT])[0]
    assert alone == pytest.approx(fluent, rel=1e-3)


def test_the_worker_scores_every_run_and_hit_eos_marks_truncation(fast_engine):
    from worker.scoring import score_results

    req = make_request(multiplier=1.0, instruction="Answer in lowercase.", query="Name a colour.", max_new_tokens=3)
    results = fast_engine.generate([req])
    case = JobRequest.from_dict({"instruction": "Answer in lowercase.", "query": "Name a colour.",
                                 "checks": [{"type": "lowercase"}]}).case()
    (s,) = score_results(fast_engine, [req], results, cases=case)
    assert set(COLUMNS) <= set(s)
    assert s["perplexity"] is not None and s["follows"] is not None and s["checks_total"] == 1
    assert s["truncated"] is (results[0].finish_reason == "length")



def test_a_job_with_checks_stores_pass_fail_and_scores_appear_in_the_csv(client, clean_db):
    from worker.jobs.delivery import execute_job

    req = JobRequest.from_dict({"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
                                "max_new_tokens": 12, "multipliers": [10], "layer_modes": ["all"],
                                "checks": [{"type": "not_contains", "value": "xyzzy"}, {"type": "lowercase"}],
                                "ifeval": ["punctuation:no_comma"]})
    with session_scope(clean_db) as s:
        job = Job(model=req.model, params=req.to_params(), progress_total=len(req.variants()))
        s.add(job)
        s.flush()
        job_id = job.id
    assert execute_job(job_id, "pytest@host", db_url=clean_db,
                       settings=load_settings(overrides={"database.url": clean_db})) == "succeeded"
    with session_scope(clean_db) as s:
        runs = list(s.scalars(select(Run).where(Run.job_id == job_id).order_by(Run.id)))
        stored = [(r.variant, r.finish_reason, dict(r.scores)) for r in runs]
    assert [v for v, _, _ in stored] == ["original", "all_x10"]
    for variant, finish, scores in stored:
        assert finish in ("stop", "length")
        assert scores["checks_total"] == 3 and isinstance(scores["follows"], bool)
        assert scores["checks_passed"] >= 1  # "xyzzy" is never generated
        assert scores["perplexity"] is not None and 0 <= scores["fluency"] <= 2

    body = client.get(f"/api/jobs/{job_id}").get_json()
    assert body["runs"][0]["scores"]["checks_total"] == 3
    page = client.get(f"/jobs/{job_id}").get_data(as_text=True)
    assert 'data-score="fluency"' in page and 'data-score="follows"' in page

    resp = client.get(f"/api/runs.csv?job_id={job_id}")
    rows = list(csv.DictReader(io.StringIO(resp.get_data(as_text=True))))
    assert len(rows) == 2
    for column in (*COLUMNS, "finish_reason"):
        assert column in rows[0], column
    by_variant = {r["variant"]: r for r in rows}
    for variant, _, scores in stored:
        row = by_variant[variant]
        assert row["follows"] == str(scores["follows"]) and row["checks_total"] == "3"
        assert float(row["fluency"]) == pytest.approx(scores["fluency"])
        assert float(row["perplexity"]) == pytest.approx(scores["perplexity"])


def test_a_job_asking_for_the_judge_stores_its_verdict_from_a_local_stand_in(fast_engine, monkeypatch):
    from tests.unit.test_evaluation_judge import Server, StandIn
    import threading

    from worker.scoring import judge_config, score_results

    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    server = Server(("127.0.0.1", 0), StandIn)
    server.mode, server.requests = "ok", []
    server.content = '{"follows": "yes", "fluency": 2, "reason": "French and fluent."}'
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    try:
        settings = load_settings(overrides={"judge.url": f"http://127.0.0.1:{server.server_address[1]}/v1",
                                           "judge.model": "stand-in"}, env={}, dotenv=None)
        req = make_request(multiplier=5.0, max_new_tokens=6)
        results = fast_engine.generate([req])
        (s,) = score_results(fast_engine, [req], results, perplexity=False, judge=judge_config(settings))
        assert s["judge_follows"] is True and s["judge_fluency"] == 2.0 and s["judge_reason"] == "French and fluent."
        assert server.requests[0]["body"]["model"] == "stand-in"
        assert results[0].text in server.requests[0]["body"]["messages"][1]["content"]
        server.mode = "500"  # a failing judge is recorded, never fails the scoring
        (s,) = score_results(fast_engine, [req], results, perplexity=False, judge=judge_config(settings))
        assert s["judge_follows"] is None and s["judge_reason"].startswith("judge failed")
    finally:
        server.shutdown()
        server.server_close()
    assert judge_config(load_settings(env={}, dotenv=None)) is None  # off by default
    with pytest.raises(Exception) as exc:
        JobRequest.from_dict({"instruction": "a", "query": "b", "judge": True}, load_settings(env={}, dotenv=None))
    assert "judge" in str(exc.value)
