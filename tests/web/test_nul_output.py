"""Issue 9: an output with NUL characters on the job page (marked) and through the API (as produced)."""

from __future__ import annotations

from shared.db import session_scope
from shared.job_request import JobRequest
from shared.store import lifecycle
from shared.store.tables import NUL_MARK, Job, JobStatus

PRODUCED = "a\x00b " + NUL_MARK + " c\x00\x00"
TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?", "max_new_tokens": 4}


def test_output_with_nul_shows_marked_on_the_job_page(client, clean_db):
    req = JobRequest.from_dict(TINY)
    with session_scope(clean_db) as s:
        job = Job(status=JobStatus.running, model=req.model, params=req.to_params(), worker="w@host:1:aa",
                  progress_total=2)
        s.add(job)
        s.flush()
        job_id = job.id
    with session_scope(clean_db) as s:
        lifecycle.record_run(s, job_id, "original", multiplier=1.0, layers="none", output_text=PRODUCED)
    page = client.get(f"/jobs/{job_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "a␀b ␀ c␀␀" in html and "\x00" not in html and "NUL character" in html
    api = client.get(f"/api/jobs/{job_id}")
    assert api.status_code == 200 and api.get_json()["runs"][0]["output_text"] == PRODUCED
