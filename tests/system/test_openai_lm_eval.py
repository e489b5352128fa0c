"""lm-evaluation-harness's `local-chat-completions` against the live server, with a boost in every request.

Offline: no dataset download. The task is built here from local data: a JSONL of IFEval-format documents (key,
prompt, instruction_id_list, kwargs) taken from the service's own IFEval pack, the instruction marked
<boost>…</boost> in the prompt, and a task YAML (dataset_path json, data_files the local file) whose
generation_kwargs carry the boost (lm-eval passes them through into the request body, as extra_body would).
Scored by lm-eval's own IFEval verifiers; the run ends with IFEval's four accuracies.
"""

from __future__ import annotations

import json
import textwrap

import pytest

from tests.system.test_openai_api import MODEL, TOKEN, live_server  # noqa: F401  (fixture)

lm_eval = pytest.importorskip("lm_eval")

IDS = ("change_case:english_lowercase", "change_case:english_capital", "punctuation:no_comma")


def ifeval_docs(limit: int = 3) -> list[dict]:
    """IFEval-format documents from the built-in pack's cases whose verifiers take no arguments."""
    from shared.evaluation.cases import load_pack

    docs = []
    for case in load_pack("ifeval"):
        checks = list(case.ifeval)
        if not checks or not {c.id for c in checks} <= set(IDS) or any(d["instruction_id_list"] == [
                c.id for c in checks] for d in docs):
            continue  # one prompt per instruction class
        docs.append({"key": len(docs), "prompt": f"<boost>{case.instruction}</boost>\n\n{case.query}",
                     "instruction_id_list": [c.id for c in checks], "kwargs": [dict(c.kwargs) for c in checks]})
        if len(docs) == limit:
            break
    return docs


def write_task(folder, data_path) -> str:
    (folder / "utils.py").write_text("from lm_eval.tasks.ifeval.utils import agg_inst_level_acc, process_results  "
                                     "# noqa: F401\n")
    (folder / "instaboost_ifeval.yaml").write_text(textwrap.dedent(f"""\
        task: instaboost_ifeval
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {data_path}
        output_type: generate_until
        test_split: test
        num_fewshot: 0
        doc_to_text: prompt
        doc_to_target: 0
        generation_kwargs:
          until: []
          do_sample: false
          temperature: 0.0
          max_gen_toks: 32
          instaboost:
            multiplier: 10
            layers: all
        process_results: !function utils.process_results
        metric_list:
          - metric: prompt_level_strict_acc
            aggregation: mean
            higher_is_better: true
          - metric: inst_level_strict_acc
            aggregation: !function utils.agg_inst_level_acc
            higher_is_better: true
          - metric: prompt_level_loose_acc
            aggregation: mean
            higher_is_better: true
          - metric: inst_level_loose_acc
            aggregation: !function utils.agg_inst_level_acc
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    return "instaboost_ifeval"


def test_lm_eval_local_chat_completions_scores_ifeval_with_a_boost(live_server, tmp_path, monkeypatch, pg_url):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", TOKEN)  # local-chat-completions sends it as the bearer token
    import nltk

    from shared.evaluation.verifiers import install_punkt

    install_punkt(nltk)  # lm-eval's IFEval module would try to download punkt_tab otherwise
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    docs = ifeval_docs()
    assert len(docs) >= 3
    data = tmp_path / "ifeval.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    task = write_task(tmp_path, data)
    base = live_server[0]
    results = simple_evaluate(
        model="local-chat-completions",
        model_args={"model": MODEL, "base_url": f"{base}/v1/chat/completions", "num_concurrent": 1,
                    "max_retries": 1, "tokenized_requests": False, "timeout": 120},
        tasks=[task], task_manager=TaskManager(include_path=str(tmp_path)), apply_chat_template=True,
        log_samples=True)
    scores = results["results"][task]
    for metric in ("prompt_level_strict_acc,none", "prompt_level_loose_acc,none"):
        assert 0.0 <= scores[metric] <= 1.0
    samples = results["samples"][task]
    assert len(samples) == len(docs) and all(s["resps"][0][0].strip() for s in samples)
    print(f"\nlm-eval instaboost_ifeval (M=10, {len(docs)} prompts): "
          f"prompt_level_strict_acc={scores['prompt_level_strict_acc,none']:.3f} "
          f"prompt_level_loose_acc={scores['prompt_level_loose_acc,none']:.3f}")
    # Every request was a stored chat job with the instruction boosted.
    from sqlalchemy import select

    from shared.db import session_scope
    from shared.store.tables import Job

    with session_scope(pg_url) as s:
        jobs = list(s.scalars(select(Job).where(Job.kind == "chat").order_by(Job.id.desc()).limit(len(docs))))
    assert len(jobs) == len(docs)
    for job in jobs:
        boosted = [seg for m in job.params["messages"] for seg in m["segments"] if seg[1] is not None]
        assert len(boosted) == 1 and boosted[0][1] == 10.0
