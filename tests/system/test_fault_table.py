"""The fault table (bench/faults.py) as tests: each row injects its fault into a real `instaboost serve` on a private
PostgreSQL and Redis while jobs stream in, and must lose and duplicate nothing and meet its own checks.

The rows that take under a minute run in `make test`; redis_down_5min and load_500 are marked faults_slow
(`python -m pytest -m faults_slow`, run by .ci/run after `make test`). Seconds are printed, never asserted.
The table of this run is printed at the end (-s) and written where INSTABOOST_FAULT_TABLE says, if set.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path

import pytest

from bench.fault_rows import FAULTS, Stack
from bench.faults import markdown

RESULTS = []


def _param(fault):
    marks = [pytest.mark.faults_slow] if fault.duration == "slow" else []
    return pytest.param(fault, id=fault.name, marks=marks)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    """A private PostgreSQL cluster and Redis with `instaboost serve` on them, shared by the rows."""
    s = Stack(tmp_path_factory.mktemp("faults"))
    s.scale = 0.5  # shorter streams before and after each fault than the bench's
    try:
        s.start()
        yield s
    finally:
        s.close()
        if RESULTS:
            table = markdown(RESULTS)
            print(f"\nfault table (a job every {s.every} s; fault-free jobs finished within {s.baseline_s} s):\n"
                  + table)
            if os.environ.get("INSTABOOST_FAULT_TABLE"):
                Path(os.environ["INSTABOOST_FAULT_TABLE"]).write_text(
                    json.dumps([asdict(r) for r in RESULTS], indent=2, default=str))


@pytest.mark.parametrize("fault", [_param(f) for f in FAULTS])
def test_fault_row(stack, fault):
    result = fault.run(stack)
    RESULTS.append(result)
    print(f"\n{result.fault}: {asdict(result)}")
    failed = [name for name, held in result.checks.items() if not held]
    assert not failed, f"{result.fault}: {failed}; {result.notes}"
    assert result.lost == 0 and result.duplicated == 0, result
    assert result.succeeded == result.submitted, result
    if result.submitted and fault.name != "load_500":  # load has no fault to be after
        assert result.first_after_s is not None, f"no job submitted after the fault finished: {result}"
