"""`instaboost run-tests` on case files from elsewhere: every case checked up front, nothing finished thrown away."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
LONG_INSTRUCTION = ("Follow these house rules in every answer.\r\n\r\n"
                    + " ".join(f"Rule {i}: keep the tone friendly, cite the policy section, and never promise a "
                               f"refund without a receipt." for i in range(1, 200)))[:6000]
CASES = [
    {"name": "emoji", "instruction": "Answer with one emoji 😂 at the end.", "query": "How are you? 🙂"},
    {"name": "cjk", "instruction": "请只用中文回答。", "query": "東京はどこですか？"},
    {"name": "crlf", "instruction": "Line one of the guidelines.\r\nLine two: be brief.\r\n", "query": "Hi.\r\nBye."},
    {"name": "long-guidelines", "instruction": LONG_INSTRUCTION, "query": "Can I return shoes?"},
]
TOO_LONG = {"name": "past-the-context", "instruction": "Be brief.", "query": "a " * 9999}


def run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "worker.cli", "run-tests", "--no-progress", *args], cwd=cwd, env=ENV,
                          capture_output=True, text=True, timeout=900)


def write_json(path: Path, cases: list[dict]) -> Path:
    # json.dump's default ensure_ascii writes the emoji as the escaped surrogate pair \ud83d\ude02.
    path.write_text(json.dumps(cases), encoding="utf-8")
    assert any("😂" in c["instruction"] for c in cases) <= ("\\ud83d\\ude02" in path.read_text())
    return path


@pytest.mark.slow
def test_a_json_file_from_elsewhere_is_checked_whole_before_any_generation(tmp_path):
    cases = write_json(tmp_path / "cases.json", [*CASES, TOO_LONG])
    res = run("--cases", str(cases), "--max-new-tokens", "3", "--output", "out.csv", cwd=tmp_path)
    assert res.returncode == 2, res.stderr
    assert "case 5 (past-the-context)" in res.stderr and "context" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.csv.part").exists()

    cases = write_json(tmp_path / "cases.json", CASES)
    res = run("--cases", str(cases), "--max-new-tokens", "3", "--output", "out.csv", cwd=tmp_path)
    assert res.returncode == 0, res.stderr
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8")))
    assert [r["test_case"] for r in rows] == [c["name"] for c in CASES]
    assert all(r["error"] == "" and r["original_output"] for r in rows)


@pytest.mark.slow
def test_bad_text_and_bad_cases_are_all_reported_at_once(tmp_path):
    path = tmp_path / "cases.json"
    # A lone surrogate (half an emoji) cannot be tokenized; a case without a query cannot run.
    path.write_text('[{"name": "half", "instruction": "Smile \\ud83d", "query": "Hi"},'
                    ' {"name": "no-query", "instruction": "Be brief."}]', encoding="utf-8")
    res = run("--cases", str(path), cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "half" in res.stderr and "instruction" in res.stderr and "surrogate" in res.stderr
    assert "no-query" in res.stderr and "query" in res.stderr
    jsonl = tmp_path / "cases.jsonl"
    jsonl.write_text("\n".join(json.dumps(c) for c in CASES[:2]) + "\n", encoding="utf-8")
    assert run("--cases", str(jsonl), "--max-new-tokens", "2", "--output", "l.csv", cwd=tmp_path).returncode == 0
    assert len(list(csv.DictReader((tmp_path / "l.csv").open(encoding="utf-8")))) == 2


@pytest.mark.slow
def test_ctrl_c_keeps_the_finished_rows_and_says_how_many_are_missing(tmp_path):
    cases = write_json(tmp_path / "cases.json", [{"name": f"c{i}", "instruction": "Be brief.", "query": f"Count to {i}."}
                                                 for i in range(40)])
    proc = subprocess.Popen([sys.executable, "-m", "worker.cli", "run-tests", "--no-progress", "--cases", str(cases),
                             "--max-new-tokens", "4", "--output", "out.csv"], cwd=tmp_path, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            # A suite started in the background (no job control) inherits SIGINT ignored.
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    part = tmp_path / "out.csv.part"
    deadline = time.monotonic() + 600
    while not (part.exists() and len(part.read_text(encoding="utf-8").splitlines()) >= 3):  # header + 2 rows
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err
    rows = list(csv.DictReader((tmp_path / "out.csv").open(encoding="utf-8")))
    assert 2 <= len(rows) < 40 and not part.exists()
    assert f"wrote the {len(rows)} finished rows of 40" in err and f"({40 - len(rows)} missing)" in err
    assert "Traceback" not in err


@pytest.mark.slow
def test_a_case_that_fails_during_the_run_records_its_error_and_the_run_goes_on(tmp_path, fast_engine):
    from shared.evaluation.cases import Case
    from shared.spec import BoostSpec, GenerationParams
    from worker.cli.run_tests import run_cases

    class FailsOnOneCase:
        """The real engine, with a fault injected on one case's generation (after the up-front check passed)."""

        def __getattr__(self, name):
            return getattr(fast_engine, name)

        def generate(self, requests, **kw):
            if requests[0].query == "boom":
                raise RuntimeError("CUDA error: an illegal memory access was encountered")
            return fast_engine.generate(requests, **kw)

    cases = [Case("ok-1", "Be brief.", "Hi."), Case("bad", "Be brief.", "boom"), Case("ok-2", "Be brief.", "Bye.")]
    out = tmp_path / "out.csv"
    report = run_cases(FailsOnOneCase(), cases, BoostSpec(multiplier=5.0), GenerationParams(max_new_tokens=3), 1, out,
                       progress=False)
    rows = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [r["test_case"] for r in rows] == ["ok-1", "bad", "ok-2"]
    assert report.rows == 3 and report.failed == 1
    assert "illegal memory access" in rows[1]["error"] and rows[1]["original_output"] == ""
    assert rows[0]["error"] == rows[2]["error"] == "" and rows[2]["all_layers_output"]
