"""Inspect AI's `openai/` provider on the Responses API (and with logprobs on chat completions), running a tiny
eval offline against the live server.

Inspect 0.3.x sends a model it does not know as an OpenAI reasoning model (o-series, gpt-5, codex) to chat
completions unless `responses_api=true` (`-M responses_api=true`) is given; with it every sample is a
POST /v1/responses (store false, include []), plain or streamed. The task is defined here: three samples
from memory, scored with includes().
"""

from __future__ import annotations

import pytest

from tests.system.test_openai_api import MODEL, TOKEN, live_server  # noqa: F401  (fixture)

inspect_ai = pytest.importorskip("inspect_ai")

SAMPLES = [("What is the capital of France? Answer with one word.", "Paris"),
           ("What is 2 + 2? Answer with a number.", "4"),
           ("What colour is the sky on a clear day? Answer with one word.", "blue")]


def tiny_task():
    from inspect_ai import Task
    from inspect_ai.dataset import MemoryDataset, Sample
    from inspect_ai.scorer import includes
    from inspect_ai.solver import generate, system_message

    return Task(dataset=MemoryDataset([Sample(input=q, target=a) for q, a in SAMPLES]),
                solver=[system_message("Answer briefly."), generate()], scorer=includes(), name="instaboost_tiny")


def response_jobs(db_url: str, since: int) -> list[dict]:
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(db_url) as s:
        return [dict(j.params, status=j.status.value) for j in s.scalars(select(Job).where(Job.id > since))]


def last_job_id(db_url: str) -> int:
    from sqlalchemy import func, select

    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(db_url) as s:
        return s.execute(select(func.coalesce(func.max(Job.id), 0))).scalar_one()


@pytest.mark.parametrize("streaming", [False, True], ids=["plain", "streamed"])
def test_inspect_openai_provider_runs_an_eval_on_the_responses_api(live_server, tmp_path, monkeypatch, pg_url,  # noqa: F811
                                                                   streaming):
    from inspect_ai import eval as inspect_eval

    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    monkeypatch.setenv("OPENAI_BASE_URL", live_server[0] + "/v1")
    before = last_job_id(pg_url)
    logs = inspect_eval(tiny_task(), model=f"openai/{MODEL}", model_base_url=live_server[0] + "/v1",
                        model_args={"responses_api": True, "streaming": streaming}, max_tokens=8, temperature=0,
                        log_dir=str(tmp_path), display="none", max_retries=0, fail_on_error=True)
    log = logs[0]
    assert log.status == "success", log.error
    assert len(log.samples) == len(SAMPLES) and all(s.output.completion for s in log.samples)
    accuracy = log.results.scores[0].metrics["accuracy"].value
    assert 0.0 <= accuracy <= 1.0
    print(f"\ninspect (responses_api, streaming={streaming}): accuracy {accuracy:.2f} on {len(SAMPLES)} samples; "
          f"answers {[s.output.completion for s in log.samples]}")
    # Every sample was a stored response job on this server, with Inspect's system message as a system message.
    jobs = response_jobs(pg_url, before)
    assert len(jobs) == len(SAMPLES) and {j["api"] for j in jobs} == {"responses"}
    assert {j["status"] for j in jobs} == {"succeeded"} and {j["stream"] for j in jobs} == {streaming}
    assert all(j["response"]["store"] is False for j in jobs)  # what Inspect sends
    assert all(j["messages"][0]["role"] == "system" for j in jobs)


def test_inspect_with_logprobs_on_chat_completions(live_server, tmp_path, monkeypatch, pg_url):  # noqa: F811
    """`--logprobs --top-logprobs 2` through chat completions: every sample's output carries its logprobs."""
    from inspect_ai import eval as inspect_eval
    from inspect_ai.model import GenerateConfig

    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)
    monkeypatch.setenv("OPENAI_BASE_URL", live_server[0] + "/v1")
    before = last_job_id(pg_url)
    logs = inspect_eval(tiny_task(), model=f"openai/{MODEL}", model_base_url=live_server[0] + "/v1",
                        model_args={"responses_api": False}, max_tokens=4, temperature=0, log_dir=str(tmp_path),
                        display="none", max_retries=0, fail_on_error=True,
                        **GenerateConfig(logprobs=True, top_logprobs=2).model_dump(exclude_none=True))
    log = logs[0]
    assert log.status == "success", log.error
    assert len(log.samples) == len(SAMPLES)
    for s in log.samples:
        lp = s.output.choices[0].logprobs
        assert lp is not None and lp.content, s.output
        assert all(len(t.top_logprobs or []) == 2 for t in lp.content)
    jobs = response_jobs(pg_url, before)
    assert len(jobs) == len(SAMPLES) and {j["kind"] for j in jobs} == {"chat"}
    assert not any(j.get("api") == "responses" for j in jobs)  # chat completions, not the Responses API
    assert {j["logprobs"] for j in jobs} == {2}
