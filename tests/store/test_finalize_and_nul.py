"""Issue 9: a worker finalizes only a job it still owns, and any output (NUL included) is stored on both databases.

Real PostgreSQL and SQLite.
"""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import select

from shared.db import session_scope
from shared.errors import Conflict
from shared.store import export, lifecycle
from shared.store.serialize import job_to_dict, run_to_dict
from tests.fixtures.store import insert_job
from tests.fixtures.store import load_job as load
from shared.store.tables import NUL_MARK, Job, JobStatus, Run

TINY = {"instruction": "Answer only in French.", "query": "What is the capital of Italy?",
        "max_new_tokens": 4, "multipliers": [10], "layer_modes": ["all"]}
ME, OTHER = "old@host:1:aa", "new@host:2:bb"


def new_job(url: str, status: JobStatus = JobStatus.queued, worker: str | None = None, attempts: int = 0,
            **fields) -> int:
    return insert_job(url, {**TINY, **fields}, status, worker, attempts)


# -- owner-checked finalizing --------------------------------------------------------------------------

def test_a_worker_whose_job_was_taken_over_cannot_finish_it(db_session, pg_url):
    job_id = new_job(pg_url, JobStatus.running, worker=OTHER, attempts=2)
    for finish in (lambda: lifecycle.mark_failed(db_session, job_id, "boom", worker=ME),
                   lambda: lifecycle.mark_succeeded(db_session, job_id, worker=ME)):
        with pytest.raises(Conflict, match=f"no longer {ME}'s"):
            finish()
        db_session.rollback()
    lifecycle.mark_progress(db_session, job_id, 1, worker=ME)
    job, _ = load(pg_url, job_id)
    assert (job.status, job.worker, job.error, job.progress_done) == (JobStatus.running, OTHER, None, 0)

    lifecycle.cancel_job(db_session, job_id)  # running -> cancelling; only its owner finishes the cancel
    with pytest.raises(Conflict):
        lifecycle.finish_cancel(db_session, job_id, worker=ME)
    db_session.rollback()
    assert load(pg_url, job_id)[0].status is JobStatus.cancelling
    assert lifecycle.finish_cancel(db_session, job_id, worker=OTHER).status is JobStatus.cancelled

    mine = new_job(pg_url, JobStatus.running, worker=ME)
    assert lifecycle.mark_succeeded(db_session, mine, worker=ME).status is JobStatus.succeeded


# -- NUL in model output -----------------------------------------------------------------------------

PRODUCED = "a\x00b " + NUL_MARK + " c\x00\x00"


@pytest.mark.parametrize("backend", ["postgresql", "sqlite"])
def test_output_with_nul_is_stored_and_given_back_as_produced(backend, request):
    url = request.getfixturevalue("clean_db" if backend == "postgresql" else "clean_sqlite")
    job_id = new_job(url, JobStatus.running, worker=ME)
    with session_scope(url) as s:
        run = lifecycle.record_run(s, job_id, "original", multiplier=1.0, layers="none", output_text=PRODUCED,
                                   output_tokens=5)
        assert run.output_text == "a␀b ␀ c␀␀" and run.output_nul_offsets == [1, 7, 8]
        lifecycle.record_run(s, job_id, "all_x10", multiplier=10.0, layers="all", output_text="plain")
        lifecycle.mark_failed(s, job_id, "the engine said: \x00 oops", worker=ME)  # messages too
    with session_scope(url) as s:
        job = s.get(Job, job_id)
        runs = list(s.scalars(select(Run).where(Run.job_id == job_id).order_by(Run.id)))
        assert [r.produced_text for r in runs] == [PRODUCED, "plain"]
        assert runs[1].output_nul_offsets is None
        assert run_to_dict(runs[0])["output_text"] == PRODUCED  # the API: as produced
        assert job_to_dict(job)["runs"][0]["output_text"] == PRODUCED
        assert job.status is JobStatus.failed and job.error == "the engine said: ␀ oops"
        row = export.export_row(runs[0], job)
        assert row[export.EXPORT_COLUMNS.index("output_text")] == PRODUCED  # the CSV: as produced
        buf = io.StringIO()
        csv.writer(buf).writerow(row)
        assert next(csv.reader(io.StringIO(buf.getvalue())))[export.EXPORT_COLUMNS.index("output_text")] == PRODUCED
