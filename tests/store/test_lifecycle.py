"""The job store: lifecycle transitions, races between processes, idempotent runs (PostgreSQL and SQLite)."""

from __future__ import annotations

import threading
from datetime import timezone

import pytest
from sqlalchemy import func, select

from shared.db import get_sessionmaker
from shared.errors import Conflict, NotFound
from shared.job_request import JobRequest
from shared.settings import load_settings
from shared.store import lifecycle, queries, serialize
from shared.store.tables import ALLOWED, FINAL, Job, JobStatus, Run



@pytest.fixture(params=["postgresql", "sqlite"])
def session(request):
    name = "db_session" if request.param == "postgresql" else "sqlite_session"
    return request.getfixturevalue(name)


def new_job(session, status=JobStatus.queued) -> Job:
    req = JobRequest.from_dict({"instruction": "Be brief.", "query": "Hi", "max_new_tokens": 8},
                               load_settings(env={}, dotenv=None))
    job = Job(status=status, model=req.model, params=req.to_params(), progress_total=len(req.variants()))
    session.add(job)
    session.commit()
    return job


def test_allowed_transitions_are_documented():
    doc = JobStatus.__doc__
    for src, targets in ALLOWED.items():
        for dst in targets:
            line = next(l for l in doc.splitlines() if l.strip().startswith(f"- {src.value} "))
            assert dst.value in doc.split(f"- {src.value} ", 1)[1].split("\n    - ")[0], (src, dst, line)
    assert FINAL == {JobStatus.succeeded, JobStatus.failed, JobStatus.cancelled}


@pytest.mark.parametrize("src", list(JobStatus))
@pytest.mark.parametrize("dst", list(JobStatus))
def test_transition_matrix(db_session, src, dst):
    job = new_job(db_session, src)
    if dst in ALLOWED[src]:
        moved = lifecycle.transition(db_session, job, dst)
        db_session.commit()
        assert moved.status is dst
        assert (moved.finished_at is not None) == (dst in FINAL)
    else:
        with pytest.raises(Conflict) as info:
            lifecycle.transition(db_session, job, dst)
        assert info.value.status == 409 and src.value in info.value.message
        db_session.rollback()
        assert db_session.get(Job, job.id, populate_existing=True).status is src


def test_transition_of_a_missing_job_is_not_found(session):
    with pytest.raises(NotFound):
        lifecycle.transition(session, 424242, JobStatus.running)


def test_timestamps_are_utc_aware(session):
    job = lifecycle.mark_running(session, new_job(session).id, "w1")
    assert job.created_at.tzinfo is not None and job.started_at.utcoffset() == timezone.utc.utcoffset(None)
    assert job.attempts == 1 and job.worker == "w1"


def test_concurrent_start_and_cancel_exactly_one_wins(clean_db):
    maker = get_sessionmaker(clean_db)
    with maker() as s:
        job_id = new_job(s).id
    barrier = threading.Barrier(8)
    results: list[str] = []

    def attempt(i: int):
        with maker() as s:
            barrier.wait()
            try:
                lifecycle.transition(s, job_id, JobStatus.running if i % 2 else JobStatus.cancelled)
                s.commit()
                results.append("won")
            except Conflict:
                s.rollback()
                results.append("conflict")

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(results) == ["conflict"] * 7 + ["won"]


def test_cancel_queued_job_never_runs(session):
    job = new_job(session)
    assert lifecycle.cancel_job(session, job.id).status is JobStatus.cancelled
    assert lifecycle.cancel_job(session, job.id).status is JobStatus.cancelled  # idempotent
    assert lifecycle.mark_running(session, job.id, "w1") is None
    assert lifecycle.job_status(session, job.id) is JobStatus.cancelled


def test_cancel_running_job_stops_at_boundary(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    assert lifecycle.cancel_job(session, job.id).status is JobStatus.cancelling
    assert lifecycle.cancel_requested(session, job.id)
    assert lifecycle.mark_progress(session, job.id, 1) is JobStatus.cancelling
    assert lifecycle.finish_cancel(session, job.id).status is JobStatus.cancelled


def test_cancel_finished_job_conflicts(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    lifecycle.mark_succeeded(session, job.id)
    with pytest.raises(Conflict):
        lifecycle.cancel_job(session, job.id)


def test_redelivery_reclaims_a_running_job(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    again = lifecycle.mark_running(session, job.id, "w2")
    assert again.status is JobStatus.running and again.worker == "w2" and again.attempts == 2


def test_delivery_of_a_cancelling_job_finishes_the_cancel(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    lifecycle.cancel_job(session, job.id)
    assert lifecycle.mark_running(session, job.id, "w2") is None
    assert lifecycle.job_status(session, job.id) is JobStatus.cancelled


def test_record_run_is_idempotent(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    first = lifecycle.record_run(session, job.id, "all_x10", multiplier=10, layers="all", heads={3: [0, 1]},
                            output_text="Bonjour", prompt_tokens=12, output_tokens=3, seconds=0.5)
    second = lifecycle.record_run(session, job.id, "all_x10", multiplier=10, layers="all", output_text="Different")
    assert second.id == first.id and second.output_text == "Bonjour" and first.heads == '{"3":[0,1]}'
    assert session.execute(select(func.count()).select_from(Run)).scalar_one() == 1
    assert session.get(Job, job.id, populate_existing=True).progress_done == 1


def test_concurrent_record_run_keeps_one_row(clean_db):
    maker = get_sessionmaker(clean_db)
    with maker() as s:
        job_id = new_job(s).id
    barrier = threading.Barrier(4)

    def record(i: int):
        with maker() as s:
            barrier.wait()
            lifecycle.record_run(s, job_id, "original", multiplier=1, layers="none", output_text=f"out {i}")

    threads = [threading.Thread(target=record, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    with maker() as s:
        assert s.execute(select(func.count()).select_from(Run).where(Run.job_id == job_id)).scalar_one() == 1


def test_succeeded_job_shows_full_progress_and_runs(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    lifecycle.record_run(session, job.id, "original", multiplier=1, layers="none", output_text="a")
    done = lifecycle.mark_succeeded(session, job.id)
    assert done.progress_done == done.progress_total == 3
    data = serialize.job_to_dict(queries.get_job(session, job.id))
    assert data["finished"] and [r["variant"] for r in data["runs"]] == ["original"]


def test_failed_job_keeps_its_error(session):
    job = new_job(session)
    lifecycle.mark_running(session, job.id, "w1")
    assert lifecycle.mark_failed(session, job.id, "out of memory").error == "out of memory"


def test_deleting_a_job_deletes_its_runs(session):
    job = new_job(session)
    lifecycle.record_run(session, job.id, "original", multiplier=1, layers="none", output_text="a")
    session.delete(session.get(Job, job.id))
    session.commit()
    assert session.execute(select(func.count()).select_from(Run)).scalar_one() == 0


def test_keyset_pagination_visits_every_job_once(session):
    ids = [new_job(session).id for _ in range(7)]
    seen, cursor = [], None
    while True:
        page, cursor = queries.list_jobs(session, {}, 3, cursor)
        seen += [j.id for j in page]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_claim_queued_takes_what_fits_in_delivery_order_and_counts_an_attempt(session):
    jobs = [new_job(session) for _ in range(4)]
    chat = new_job(session)
    chat.kind = "chat"  # interactive: delivered before the job API's jobs
    done = new_job(session, JobStatus.succeeded)
    session.commit()
    offered: list[int] = []

    def take(job: Job) -> bool:
        offered.append(job.id)
        return len(offered) <= 3

    ids = [j.id for j in jobs] + [chat.id, done.id]
    won = lifecycle.claim_queued(session, ids, jobs[0].model, "w1", take)
    assert offered == [chat.id] + [j.id for j in jobs]  # priority step first, then age; never a finished job
    assert [j.id for j in won] == [chat.id, jobs[0].id, jobs[1].id]
    for j in won:
        assert (j.status, j.worker, j.attempts) == (JobStatus.running, "w1", 1) and j.started_at is not None
    assert lifecycle.job_status(session, jobs[2].id) is JobStatus.queued
    # A retried claim whose commit went through returns the jobs it holds, and claims no other job twice.
    again = lifecycle.claim_queued(session, [chat.id, jobs[0].id], jobs[0].model, "w1", lambda j: True)
    assert sorted(j.id for j in again) == sorted([chat.id, jobs[0].id]) and all(j.attempts == 1 for j in again)
    assert lifecycle.claim_queued(session, [chat.id], jobs[0].model, "w2", lambda j: True) == []


def test_concurrent_claims_of_the_same_jobs_never_share_one(clean_db):
    maker = get_sessionmaker(clean_db)
    with maker() as s:
        ids = [new_job(s).id for _ in range(12)]
        model = s.get(Job, ids[0]).model
    barrier = threading.Barrier(4)
    claimed: dict[str, list[int]] = {}

    def claim(worker: str):
        with maker() as s:
            barrier.wait()
            claimed[worker] = [j.id for j in lifecycle.claim_queued(s, ids, model, worker, lambda j: True)]

    threads = [threading.Thread(target=claim, args=(f"w{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    every = [i for got in claimed.values() for i in got]
    assert sorted(every) == sorted(ids) and len(every) == len(set(every))  # each job once, none lost
    with maker() as s:
        rows = s.execute(select(Job.id, Job.worker, Job.attempts).where(Job.id.in_(ids))).all()
    assert all(r.attempts == 1 and r.id in claimed[r.worker] for r in rows)
