"""worker.jobs.endings.with_db_retry: an unreachable database is retried with backoff, any other error is not."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import OperationalError, ProgrammingError

from worker.jobs.endings import DatabaseUnavailable, with_db_retry


class Session:
    """Counts the rollbacks that drop a dead connection."""

    def __init__(self):
        self.rollbacks = 0

    def rollback(self):
        self.rollbacks += 1


def refused() -> OperationalError:
    return OperationalError("SELECT 1", {}, ConnectionRefusedError("connection refused"))


def test_an_unreachable_database_is_retried_until_it_answers():
    session, calls = Session(), []

    def write(s, value, *, plus):
        calls.append(value)
        if len(calls) < 3:
            raise refused()
        return value + plus

    assert with_db_retry(session, write, 1, plus=2, budget=30) == 3
    assert len(calls) == 3 and session.rollbacks == 2  # each failure dropped its connection


def test_it_gives_up_with_database_unavailable_once_the_next_wait_passes_the_budget():
    session, calls = Session(), []

    def write(s):
        calls.append(1)
        raise refused()

    with pytest.raises(DatabaseUnavailable, match=r"database unreachable for 0 s \(OperationalError\)") as info:
        with_db_retry(session, write, budget=0.3)  # waits 0.25 s once; the next wait (0.5 s) would pass 0.3 s
    assert len(calls) == 2 and session.rollbacks == 2 and info.value.__suppress_context__


@pytest.mark.parametrize("error", [ProgrammingError("SELECT x", {}, Exception("no such column")),
                                   ZeroDivisionError("not the database")])
def test_any_other_error_is_raised_at_once(error):
    session, calls = Session(), []

    def write(s):
        calls.append(1)
        raise error

    with pytest.raises(type(error)):
        with_db_retry(session, write, budget=30)
    assert len(calls) == 1 and session.rollbacks == 0
