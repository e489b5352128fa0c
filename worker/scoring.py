"""Scores for generated outputs, worker side: the cheap text scores, perplexity under the unboosted model, the judge.

``score_results`` is what the worker runs right after a batch of generations (and what ``instaboost
calibrate`` runs): one batched forward pass of the plain model for the perplexities (when asked), then
``shared.evaluation.scorers.score_output`` per output, then the judge per output (when asked).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from shared.evaluation.judge import JudgeError, judge_output
from shared.evaluation.scorers import score_output
from shared.settings import Settings
from shared.spec import GenerationRequest, GenerationResult

log = logging.getLogger("instaboost.scoring")


def judge_config(settings: Settings) -> dict[str, Any] | None:
    """Return the judge's connection settings, or None when no judge is configured."""
    url = str(settings.judge.url or "").strip()
    if not url:
        return None
    return {"url": url, "model": str(settings.judge.model or ""), "api_key": settings.judge.api_key or "",
            "timeout": float(settings.judge.timeout or 60.0)}


def score_results(engine, requests: Sequence[GenerationRequest], results: Sequence[GenerationResult], *,
                  cases: Sequence[Any] | Any = None, perplexity: bool = True, judge: Mapping[str, Any] | None = None,
                  copy_words: int = 6) -> list[dict[str, Any]]:
    """Score each result against its request (and case, for the checks); one dict per result (scorers.COLUMNS)."""
    n = len(results)
    case_list = list(cases) if isinstance(cases, (list, tuple)) else [cases] * n
    ppl: list[float | None] = [None] * n
    if perplexity:
        ppl = engine.perplexity(list(requests), [r.text for r in results])
    out = []
    for req, res, p, case in zip(requests, results, ppl, case_list):
        scores = score_output(res.text, instruction=req.instruction, query=req.query,
                              output_tokens=res.output_tokens, max_new_tokens=req.params.max_new_tokens,
                              hit_eos=res.finish_reason != "length", perplexity=p, case=case, k=copy_words)
        if judge is not None:
            try:
                scores.update(judge_output(req.instruction, req.query, res.text, url=judge["url"],
                                           model=judge["model"], api_key=judge.get("api_key", ""),
                                           timeout=judge.get("timeout", 60.0)))
            except JudgeError as exc:
                log.warning("judge failed: %s", exc.message)
                scores["judge_reason"] = f"judge failed: {exc.message}"[:500]
        out.append(scores)
    return out
