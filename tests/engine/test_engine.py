"""The engine contract on the real default model in fp32."""

import pytest
import torch

from shared.errors import ValidationError
from shared.spec import BoostSpec, GenerationParams, GenerationRequest
from tests.fixtures.model import INSTRUCTION, QUERY, make_request, plain_greedy


CONFIGS = [
    dict(multiplier=3.0, layers="all"),
    dict(multiplier=20.0, layers="middle"),
    dict(multiplier=10.0, head_fraction=0.2, seed=42),
    dict(multiplier=1.0),
    dict(multiplier=8.0, layers=(2, 9, 10), heads={9: (0, 3), 10: (1,)}),
]


@pytest.mark.parametrize("spec", CONFIGS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_engines_agree_on_logits(fast_engine, tl_engine, spec):
    req = make_request(**spec)
    diff = (fast_engine.logits(req) - tl_engine.logits(req)).abs().max().item()
    assert diff <= 1e-4, f"fast and transformerlens logits differ by {diff:.3g}"


def test_engines_boost_changes_logits(fast_engine):
    base = fast_engine.logits(make_request(1.0))
    boosted = fast_engine.logits(make_request(10.0))
    assert (base - boosted).abs().max().item() > 0.5


def _plain_greedy(plain_model, req, engine):
    ids = torch.tensor([engine.prompt(req).input_ids])
    return plain_greedy(plain_model.model, plain_model.tokenizer, ids, req.params.max_new_tokens)


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_multiplier_one_equals_plain_hf_greedy(fast_engine, tl_engine, plain_model, which):
    engine = fast_engine if which == "fast" else tl_engine
    req = make_request(1.0, max_new_tokens=32)
    want_text, want_n = _plain_greedy(plain_model, req, engine)
    got = engine.generate([req])[0]
    assert (got.text, got.output_tokens) == (want_text, want_n)


def test_transformerlens_cached_equals_uncached(tl_engine):
    req = make_request(6.0, layers="middle", max_new_tokens=20)
    prompt = tl_engine.prompt(req)
    cached = tl_engine.generate([req])[0]
    uncached_ids = tl_engine.generate_uncached(req)
    uncached = tl_engine.tokenizer.decode(uncached_ids, skip_special_tokens=True).strip()
    assert cached.text == uncached
    # Guard against the transformers 5.24 'cache' rename: cached decoding must stay coherent, not "The-----".
    assert len(set(cached.text.split())) > 3, cached.text
    assert prompt.span_text == INSTRUCTION


def test_fast_batch_equals_each_alone(fast_engine):
    reqs = [
        make_request(8.0, instruction="Answer only in French.", query="Name a large city in Germany.",
                     placement="system", max_new_tokens=16),
        make_request(1.0, instruction="Reply in all capital letters.",
                     query="What colour is the sky on a clear day? Answer in one short sentence.",
                     placement="prefix", max_new_tokens=16),
        make_request(25.0, instruction="You are a pirate. Always talk like a pirate, with arr and matey.",
                     query="Describe your favourite food.", layers="middle", placement="raw", max_new_tokens=16),
        make_request(0.5, instruction="Be terse.", query="Why do cats purr?", head_fraction=0.3,
                     placement="system", max_new_tokens=16),
    ]
    batched = fast_engine.generate(reqs)
    alone = [fast_engine.generate([r])[0] for r in reqs]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert [b.span for b in batched] == [a.span for a in alone]
    assert len({b.text for b in batched}) == 4


@pytest.mark.parametrize("placement", ["system", "prefix", "raw"])
def test_span_decodes_to_the_instruction(fast_engine, placement):
    instruction = "  Always answer with exactly three words.  "
    prompt = fast_engine.prompt(make_request(2.0, instruction=instruction, placement=placement))
    decoded = fast_engine.tokenizer.decode(prompt.input_ids[prompt.span[0]:prompt.span[1]])
    assert decoded.strip() == instruction.strip()
    assert prompt.span[1] - prompt.span[0] >= 6


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_attention_mass_rises_in_boosted_layers_only(fast_engine, tl_engine, which):
    engine = fast_engine if which == "fast" else tl_engine
    res = engine.generate([make_request(10.0, layers="middle", max_new_tokens=12)], attention=True)[0]
    before, after = res.attention_mass["unboosted"], res.attention_mass["boosted"]
    assert len(before) == len(after) == engine.n_layers
    for layer in range(8, 13):
        assert after[layer] > before[layer] * 1.5, (layer, before[layer], after[layer])
    # Layers before the boosted block see the same tokens and the same weights.
    assert before[:8] == pytest.approx(after[:8], abs=1e-5)


def test_engines_agree_on_attention_mass(fast_engine, tl_engine):
    req = make_request(5.0, head_fraction=0.5, max_new_tokens=10)
    a = fast_engine.generate([req], attention=True)[0]
    b = tl_engine.generate([req], attention=True)[0]
    assert a.text == b.text
    for label in ("unboosted", "boosted"):
        assert a.attention_mass[label] == pytest.approx(b.attention_mass[label], abs=1e-4)


def test_attention_analysis_is_measured_in_blocks_and_per_row(fast_engine, monkeypatch):
    """Issue 10: the analysis reads the generated queries a block at a time; neither the block size nor the
    other rows of a padded batch change a row's numbers."""
    import worker.engine.fast as fast

    long_one = make_request(6.0, max_new_tokens=9)
    short_one = GenerationRequest("Be brief.", "Hi?", BoostSpec(multiplier=3.0, layers="middle"),
                                  GenerationParams(max_new_tokens=9))
    whole = fast_engine.generate([long_one, short_one], attention=True)
    monkeypatch.setattr(fast, "ANALYSIS_BLOCK", 2)
    blocks = fast_engine.generate([long_one, short_one], attention=True)
    alone = fast_engine.generate([short_one], attention=True)[0]
    for label in ("unboosted", "boosted"):
        for a, b in zip(whole, blocks):
            assert a.attention_mass[label] == pytest.approx(b.attention_mass[label], abs=1e-5)
        assert blocks[1].attention_mass[label] == pytest.approx(alone.attention_mass[label], abs=1e-4)
    assert fast_engine.generate([short_one])[0].attention_mass is None  # off unless asked


def test_each_row_of_a_batch_reports_the_time_to_its_own_last_token(fast_engine):
    """Issue 10: a row that stops early no longer shows the whole batch's wall time."""
    params = GenerationParams(max_new_tokens=20, stop=("sky",))
    early = GenerationRequest("Answer with one word.", "What color is the sky?", BoostSpec(multiplier=1.0), params)
    late = GenerationRequest("Be detailed.", "Tell me a long story about a dragon.", BoostSpec(multiplier=3.0), params)
    a, b = fast_engine.generate([early, late])
    assert a.finish_reason == "stop" and b.finish_reason == "length" and a.output_tokens < b.output_tokens
    # Step timestamps are monotonic, so the row that ended first reports less time, on any machine.
    early_cost, late_cost = a.seconds, b.seconds
    assert 0 < early_cost < late_cost


def test_prompt_longer_than_context_is_refused(fast_engine):
    req = GenerationRequest("Be brief.", "word " * 9000, BoostSpec(multiplier=2), GenerationParams(max_new_tokens=8))
    with pytest.raises(ValidationError, match="context") as exc:
        fast_engine.generate([req])
    assert exc.value.field == "query"


def test_failed_generation_leaves_model_unboosted(fast_engine):
    bad = make_request(5.0, layers=(3, 99))
    with pytest.raises(ValidationError):
        fast_engine.generate([bad])
    from worker.engine.fast import _ACTIVE

    assert _ACTIVE.get() is None
    assert fast_engine.logits(make_request(1.0)).shape[0] > 0


def test_sampling_is_reproducible_with_a_seed(fast_engine):
    params = GenerationParams(max_new_tokens=16, temperature=0.9, top_p=0.95, seed=123)
    req = GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=4.0), params)
    assert fast_engine.generate([req])[0].text == fast_engine.generate([req])[0].text


def test_a_seeded_sampled_row_gives_the_same_tokens_alone_and_inside_a_busy_batch(fast_engine, tl_engine):
    """Issue 10: each sampled row draws from a generator of its own, so its output does not depend on which
    rows (other seeds, greedy rows, other lengths and temperatures) share its batch; nor on the engine."""
    sampled = GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=4.0),
                                GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=123))
    others = [GenerationRequest("Be brief.", "Name a fruit.", BoostSpec(multiplier=2.0),
                                GenerationParams(max_new_tokens=5, temperature=1.3, seed=7)),
              GenerationRequest("Answer in German.", "What is rain?", BoostSpec(multiplier=8.0, layers="middle"),
                                GenerationParams(max_new_tokens=20)),
              GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=4.0),
                                GenerationParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=124))]
    alone = fast_engine.generate([sampled])[0]
    busy = fast_engine.generate([others[0], sampled, *others[1:]])
    assert busy[1].text == alone.text and busy[1].output_tokens == alone.output_tokens
    assert busy[3].text != alone.text  # another seed draws other tokens
    assert tl_engine.generate([sampled])[0].text == alone.text


def test_rows_with_their_own_lengths_share_a_batch_and_stop_at_their_budget(fast_engine):
    reqs = [GenerationRequest(INSTRUCTION, QUERY, BoostSpec(multiplier=m), GenerationParams(max_new_tokens=n))
            for m, n in ((1.0, 3), (5.0, 14), (10.0, 7))]
    together = fast_engine.generate(reqs)
    for req, got in zip(reqs, together):
        alone = fast_engine.generate([req])[0]
        assert got.output_tokens <= req.params.max_new_tokens
        assert (got.text, got.output_tokens, got.finish_reason) == (alone.text, alone.output_tokens,
                                                                     alone.finish_reason)
    streamed: dict[int, str] = {}
    fast_engine.generate(reqs, on_text=lambda i, d: streamed.__setitem__(i, streamed.get(i, "") + d))
    assert [streamed.get(i, "") for i in range(3)] == [r.text for r in together]


def test_transformerlens_hook_fires_during_cached_generation(tl_engine):
    fired = []
    original = tl_engine.hooked

    import contextlib

    @contextlib.contextmanager
    def counting(boost, *args, **kwargs):
        with original(boost, *args, **kwargs):
            hook_layers = list(boost.heads) if boost is not None else []
            with tl_engine.bridge.hooks(fwd_hooks=[(f"blocks.{hook_layers[0]}.attn.hook_pattern",
                                                    lambda p, hook: fired.append(p.shape[-2]) or p)]):
                yield

    tl_engine.hooked = counting
    try:
        res = tl_engine.generate([make_request(1.0, max_new_tokens=6)])[0]
    finally:
        del tl_engine.hooked
    # One prefill over the prompt, then one single-query step per further token: the KV cache is in use.
    assert fired[0] == res.prompt_tokens and set(fired[1:]) == {1}
    assert len(fired) >= 2


def test_prototype_library_api_still_works():
    from worker import InstaBoostTransformerLens

    model = InstaBoostTransformerLens(model_name="smollm2-135m-instruct", boost_middle_layers_only=True,
                                      num_middle_layers=5, start_layer=8, head_boost_percentage=100, device="cpu",
                                      dtype="float32")
    text = model.generate(instruction=INSTRUCTION, query=QUERY, multiplier=10.0, max_new_tokens=12)
    assert isinstance(text, str) and text
    assert model.engine.kind == "transformerlens"


# -- several boosted spans per row, each with its own M (chat requests) ------------------------------------

def _chat(*messages, max_new_tokens=24, **spec):
    from shared.spec import ChatMessage, Segment

    turns = []
    for role, parts in messages:
        parts = [parts] if isinstance(parts, (str, tuple)) else parts
        turns.append(ChatMessage(role, tuple(Segment(p) if isinstance(p, str) else Segment(*p) for p in parts)))
    return GenerationRequest.chat(turns, BoostSpec(**spec), GenerationParams(max_new_tokens=max_new_tokens))


MULTI = [
    # A boosted system turn (M=6) and a span inside the user turn (M=3).
    (("system", ("Answer only in French.", 6.0)),
     ("user", ["What is the capital of Germany? ", ("Explain briefly.", 3.0)])),
    # Three spans, one of them de-boosted, across a user / assistant / user conversation.
    (("system", "You are a helpful assistant."),
     ("user", [("Reply in capital letters.", 12.0), " Name a fruit."]),
     ("assistant", "BANANA."),
     ("user", ["Now name a ", ("vegetable", 0.5), ", ", ("in one word", 4.0), "."])),
]
MULTI_SPECS = [dict(layers="all"), dict(layers="middle", placement="prefix"), dict(head_fraction=0.3, placement="raw"),
               dict(layers=(2, 9, 10), heads={9: (0, 3), 10: (1,)})]


@pytest.mark.parametrize("spec", MULTI_SPECS, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
@pytest.mark.parametrize("chat", range(len(MULTI)), ids=["two-spans", "three-spans"])
def test_engines_agree_on_multi_span_logits(fast_engine, tl_engine, chat, spec):
    req = _chat(*MULTI[chat], **spec)
    assert len(fast_engine.prompt(req).spans) == len(req.multipliers) >= 2
    diff = (fast_engine.logits(req) - tl_engine.logits(req)).abs().max().item()
    assert diff <= 1e-4, f"fast and transformerlens logits differ by {diff:.3g}"
    plain = _chat(*[(role, [p if isinstance(p, str) else p[0] for p in ([parts] if isinstance(parts, (str, tuple))
                                                                        else parts)]) for role, parts in MULTI[chat]],
                  **spec)
    assert (fast_engine.logits(req) - fast_engine.logits(plain)).abs().max().item() > 0.1  # the spans do boost


def test_multi_span_offsets_are_exact(fast_engine):
    req = _chat(*MULTI[1])
    prompt = fast_engine.prompt(req)
    texts = [fast_engine.tokenizer.decode(prompt.input_ids[a:b]).strip() for a, b, _ in prompt.spans]
    assert texts == ["Reply in capital letters.", "vegetable", "in one word"]
    assert [m for _, _, m in prompt.spans] == [12.0, 0.5, 4.0]


def test_each_span_gets_its_own_multiplier(fast_engine):
    # The same spans with the Ms swapped must give different logits than the original order.
    a = _chat(("system", ("Answer only in French.", 8.0)), ("user", ["Name a city. ", ("Be brief.", 1.5)]))
    b = _chat(("system", ("Answer only in French.", 1.5)), ("user", ["Name a city. ", ("Be brief.", 8.0)]))
    assert (fast_engine.logits(a) - fast_engine.logits(b)).abs().max().item() > 0.1


def test_one_span_chat_equals_the_instruction_request(fast_engine, tl_engine):
    # A chat whose system turn is boosted is the instruction request with placement "system".
    chat = _chat(("system", (INSTRUCTION, 5.0)), ("user", QUERY), layers="middle")
    inst = make_request(5.0, layers="middle")
    assert fast_engine.prompt(chat).input_ids == fast_engine.prompt(inst).input_ids
    assert fast_engine.prompt(chat).span == fast_engine.prompt(inst).span
    for engine in (fast_engine, tl_engine):
        assert torch.equal(engine.logits(chat), engine.logits(inst))


def _plain_chat_greedy(plain_model, messages, max_new_tokens):
    text = plain_model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([plain_model.tokenizer(text, add_special_tokens=False)["input_ids"]])
    return plain_greedy(plain_model.model, plain_model.tokenizer, ids, max_new_tokens)


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_multi_span_multiplier_one_equals_plain_hf_greedy(fast_engine, tl_engine, plain_model, which):
    engine = fast_engine if which == "fast" else tl_engine
    spans_at_one = _chat(("system", ("Answer only in French.", 1.0)),
                         ("user", ["What is the capital of Germany? ", ("Explain briefly.", 1.0)]), max_new_tokens=32)
    no_spans = _chat(("system", "Answer only in French."), ("user", "What is the capital of Germany? Explain briefly."),
                     max_new_tokens=32)
    messages = [{"role": "system", "content": "Answer only in French."},
                {"role": "user", "content": "What is the capital of Germany? Explain briefly."}]
    want = _plain_chat_greedy(plain_model, messages, 32)
    for req in (spans_at_one, no_spans):
        got = engine.generate([req])[0]
        assert (got.text, got.output_tokens) == want


def test_fast_batch_mixes_single_and_multi_span_rows(fast_engine):
    reqs = [_chat(*MULTI[0], max_new_tokens=12), make_request(8.0, max_new_tokens=12),
            _chat(*MULTI[1], max_new_tokens=12, layers="middle"),
            _chat(("user", "Say hello."), max_new_tokens=12)]
    batched = fast_engine.generate(reqs)
    alone = [fast_engine.generate([r])[0] for r in reqs]
    assert [b.text for b in batched] == [a.text for a in alone]
    assert [b.spans for b in batched] == [a.spans for a in alone]
    assert [len(b.spans) for b in batched] == [2, 1, 3, 0]


# -- stop strings and streaming ---------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_streamed_deltas_join_up_to_the_result(fast_engine, tl_engine, which):
    engine = fast_engine if which == "fast" else tl_engine
    reqs = [_chat(*MULTI[0], max_new_tokens=20), make_request(4.0, max_new_tokens=14)]
    deltas: dict[int, list[str]] = {0: [], 1: []}
    results = engine.generate(reqs, on_text=lambda i, d: deltas[i].append(d))
    for i, res in enumerate(results):
        assert len(deltas[i]) > 3  # token by token, not all at the end
        assert "".join(deltas[i]) == res.text
    assert [r.text for r in results] == [r.text for r in engine.generate(reqs)]  # streaming changes nothing


def test_stop_strings_end_the_text_and_report_why(fast_engine):
    free = fast_engine.generate([_chat(("user", "Count from 1 to 20, separated by commas."), max_new_tokens=40)])[0]
    assert free.finish_reason == "length" and "5" in free.text, free.text
    stop = free.text[free.text.index("5"):free.text.index("5") + 1]
    params = GenerationParams(max_new_tokens=40, stop=(stop, "zzz"))
    req = GenerationRequest.chat(_chat(("user", "Count from 1 to 20, separated by commas.")).messages,
                                 params=params)
    deltas: list[str] = []
    res = fast_engine.generate([req], on_text=lambda i, d: deltas.append(d))[0]
    assert res.text == free.text[:free.text.index(stop)].strip() and res.finish_reason == "stop"
    assert res.output_tokens < 40 and "".join(deltas) == res.text


def test_result_reports_the_placement_used(fast_engine, monkeypatch):
    assert fast_engine.generate([make_request(2.0, placement="prefix", max_new_tokens=2)])[0].placement == "prefix"
    # A template that rejects a system turn: 'system' falls back to 'prefix'.
    monkeypatch.setattr(fast_engine.tokenizer, "chat_template",
                        "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system') }}"
                        "{% endif %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}<|assistant|>")
    with pytest.warns(UserWarning, match="rejects a system turn"):
        res = fast_engine.generate([make_request(2.0, placement="system", max_new_tokens=2)])[0]
    assert res.placement == "prefix" and res.span_text == INSTRUCTION
    # No template at all: 'system' and 'prefix' fall back to 'raw'.
    monkeypatch.setattr(fast_engine.tokenizer, "chat_template", None)
    with pytest.warns(UserWarning, match="falls back to 'raw'"):
        res = fast_engine.generate([make_request(2.0, placement="system", max_new_tokens=2)])[0]
    assert res.placement == "raw" and res.to_dict()["placement"] == "raw" and res.span_text == INSTRUCTION


# -- scope and target mass (issue 21) -------------------------------------------------------------------------

SCOPED = [
    dict(multiplier=6.0, scope="generated"),
    dict(multiplier=6.0, scope="prompt", layers="middle"),
    dict(target_mass=0.3),
    dict(target_mass=0.6, scope="generated", head_fraction=0.5),
    dict(target_mass=0.4, scope="prompt"),
    dict(multiplier=3.0, target_mass=0.5, layers=(2, 9, 10), heads={9: (0, 3), 10: (1,)}),
]


def _continuation(engine):
    """Token ids that stand for generated ones: logits over prompt + these exercise the decoding queries."""
    return engine.tokenizer(" Berlin est la capitale de l'Allemagne.", add_special_tokens=False)["input_ids"]


def _agreeing_logits(fast_engine, tl_engine, spec: dict):
    """Return the fast engine's logits for spec over the continuation, after asserting the reference agrees."""
    req, cont = make_request(**spec), _continuation(fast_engine)
    got = fast_engine.logits(req, cont)
    diff = (got - tl_engine.logits(req, cont)).abs().max().item()
    assert diff <= 1e-4, f"fast and transformerlens logits differ by {diff:.3g}"
    return got, cont


@pytest.mark.parametrize("spec", SCOPED, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_engines_agree_on_scope_and_target_mass_logits(fast_engine, tl_engine, spec):
    got, cont = _agreeing_logits(fast_engine, tl_engine, spec)
    assert (got - fast_engine.logits(make_request(1.0), cont)).abs().max().item() > 0.5  # it does boost


def test_scope_all_is_todays_boost_and_scopes_split_the_queries(fast_engine):
    cont = _continuation(fast_engine)
    today = fast_engine.logits(make_request(6.0), cont)
    assert torch.equal(fast_engine.logits(make_request(6.0, scope="all"), cont), today)
    plain = fast_engine.logits(make_request(1.0), cont)
    n = len(fast_engine.prompt(make_request(6.0)).input_ids)
    # Boosting only the decoding queries leaves every earlier prompt position exactly as unboosted.
    generated = fast_engine.logits(make_request(6.0, scope="generated"), cont)
    assert torch.equal(generated[:n - 1], plain[:n - 1])
    assert (generated[n - 1:] - plain[n - 1:]).abs().max().item() > 0.5
    # Boosting only the prompt's other queries changes the prompt's positions like today's boost.
    prompt = fast_engine.logits(make_request(6.0, scope="prompt"), cont)
    assert torch.equal(prompt[:n - 1], today[:n - 1])


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
@pytest.mark.parametrize("scope", ["all", "generated", "prompt"])
def test_multiplier_one_in_every_scope_equals_plain_hf_greedy(fast_engine, tl_engine, plain_model, which, scope):
    engine = fast_engine if which == "fast" else tl_engine
    req = make_request(1.0, scope=scope, max_new_tokens=16)
    want_text, want_n = _plain_greedy(plain_model, req, engine)
    got = engine.generate([req])[0]
    assert (got.text, got.output_tokens) == (want_text, want_n)


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_target_mass_raises_every_boosted_heads_share_to_the_target(fast_engine, tl_engine, which):
    engine = fast_engine if which == "fast" else tl_engine
    res = engine.generate([make_request(target_mass=0.4, max_new_tokens=8)], attention=True)[0]
    # Every head's share on every generated query is max(a, p), so the mean is at least p in every layer.
    assert min(res.attention_mass["boosted"]) >= 0.4 - 1e-4, res.attention_mass["boosted"]
    assert min(res.attention_mass["unboosted"]) < 0.4


def test_engines_agree_on_target_mass_generation(fast_engine, tl_engine):
    req = make_request(target_mass=0.5, scope="generated", head_fraction=0.5, max_new_tokens=10)
    a = fast_engine.generate([req], attention=True)[0]
    b = tl_engine.generate([req], attention=True)[0]
    assert a.text == b.text
    for label in ("unboosted", "boosted"):
        assert a.attention_mass[label] == pytest.approx(b.attention_mass[label], abs=1e-4)


def test_fast_batch_rows_keep_their_own_scope_and_target(fast_engine):
    reqs = [make_request(8.0, scope="generated", max_new_tokens=12),
            make_request(target_mass=0.5, max_new_tokens=12, instruction="Reply in all capital letters."),
            make_request(8.0, scope="prompt", layers="middle", max_new_tokens=12),
            make_request(4.0, target_mass=0.7, scope="generated", max_new_tokens=12),
            make_request(1.0, max_new_tokens=12, query="Why do cats purr?")]
    batched = fast_engine.generate(reqs)
    alone = [fast_engine.generate([r])[0] for r in reqs]
    assert [b.text for b in batched] == [a.text for a in alone]


# -- the boilerplate de-boost (issue 21) ----------------------------------------------------------------------

DEBOOSTED = [
    dict(multiplier=6.0, boilerplate_multiplier=0.3),
    dict(multiplier=1.0, boilerplate_multiplier=0.5, scope="generated"),
    dict(multiplier=4.0, boilerplate_multiplier=0.2, layers="middle", head_fraction=0.5),
    dict(multiplier=3.0, boilerplate_multiplier=0.5, target_mass=0.5, layers="middle"),
    dict(target_mass=0.4, boilerplate_multiplier=0.1, scope="prompt", layers=(2, 9, 10), heads={9: (0, 3)}),
]


def test_boilerplate_is_the_system_turns_scaffolding_without_the_sink(fast_engine):
    tok = fast_engine.tokenizer
    p = fast_engine.prompt(make_request(2.0))
    assert [tok.decode(p.input_ids[a:b]) for a, b in p.boilerplate] == ["system\n", "<|im_end|>\n"]
    assert p.boilerplate == ((1, p.span[0]), (p.span[1], p.span[1] + 2))  # position 0 (<|im_start|>) left out
    assert tok.decode(p.input_ids[:1]) == "<|im_start|>" and p.spans == ((*p.span, None),)
    for placement in ("prefix", "raw"):  # the instruction has no turn of its own there
        assert fast_engine.prompt(make_request(2.0, placement=placement)).boilerplate == ()


def test_boilerplate_multiplier_one_is_todays_boost(fast_engine, tl_engine):
    cont = _continuation(fast_engine)
    for spec in (dict(multiplier=6.0), dict(multiplier=3.0, target_mass=0.5, scope="generated")):
        for engine in (fast_engine, tl_engine):
            today = engine.logits(make_request(**spec), cont)
            assert torch.equal(engine.logits(make_request(**spec, boilerplate_multiplier=1.0), cont), today)
    assert make_request(1.0, boilerplate_multiplier=1.0).is_identity
    assert not make_request(1.0, boilerplate_multiplier=0.5).is_identity


@pytest.mark.parametrize("spec", DEBOOSTED, ids=lambda s: ",".join(f"{k}={v}" for k, v in s.items()))
def test_engines_agree_on_boilerplate_deboost_logits(fast_engine, tl_engine, spec):
    got, cont = _agreeing_logits(fast_engine, tl_engine, spec)
    without = {k: v for k, v in spec.items() if k != "boilerplate_multiplier"}
    assert (got - fast_engine.logits(make_request(**without), cont)).abs().max().item() > 0.1  # it de-boosts


@pytest.mark.parametrize("which", ["fast", "transformerlens"])
def test_target_mass_counts_the_boosted_spans_only_not_the_boilerplate(fast_engine, tl_engine, which):
    engine = fast_engine if which == "fast" else tl_engine
    res = engine.generate([make_request(target_mass=0.4, boilerplate_multiplier=0.1, max_new_tokens=8)],
                          attention=True)[0]
    # The share measured and raised is the instruction's: at least p in every layer, the de-boost aside.
    assert min(res.attention_mass["boosted"]) >= 0.4 - 1e-4, res.attention_mass["boosted"]


def test_engines_agree_on_boilerplate_generation_and_batches_keep_each_rows_boilerplate(fast_engine, tl_engine):
    req = make_request(5.0, boilerplate_multiplier=0.3, target_mass=0.5, max_new_tokens=10)
    a, b = fast_engine.generate([req], attention=True)[0], tl_engine.generate([req], attention=True)[0]
    assert a.text == b.text and a.spans == b.spans == ((*fast_engine.prompt(req).span, 5.0),)
    for label in ("unboosted", "boosted"):
        assert a.attention_mass[label] == pytest.approx(b.attention_mass[label], abs=1e-4)
    reqs = [make_request(6.0, boilerplate_multiplier=0.2, max_new_tokens=12),
            make_request(6.0, max_new_tokens=12, query="Why do cats purr?"),
            make_request(1.0, boilerplate_multiplier=0.5, placement="prefix", max_new_tokens=12),
            make_request(2.0, boilerplate_multiplier=0.1, scope="generated", max_new_tokens=12,
                         instruction="Reply in all capital letters.")]
    batched = fast_engine.generate(reqs)
    assert [x.text for x in batched] == [fast_engine.generate([r])[0].text for r in reqs]
