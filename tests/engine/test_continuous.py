"""Continuous batching (worker.engine.continuous): a row's tokens are its own, whichever rows join and leave.

Each request is decoded alone by the static fast engine (the established path, itself checked against the
TransformerLens reference in test_engine.py) and inside a continuous batch whose rows join mid-decoding and
leave at their own lengths; the tokens must be identical, greedy and seeded sampling alike.
"""

import pytest

import dataclasses

from shared.spec import BoostSpec, ChatMessage, GenerationParams, GenerationRequest, Segment
from tests.engine.test_engine_gemma import gemma  # noqa: F401  (the real Gemma 3 270M fixture)
from tests.engine.test_sliding_window import QUERY as LONG_QUERY, tiny  # noqa: F401  (tiny Gemma 3, window 8)
from worker.engine.continuous import ContinuousDecoder


def _req(instruction, query, n, multiplier=1.0, spec=None, **params):
    return GenerationRequest(instruction, query, BoostSpec(multiplier=multiplier, **(spec or {})),
                             GenerationParams(max_new_tokens=n, **params))


def _chat(n):
    """A chat with two boosted spans, each with its own M (one de-boosted)."""
    turns = (ChatMessage("system", (Segment("Answer only in French.", 6.0),)),
             ChatMessage("user", (Segment("Name a river in "), Segment("Germany", 0.5), Segment(", briefly."))))
    return GenerationRequest.chat(turns, BoostSpec(layers="middle"), GenerationParams(max_new_tokens=n))


def drive(engine, schedule: dict[int, list], max_rows: int, budget: int = 0, trace: list | None = None):
    """Run a continuous batch where schedule[step] lists the (key, request) pairs submitted before that step.

    trace, if given, receives per step (what it processed, the keys of the rows prefilling after it).
    """
    d = ContinuousDecoder(engine, max_rows=max_rows, token_budget=budget)
    pending, out, step, widest = dict(schedule), {}, 0, 0
    while pending or not d.idle:
        for key, req in pending.pop(step, []):
            d.submit(req, key)
        out.update(d.step())
        if trace is not None:
            trace.append((d.last, [r.key for f in d.filling for r in f.rows]))
        widest = max(widest, len(d.rows))
        step += 1
    return out, d, widest


def _same(got, want):
    assert (got.text, got.output_tokens, got.finish_reason) == (want.text, want.output_tokens, want.finish_reason)


GREEDY = [
    _req("Answer only in French.", "Name a large city in Germany.", 9, 8.0, dict(placement="system")),
    _req("Reply in all capital letters.", "What colour is the sky? One short sentence.", 4, 1.0,
         dict(placement="prefix")),
    _req("You are a pirate. Always talk like a pirate.", "Describe your favourite food.", 12, 25.0,
         dict(layers="middle", placement="raw")),
    _req("Be terse.", "Why do cats purr?", 6, 0.5, dict(head_fraction=0.3, seed=3)),
    _req("Answer only in French.", "What is the capital of Germany? Explain briefly.", 7, 4.0,
         dict(layers="0,3,5"), stop=(",", ".")),
]


def test_greedy_rows_equal_alone_while_rows_join_and_leave(fast_engine):
    reqs = [*GREEDY, _chat(8)]
    alone = [fast_engine.generate([r])[0] for r in reqs]
    # Three slots: rows 2 and 3 join two and four steps into decoding, the rest wait for rows to leave.
    out, d, widest = drive(fast_engine, {0: [(0, reqs[0]), (1, reqs[1])], 2: [(2, reqs[2])],
                                         4: [(3, reqs[3]), (4, reqs[4]), (5, reqs[5])]}, max_rows=3)
    for i, want in enumerate(alone):
        _same(out[i], want)
    assert out[5].spans == alone[5].spans and len(out[5].spans) == 2
    assert widest == 3 and d.row_steps > d.steps  # rows really shared steps
    assert len({r.text for r in alone}) == len(alone)  # distinct answers: no vacuous pass


def test_seeded_sampling_rows_equal_alone_while_rows_join_and_leave(fast_engine):
    reqs = [_req("Answer only in French.", "What is the capital of Germany? Explain briefly.", 10, 4.0,
                 temperature=0.9, top_p=0.95, seed=123),
            _req("Be brief.", "Name a fruit.", 5, 2.0, temperature=1.3, seed=7),
            _req("Answer in German.", "What is rain?", 8, 8.0, dict(layers="middle"), temperature=0.8, top_k=20,
                 seed=11, repetition_penalty=1.3),
            _req("Answer only in French.", "What is the capital of Germany? Explain briefly.", 10, 4.0,
                 temperature=0.9, top_p=0.95, seed=124, logit_bias=((28, -100.0),)),
            _req("Be terse.", "Why do cats purr?", 6)]  # a greedy row among the sampling ones
    alone = [fast_engine.generate([r])[0] for r in reqs]
    out, _, widest = drive(fast_engine, {0: [(0, reqs[0])], 1: [(1, reqs[1]), (2, reqs[2])],
                                         3: [(3, reqs[3]), (4, reqs[4])]}, max_rows=4)
    for i, want in enumerate(alone):
        _same(out[i], want)
    assert widest >= 3 and out[0].text != out[3].text


def test_streams_logprobs_and_attention_mass_per_row(fast_engine):
    reqs = [_req("Answer only in French.", "Name a large city in Germany.", 6, 8.0),
            _req("Be terse.", "Why do cats purr?", 5, 2.0)]
    reqs = [dataclasses.replace(r, logprobs=2) for r in reqs]
    alone = [fast_engine.generate([r], attention=True)[0] for r in reqs]
    d = ContinuousDecoder(fast_engine, max_rows=2, attention=True)
    streamed = {0: "", 1: ""}
    d.submit(reqs[0], 0, on_text=lambda t: streamed.__setitem__(0, streamed[0] + t))
    out = dict(d.step())
    d.submit(reqs[1], 1, on_text=lambda t: streamed.__setitem__(1, streamed[1] + t))
    while not d.idle:
        out.update(d.step())
    for i, want in enumerate(alone):
        _same(out[i], want)
        assert streamed[i] == want.text
        assert out[i].logprobs["output"]["ids"] == want.logprobs["output"]["ids"]
        assert out[i].logprobs["output"]["logprobs"] == pytest.approx(want.logprobs["output"]["logprobs"], abs=1e-4)
        for label in ("unboosted", "boosted"):
            assert out[i].attention_mass[label] == pytest.approx(want.attention_mass[label], abs=1e-4)


def test_a_halted_row_leaves_at_the_next_step_and_the_others_go_on(fast_engine):
    reqs = [_req("Be terse.", "Why do cats purr?", 12, 2.0), _req("Answer only in French.", "Name a city.", 8, 8.0)]
    alone = fast_engine.generate([reqs[1]])[0]
    d = ContinuousDecoder(fast_engine, max_rows=2)
    d.submit(reqs[0], "a")
    d.submit(reqs[1], "b")
    out = dict(d.step())
    d.step()
    d.halt("a")
    out.update(d.step())
    assert "a" in out and out["a"].output_tokens == 3 and d.keys == ["b"]
    while not d.idle:
        out.update(d.step())
    _same(out["b"], alone)


def test_interactive_rows_join_ahead_of_queued_ones(fast_engine):
    d = ContinuousDecoder(fast_engine, max_rows=2)
    for i in range(3):
        d.submit(_req("Be terse.", f"Line {i}.", 4), f"batch-{i}")
    d.submit(_req("Be terse.", "Hello?", 4), "chat", first=True)
    assert d.keys[0] == "chat"
    d.step()
    assert [r.key for r in d.rows] == ["chat", "batch-0"]


@pytest.mark.parametrize("budget", [0, 64])
def test_an_interactive_row_is_prefilled_before_the_batch_decodes(fast_engine, budget):
    """Its first token comes from its prefill, ahead of the running rows' forward, then it decodes with them."""
    forwards = []
    hook = fast_engine.loaded.model.register_forward_pre_hook(
        lambda _, args, kwargs: forwards.append(tuple(kwargs["input_ids"].shape)), with_kwargs=True)
    try:
        d = ContinuousDecoder(fast_engine, max_rows=4, token_budget=budget)
        rows = [_req("Be terse.", f"Count from one to twenty, line {i}.", 10, 4.0) for i in range(2)]
        for i, req in enumerate(rows):
            d.submit(req, i)
        while len(d.rows) < 2:
            d.step()
        chat = _req("Answer only in French.", "Hello?", 6, 8.0)
        d.submit(chat, "chat", first=True)
        forwards.clear()
        d.step()
    finally:
        hook.remove()
    width = len(fast_engine.prompt(chat).input_ids)
    assert forwards == [(1, width), (3, 1)]  # the chat's prefill, then one forward of the batch and the chat
    assert [len(r.generated) for r in d.rows if r.key == "chat"] == [2]
    out = {}
    while not d.idle:
        out.update(d.step())
    want = fast_engine.generate([*rows, chat])
    for key, w in zip([0, 1, "chat"], want):
        _same(out[key], w)


@pytest.mark.parametrize("budget", [0, 7])
def test_sliding_window_rows_past_the_window_equal_alone(tiny, budget):
    """Tiny Gemma 3 (window 8): prompts and answers run well past the window while rows join and leave; with a
    budget of 7 tokens a step, prompts are prefilled in chunks of 4 to 7 columns, across the window's edge."""
    fast, tl = tiny
    reqs = [GenerationRequest("Answer only in French.", LONG_QUERY + " " * k,
                              BoostSpec(multiplier=m, placement="raw", layers=layers),
                              GenerationParams(max_new_tokens=n))
            for k, m, layers, n in ((0, 50.0, "all", 10), (1, 1.0, "all", 6), (0, 8.0, "1,2", 12),
                                    (2, 0.3, "all", 9))]
    reqs.append(GenerationRequest("Be terse.", "Why?", BoostSpec(multiplier=20.0, placement="raw"),
                                  GenerationParams(max_new_tokens=14)))  # short prompt: shorter than the window
    alone = [fast.generate([r])[0] for r in reqs]
    out, d, widest = drive(fast, {0: [(0, reqs[0]), (4, reqs[4])], 3: [(1, reqs[1])], 5: [(2, reqs[2]), (3, reqs[3])]},
                           max_rows=3, budget=budget)
    for i, want in enumerate(alone):
        _same(out[i], want)
    assert widest == 3
    assert (d.max_stall <= 7 and d.chunks > 2 * len(reqs)) if budget else d.max_stall > 7
    assert tl.generate([reqs[0]])[0].text == out[0].text  # the reference engine agrees


def test_gemma3_inside_a_continuous_batch(gemma):  # noqa: F811
    fast, _ = gemma
    reqs = [GenerationRequest("Answer only in French.", q, BoostSpec(multiplier=m, placement="raw"),
                              GenerationParams(max_new_tokens=n))
            for q, m, n in (("What is the capital of Germany? Explain briefly.", 5.0, 8),
                            ("Name a river.", 1.0, 4), ("Why is the sky blue?", 10.0, 6))]
    alone = [fast.generate([r])[0] for r in reqs]
    out, _, widest = drive(fast, {0: [(0, reqs[0])], 2: [(1, reqs[1]), (2, reqs[2])]}, max_rows=3)
    for i, want in enumerate(alone):
        _same(out[i], want)
    assert widest == 3


# -- chunked prefill (worker.step_token_budget) ------------------------------------------------------------------

DOC = ("Berlin lies on the rivers Spree and Havel. Its bridges, markets, museums and old churches tell a history "
       "that runs from a medieval trading town to a divided city and a capital again. ") * 2


def _ids_request(engine, n, spans, **kw):
    """A completion given as token ids (a long document), boosted at spans that straddle chunk edges."""
    ids = tuple(engine.tokenizer(DOC + "In one sentence, the city is")["input_ids"])
    return GenerationRequest(prompt_ids=ids, prompt_spans=spans, spec=BoostSpec(layers="middle"),
                             params=GenerationParams(max_new_tokens=n), **kw)


def test_long_prompts_prefilled_in_chunks_equal_alone(fast_engine):
    """At 32 tokens a step (two running rows), each long prompt is prefilled over several steps: every row's tokens,
    logprobs and prompt logprobs equal the row decoded alone, whatever its spans, M, scope, heads or target."""
    reqs = [_req("Be terse.", "Why do cats purr?", 12, 2.0),
            _req("Answer only in French.", DOC + "Summarise this.", 6, 8.0, dict(placement="system")),
            _req("Reply in capital letters.", DOC + "Name a museum.", 6, 4.0,
                 dict(placement="raw", scope="prompt", head_fraction=0.5, seed=2)),
            _req("Answer only in French.", DOC + "Why bridges?", 6, 2.0,
                 dict(target_mass=0.6, scope="generated", layers="middle")),
            _req("Answer only in French.", DOC + "Summarise this.", 6, 4.0, temperature=0.9, top_p=0.95, seed=5),
            _ids_request(fast_engine, 5, ((5, 47, 6.0), (75, 83, 0.5)), logprobs=2, prompt_logprobs=1)]
    alone = [fast_engine.generate([r])[0] for r in reqs]
    lengths = [len(fast_engine.prompt(r).input_ids) for r in reqs[1:]]
    trace = []
    out, d, widest = drive(fast_engine, {0: [(0, reqs[0])], 2: [(i, r) for i, r in enumerate(reqs) if i]},
                           max_rows=3, budget=32, trace=trace)
    for i, want in enumerate(alone):
        _same(out[i], want)
    got, want = out[5].logprobs, alone[5].logprobs
    assert got["output"]["ids"] == want["output"]["ids"] and got["prompt"]["ids"] == want["prompt"]["ids"]
    for part in ("output", "prompt"):
        assert got[part]["logprobs"] == pytest.approx(want[part]["logprobs"], abs=1e-4)
    assert min(lengths) > 64 and d.chunks >= sum(n // 32 + 1 for n in lengths)  # every long prompt was chunked
    assert max(c.tokens for c, _ in trace) <= 32 == d.max_stall and widest == 3
    assert len({r.text for r in alone}) >= 5  # different answers: no vacuous pass


def test_running_rows_keep_decoding_while_a_long_prompt_prefills_in_chunks(fast_engine):
    running = [_req("Be terse.", "Why do cats purr?", 30, 2.0), _req("Name a city.", "In Germany?", 30, 1.0)]
    long = _req("Answer only in French.", DOC + "Summarise this.", 6, 8.0, dict(placement="system"))
    n = len(fast_engine.prompt(long).input_ids)
    schedule = {0: [(0, running[0]), (1, running[1])], 3: [("long", long)]}
    trace = []
    out, d, _ = drive(fast_engine, schedule, max_rows=3, budget=32, trace=trace)
    filling = [c for c, keys in trace if "long" in keys]
    joined = max(i for i, (_, keys) in enumerate(trace) if "long" in keys) + 1  # the step its last chunk ran
    # While the prompt was prefilled, 30 of its tokens a step, both running rows decoded at every step.
    assert len(filling) >= n // 30 - 1 and all(c.decoded == 2 and 0 < c.prefilled <= 30 for c in filling)
    assert trace[joined][0].tokens <= 32 and trace[joined + 1][0].decoded == 3  # then it decodes with them
    assert d.max_stall == 32
    unchunked, u, _ = drive(fast_engine, schedule, max_rows=3)
    assert u.max_stall >= n + 2 and u.chunks == 2  # without a budget one step prefills it whole
    for key in out:
        _same(out[key], unchunked[key])


def test_a_budget_smaller_than_every_prompt_still_ends(fast_engine):
    """Budget 2: every prompt is prefilled 1 or 2 tokens a step (none while two rows decode), and every row ends."""
    reqs = [_req("Be terse.", "Why?", 5, 2.0), _req("Be terse.", "How?", 7, 1.0),
            _req("Answer only in French.", "Name a large city in Germany.", 3, 8.0, dict(placement="raw")),
            _req("Be brief.", "Name a fruit.", 3, 2.0, temperature=1.3, seed=7)]
    alone = [fast_engine.generate([r])[0] for r in reqs]
    trace = []
    out, d, _ = drive(fast_engine, {0: [(0, reqs[0]), (1, reqs[1])], 1: [(2, reqs[2]), (3, reqs[3])]}, max_rows=3,
                      budget=2, trace=trace)
    for i, want in enumerate(alone):
        _same(out[i], want)
    assert max(c.tokens for c, _ in trace) <= 2 and d.idle
    assert d.chunks >= sum(len(fast_engine.prompt(r).input_ids) for r in reqs) // 2


def test_an_interactive_row_joins_ahead_of_a_long_prompt_being_prefilled(fast_engine):
    d = ContinuousDecoder(fast_engine, max_rows=3, token_budget=64)
    d.submit(_req("Be terse.", "Why do cats purr?", 20, 2.0), "running")
    d.step()
    d.submit(_req("Answer only in French.", DOC * 3 + "Summarise this.", 4, 8.0), "long")  # over 150 tokens
    d.step()
    assert [r.key for f in d.filling for r in f.rows] == ["long"]
    chat = _req("Be terse.", "Hello?", 4)
    d.submit(chat, "chat", first=True)
    d.step()
    assert d.last.joined == 1 and "chat" in [r.key for r in d.rows] and d.filling  # ahead of the long prompt
    out = {}
    while not d.idle:
        out.update(d.step())
    _same(out["chat"], fast_engine.generate([chat])[0])
