"""/v1/completions and chat logprobs through the real openai SDK and lm-evaluation-harness against a live server
and a real worker: prompt scoring equals the plain model's log-softmax, stored completions keep their logprobs,
streaming carries them, and lm-eval's `local-completions` scores a local multiple-choice task unboosted and boosted.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import requests
import torch

from tests.fixtures.model import plain_model  # noqa: F401  (fixture)
from tests.system.test_openai_api import MODEL, TOKEN, client, live_server, stored_job  # noqa: F401  (fixtures)

DATA = Path(__file__).parent / "data" / "mc_facts.jsonl"
PROMPT = "The capital of France is Paris. The capital of Italy is"
DESCRIPTION = "Answer each question with the correct fact."


def test_echo_scores_the_prompt_as_the_plain_model_does_and_is_stored(client, plain_model, live_server,  # noqa: F811
                                                                     pg_url):
    res = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0, echo=True, logprobs=2)
    [ch] = res.choices
    ids = plain_model.tokenizer(PROMPT, add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        lp = torch.log_softmax(plain_model.model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    want = [lp[j, ids[j + 1]].item() for j in range(len(ids) - 1)]
    assert ch.text == PROMPT and "".join(ch.logprobs.tokens) == PROMPT
    assert ch.logprobs.token_logprobs[0] is None and len(ch.logprobs.token_logprobs) == len(ids)
    assert max(abs(a - b) for a, b in zip(ch.logprobs.token_logprobs[1:], want)) <= 1e-4
    assert ch.logprobs.text_offset[:3] == [0, len(ch.logprobs.tokens[0]),
                                           len(ch.logprobs.tokens[0]) + len(ch.logprobs.tokens[1])]
    assert all(len(t) == 2 for t in ch.logprobs.top_logprobs[1:])
    status, kind, params, runs = stored_job(pg_url, int(res.id.removeprefix("cmpl-")))
    assert (status, kind, [r[0] for r in runs]) == ("succeeded", "completion", ["p0"])
    again = requests.get(f"{live_server[0]}/v1/completions/{res.id}", headers={"Authorization": f"Bearer {TOKEN}"})
    assert again.json()["choices"][0]["logprobs"]["token_logprobs"] == ch.logprobs.token_logprobs
    page = requests.get(f"{live_server[0]}/jobs/{res.id.removeprefix('cmpl-')}",
                        headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert "Token logprobs" in page and 'id="logprobs-p0"' in page
    web, auth = live_server[1].test_client(), {"Authorization": f"Bearer {TOKEN}"}
    job_id = res.id.removeprefix("cmpl-")
    assert web.get("/jobs", headers=auth).status_code == 200
    assert web.get(f"/api/jobs/{job_id}", headers=auth).get_json()["params"]["kind"] == "completion"
    csv_text = web.get(f"/runs.csv?job_id={job_id}", headers=auth).get_data(as_text=True)
    assert "p0" in csv_text and len(csv_text.strip().splitlines()) == 2


def test_token_prompts_a_boost_span_and_generated_tokens(client):  # noqa: F811
    ids = [[504, 3575, 282, 4649, 314], [504, 3575, 282]]
    plain = client.completions.create(model=MODEL, prompt=ids, max_tokens=2, echo=True, logprobs=1)
    boosted = client.completions.create(model=MODEL, prompt=ids, max_tokens=2, echo=True, logprobs=1,
                                        extra_body={"instaboost": {"multiplier": 10, "spans": [[1, 2]]}})
    assert [c.index for c in plain.choices] == [0, 1]
    for a, b in zip(plain.choices, boosted.choices):
        la, lb = a.logprobs.token_logprobs, b.logprobs.token_logprobs
        assert la[0] is None and abs(la[1] - lb[1]) <= 1e-4  # token 1, predicted at position 0, sees no boosted key
        assert abs(la[3] - lb[3]) > 1e-3  # token 3, predicted at position 2, sees the boosted token 1
        assert len(a.logprobs.tokens) == len(ids[a.index]) + 2  # the echo, then both new tokens
    text = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=0)
    assert "".join(text.choices[0].logprobs.tokens) == text.choices[0].text


def test_streamed_completion_and_chat_carry_their_logprobs(client):  # noqa: F811
    whole = client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=2)
    chunks = list(client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=4, logprobs=2, stream=True,
                                            stream_options={"include_usage": True}))
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens and not chunks[-1].choices
    chunks = chunks[:-1]
    assert "".join(c.choices[0].text for c in chunks) == whole.choices[0].text
    streamed = [t for c in chunks if c.choices[0].logprobs for t in c.choices[0].logprobs.tokens]
    assert streamed == whole.choices[0].logprobs.tokens and chunks[-1].choices[0].finish_reason
    msgs = [{"role": "user", "content": "Name a colour."}]
    chat = client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, logprobs=True, top_logprobs=3)
    content = chat.choices[0].logprobs.content
    assert "".join(t.token for t in content).strip() == chat.choices[0].message.content
    assert all(len(t.top_logprobs) == 3 and t.bytes == list(t.token.encode()) for t in content)
    stored = client.chat.completions.retrieve(chat.id)
    assert [t.logprob for t in stored.choices[0].logprobs.content] == [t.logprob for t in content]
    parts = list(client.chat.completions.create(model=MODEL, messages=msgs, max_tokens=4, logprobs=True, stream=True))
    assert [t.token for p in parts if p.choices and p.choices[0].logprobs
            for t in p.choices[0].logprobs.content] == [t.token for t in content]


def write_task(folder: Path) -> str:
    (folder / "mc_facts.yaml").write_text(textwrap.dedent(f"""\
        task: instaboost_mc_facts
        dataset_path: json
        dataset_kwargs:
          data_files:
            test: {DATA}
        output_type: multiple_choice
        test_split: test
        num_fewshot: 0
        description: "{DESCRIPTION}\\n\\n"
        doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
        doc_to_choice: "{{{{choices}}}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
            aggregation: mean
            higher_is_better: true
        metadata:
          version: 1.0
        """))
    return "instaboost_mc_facts"


def test_lm_eval_local_completions_scores_multiple_choice_unboosted_and_boosted(live_server, tmp_path,  # noqa: F811
                                                                             monkeypatch, plain_model, pg_url):  # noqa: F811
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tok_dir = tmp_path / "tokenizer"
    plain_model.tokenizer.save_pretrained(tok_dir)
    # The boost: the description's tokens (the same first tokens in every context), via the X-InstaBoost header,
    # since lm-eval's loglikelihood requests carry no extra body fields.
    first = plain_model.tokenizer(f"{DESCRIPTION}\n\nQuestion: What", add_special_tokens=False)["input_ids"]
    words = len(plain_model.tokenizer(DESCRIPTION, add_special_tokens=False)["input_ids"])
    assert first[:words - 1] == plain_model.tokenizer(DESCRIPTION, add_special_tokens=False)["input_ids"][:words - 1]
    task = write_task(tmp_path)
    scores = {}
    for label, boost in (("unboosted", None), ("boosted", {"multiplier": 10, "spans": [[0, words - 1]]})):
        header = {"Authorization": f"Bearer {TOKEN}"}
        if boost:
            header["X-InstaBoost"] = json.dumps(boost)
        results = simple_evaluate(
            model="local-completions",
            model_args={"model": MODEL, "base_url": f"{live_server[0]}/v1/completions", "num_concurrent": 1,
                        "max_retries": 1, "tokenizer_backend": "huggingface", "tokenizer": str(tok_dir),
                        "batch_size": 8, "timeout": 300, "header": header},
            tasks=[task], task_manager=TaskManager(include_path=str(tmp_path)), log_samples=True)
        scores[label] = results["results"][task]["acc,none"]
        assert len(results["samples"][task]) == sum(1 for _ in DATA.open())
    print(f"\nlm-eval instaboost_mc_facts ({sum(1 for _ in DATA.open())} items, 4 choices): "
          f"acc unboosted={scores['unboosted']:.3f} boosted (M=10 on the description)={scores['boosted']:.3f}")
    assert scores["unboosted"] > 0.4  # well above chance (0.25) for a 135M instruct model on these facts
    assert 0.0 <= scores["boosted"] <= 1.0


def test_n_choices_per_prompt_in_openai_order_each_with_its_own_seed(client, pg_url):  # noqa: F811
    prompts = [PROMPT, "Once upon a time"]
    res = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=4, temperature=1, seed=11)
    assert [c.index for c in res.choices] == [0, 1, 2, 3]
    one = client.completions.create(model=MODEL, prompt=prompts[0], max_tokens=4, temperature=1, seed=12)
    assert res.choices[1].text == one.choices[0].text  # prompt 0's choice 1 samples with seed + 1
    first = client.completions.create(model=MODEL, prompt=prompts[1], max_tokens=4, temperature=1, seed=11)
    assert res.choices[2].text == first.choices[0].text  # prompt 1's choice 0 samples with the seed itself
    _, kind, _, runs = stored_job(pg_url, int(res.id.removeprefix("cmpl-")))
    assert (kind, sorted(r[0] for r in runs)) == ("completion", ["p0", "p0_1", "p1", "p1_1"])
