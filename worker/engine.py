"""Two engines behind one interface: the TransformerLens hook reference and the fused-attention fast path.

Both take a batch of GenerationRequests and return GenerationResults. Hooks and biases attach only
inside context managers that always detach them, so a failed job never leaves a model boosted.
"""

from __future__ import annotations

import contextlib
import contextvars
import threading
import time
from dataclasses import dataclass, field
from itertools import groupby
from typing import Sequence

import torch

from shared.errors import ModelError, ValidationError
from shared.spec import ENGINES, GenerationParams, GenerationRequest, GenerationResult
from worker import boost as B
from worker.loading import LoadedModel, get_model, resolve_model
from worker.prompt import Prompt, build_prompt

ATTN_NAME = "instaboost_sdpa"


@dataclass
class _Batch:
    """Left-padded token ids for a group of prompts, with spans in padded coordinates."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    spans: list[tuple[int, int]]
    pads: list[int]


class Engine:
    """Shared plumbing: prompt building, batching, decoding, result assembly."""

    kind = "base"

    def __init__(self, loaded: LoadedModel):
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.model_name = loaded.source.name

    @property
    def n_layers(self) -> int:
        return self.loaded.n_layers

    @property
    def n_heads(self) -> int:
        return self.loaded.n_heads

    @property
    def max_context(self) -> int:
        return self.loaded.max_context

    @property
    def device(self) -> str:
        return self.loaded.device

    def prompt(self, request: GenerationRequest) -> Prompt:
        """Build the prompt and check it fits the context with its new tokens."""
        p = build_prompt(self.tokenizer, request.instruction, request.query, request.spec.placement)
        need = len(p.input_ids) + request.params.max_new_tokens
        if need > self.max_context:
            raise ValidationError(
                f"the prompt is {len(p.input_ids)} tokens; with max_new_tokens {request.params.max_new_tokens} it "
                f"exceeds the model's context of {self.max_context} tokens: shorten the instruction or query",
                field="query")
        # Resolve early so a bad layer or head index fails before any compute.
        request.spec.resolve_heads(self.n_layers, self.n_heads)
        return p

    def count_prompt_tokens(self, instruction: str, query: str, placement: str = "system") -> int:
        """Return the prompt's length in tokens for this model."""
        return len(build_prompt(self.tokenizer, instruction, query, placement).input_ids)

    def _pad(self, prompts: Sequence[Prompt]) -> _Batch:
        width = max(len(p.input_ids) for p in prompts)
        pad_id = self.tokenizer.pad_token_id
        ids, mask, spans, pads = [], [], [], []
        for p in prompts:
            n = width - len(p.input_ids)
            ids.append([pad_id] * n + p.input_ids)
            mask.append([0] * n + [1] * len(p.input_ids))
            spans.append((p.span[0] + n, p.span[1] + n))
            pads.append(n)
        dev = self.device
        return _Batch(torch.tensor(ids, device=dev), torch.tensor(mask, device=dev), spans, pads)

    def _gen_kwargs(self, params: GenerationParams) -> dict:
        from transformers import GenerationConfig

        base = self.loaded.model.generation_config
        cfg = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=not params.greedy,
            temperature=params.temperature if not params.greedy else None,
            top_p=params.top_p if not params.greedy else None,
            top_k=None,
            eos_token_id=base.eos_token_id if base.eos_token_id is not None else self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            bos_token_id=base.bos_token_id,
        )
        return {"generation_config": cfg}

    def generate(self, requests: Sequence[GenerationRequest], attention: bool = False) -> list[GenerationResult]:
        """Generate for every request; requests sharing decoding settings run as one batch."""
        requests = list(requests)
        prompts = [self.prompt(r) for r in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: _params_key(requests[i].params))
        for _, group in groupby(order, key=lambda i: _params_key(requests[i].params)):
            idx = list(group)
            for i, res in zip(idx, self._generate_group([requests[i] for i in idx], [prompts[i] for i in idx],
                                                        attention)):
                results[i] = res
        return results  # type: ignore[return-value]

    def _generate_group(self, requests, prompts, attention) -> list[GenerationResult]:
        raise NotImplementedError

    def _finish(self, requests, prompts, batch: _Batch, sequences: torch.Tensor, seconds: float,
                masses) -> list[GenerationResult]:
        width = batch.input_ids.shape[1]
        eos = self._eos_ids()
        out = []
        for row, (req, p) in enumerate(zip(requests, prompts)):
            gen = sequences[row, width:].tolist()
            n = _content_length(gen, eos)
            text = self.tokenizer.decode(gen[:n], skip_special_tokens=True)
            out.append(GenerationResult(text=text.strip(), prompt_tokens=len(p.input_ids), output_tokens=n,
                                        span=p.span, span_text=p.span_text, seconds=seconds,
                                        attention_mass=masses[row] if masses else None))
        return out

    def _eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos])

    def _analysis_inputs(self, batch: _Batch, sequences: torch.Tensor):
        """Return (attention mask, query selector) for re-reading a finished generation."""
        width = batch.input_ids.shape[1]
        eos = self._eos_ids()
        mask = torch.ones_like(sequences)
        mask[:, :width] = batch.attention_mask
        q_sel = torch.zeros_like(sequences, dtype=torch.bool)
        for row in range(sequences.shape[0]):
            gen = sequences[row, width:].tolist()
            n = min(_content_length(gen, eos) + 1, len(gen))  # the EOS counts as generated here
            mask[row, width + n:] = 0
            # Positions width-1 .. width+n-2 are the queries whose outputs were the generated tokens.
            q_sel[row, width - 1:width + n - 1] = True
        return mask, q_sel

    def logits(self, request: GenerationRequest) -> torch.Tensor:
        """Return the boosted next-token logits for every prompt position, as float32 [L, V]."""
        raise NotImplementedError


def _content_length(generated: list[int], eos: set[int]) -> int:
    """Return how many generated tokens come before the first end-of-sequence token."""
    return next((k for k, t in enumerate(generated) if t in eos), len(generated))


def _params_key(p: GenerationParams):
    return (p.max_new_tokens, p.temperature, p.top_p, p.seed)


def _seed(params: GenerationParams) -> None:
    if not params.greedy:
        torch.manual_seed(params.seed)


# ---------------------------------------------------------------- fast path: bias inside SDPA

@dataclass
class _FastState:
    boost: B.BatchBoost | None
    record: dict | None = None  # layer -> [B] mass, filled during an analysis pass
    q_sel: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    capacity: int = 0  # key positions the cached biases cover (prompt + new tokens)
    _cache: dict = field(default_factory=dict)

    def bias(self, layer: int, kv_len: int, dtype) -> torch.Tensor | None:
        """Return the layer's bias for kv_len keys; built once per generate, then sliced per step."""
        if self.boost is None or layer not in self.boost.heads:
            return None
        hit = self._cache.get(layer)
        if hit is None or hit.shape[-1] < kv_len or hit.dtype != dtype:
            hit = B.bias_for_layer(self.boost, layer, max(kv_len, self.capacity), dtype)
            if bool((hit == hit[:, :1]).all()):
                hit = hit[:, :1].contiguous()  # same for every head: a [B, 1, 1, K] mask broadcasts for free
            self._cache[layer] = hit
        return hit[..., :kv_len]


_ACTIVE: contextvars.ContextVar[_FastState | None] = contextvars.ContextVar("instaboost_fast", default=None)
_registered = threading.Lock()
_is_registered = False


def _instaboost_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA with the active row-wise log-M bias added to the instruction keys' scores."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state = _ACTIVE.get()
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bias = state.bias(module.layer_idx, key.shape[2], query.dtype)
    if state.record is not None:
        return _eager_with_record(module, query, key, value, attention_mask, bias, state, **kwargs)
    if bias is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, position_bias=bias, **kwargs)


def _eager_with_record(module, query, key, value, attention_mask, bias, state, scaling=None, **kwargs):
    """Compute attention explicitly so the instruction mass can be read; used only for analysis passes."""
    from transformers.integrations.sdpa_attention import repeat_kv

    groups = getattr(module, "num_key_value_groups", 1)
    k, v = repeat_kv(key, groups), repeat_kv(value, groups)
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    scores = torch.matmul(query.float(), k.float().transpose(2, 3)) * scaling
    q_len, kv_len = query.shape[2], k.shape[2]
    if attention_mask is None:
        allowed = torch.ones(q_len, kv_len, dtype=torch.bool, device=query.device).tril(kv_len - q_len)
        attention_mask = allowed[None, None]
    if attention_mask.dtype == torch.bool:
        scores = scores.masked_fill(~attention_mask, float("-inf"))
    else:
        scores = scores + attention_mask.float()
    if bias is not None:
        scores = scores + bias.float()
    weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    state.record[module.layer_idx] = B.instruction_mass(weights, state.keys, state.q_sel)
    out = torch.matmul(weights.to(v.dtype), v).transpose(1, 2).contiguous()
    return out, None


def _register_attention() -> None:
    global _is_registered
    with _registered:
        if _is_registered:
            return
        from transformers import AttentionInterface
        from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

        AttentionInterface.register(ATTN_NAME, _instaboost_attention)
        ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)
        _is_registered = True


@contextlib.contextmanager
def fast_boost(boost: B.BatchBoost | None, capacity: int = 0):
    """Activate a batch boost for the fast attention function; always deactivates on exit."""
    token = _ACTIVE.set(_FastState(boost, capacity=capacity))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class FastEngine(Engine):
    """Additive log-M bias on the instruction keys inside SDPA, KV cache on, per-row spans and M."""

    kind = "fast"

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        _register_attention()
        try:
            loaded.model.set_attn_implementation(ATTN_NAME)
        except (ValueError, NotImplementedError) as exc:
            raise ModelError(f"{loaded.source.name} cannot run the fast engine ({exc}); "
                             "use engine 'transformerlens'", field="engine") from None
        if loaded.model.config._attn_implementation != ATTN_NAME:
            # Models that don't dispatch attention through transformers' registry would silently run unboosted.
            raise ModelError(f"{loaded.source.name} does not route attention through transformers' attention "
                             "registry, so the fast engine cannot boost it; use engine 'transformerlens'",
                             field="engine")

    def _boost_for(self, requests, batch: _Batch, length: int) -> B.BatchBoost | None:
        if all(r.spec.is_identity for r in requests):
            return None  # M = 1 everywhere: run SDPA exactly as plain generation does
        return B.build_batch_boost([r.spec for r in requests], batch.spans, length, self.n_layers,
                                   self.n_heads, self.device)

    @torch.inference_mode()
    def _generate_group(self, requests, prompts, attention):
        batch = self._pad(prompts)
        params = requests[0].params
        boost = self._boost_for(requests, batch, batch.input_ids.shape[1])
        _seed(params)
        t0 = time.perf_counter()
        with fast_boost(boost, capacity=batch.input_ids.shape[1] + params.max_new_tokens):
            seq = self.loaded.model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                             **self._gen_kwargs(params))
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        masses = self._attention_mass(requests, batch, seq) if attention else None
        return self._finish(requests, prompts, batch, seq, seconds, masses)

    def _attention_mass(self, requests, batch, seq):
        mask, q_sel = self._analysis_inputs(batch, seq)
        boost = B.build_batch_boost([r.spec for r in requests], batch.spans, seq.shape[1], self.n_layers,
                                    self.n_heads, self.device)
        out = {}
        for label, b in (("unboosted", None), ("boosted", boost)):
            state = _FastState(b, record={}, q_sel=q_sel, keys=boost.key_mask)
            token = _ACTIVE.set(state)
            try:
                self.loaded.model(input_ids=seq, attention_mask=mask, use_cache=False)
            finally:
                _ACTIVE.reset(token)
            out[label] = torch.stack([state.record[layer] for layer in range(self.n_layers)], dim=1)  # [B, L]
        return [{k: [round(float(x), 6) for x in v[row]] for k, v in out.items()} for row in range(seq.shape[0])]

    @torch.inference_mode()
    def logits(self, request: GenerationRequest) -> torch.Tensor:
        p = self.prompt(request)
        batch = self._pad([p])
        with fast_boost(self._boost_for([request], batch, batch.input_ids.shape[1])):
            return self.loaded.model(input_ids=batch.input_ids).logits[0].float()


# ---------------------------------------------------------------- reference: TransformerLens hooks

class TransformerLensEngine(Engine):
    """TransformerBridge with a hook on blocks.{i}.attn.hook_pattern: multiply by M, renormalize."""

    kind = "transformerlens"

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        from transformer_lens.model_bridge import TransformerBridge

        hub = loaded.source.hub_name or getattr(loaded.model.config, "_name_or_path", "") or loaded.source.name
        self.bridge = TransformerBridge.boot_transformers(hub, hf_model=loaded.model, tokenizer=loaded.tokenizer)

    @contextlib.contextmanager
    def hooked(self, boost: B.BatchBoost | None, record: dict | None = None, keys=None, q_sel=None):
        """Attach the pattern hooks (boost, optionally record) for a block; always removes them."""
        hooks = []
        for layer in range(self.n_layers):
            boost_hook = B.make_pattern_hook(boost, layer) if boost is not None and layer in boost.heads else None
            if boost_hook is None and record is None:
                continue
            hooks.append((f"blocks.{layer}.attn.hook_pattern", _chain(boost_hook, record, layer, keys, q_sel)))
        with self.bridge.hooks(fwd_hooks=hooks):
            yield

    def _boost_for(self, request, prompt, length):
        # M = 1 still runs through the hook: the reference shows the hook itself is the identity.
        return B.build_batch_boost([request.spec], [prompt.span], length, self.n_layers, self.n_heads, self.device,
                                   keep_identity=True)

    @torch.inference_mode()
    def _generate_group(self, requests, prompts, attention):
        # The reference runs one request at a time: no padding, nothing to get wrong.
        out = []
        for req, p in zip(requests, prompts):
            batch = self._pad([p])
            boost = self._boost_for(req, p, batch.input_ids.shape[1])
            _seed(req.params)
            t0 = time.perf_counter()
            with self.hooked(boost):
                seq = self.bridge.original_model.generate(input_ids=batch.input_ids,
                                                          attention_mask=batch.attention_mask,
                                                          **self._gen_kwargs(req.params))
            seconds = time.perf_counter() - t0
            masses = self._attention_mass(req, p, batch, seq) if attention else None
            out.extend(self._finish([req], [p], batch, seq, seconds, masses))
        return out

    def _attention_mass(self, req, p, batch, seq):
        mask, q_sel = self._analysis_inputs(batch, seq)
        boost = B.build_batch_boost([req.spec], batch.spans, seq.shape[1], self.n_layers, self.n_heads,
                                    self.device)
        res = {}
        for label, b in (("unboosted", None), ("boosted", boost)):
            record: dict = {}
            with self.hooked(b, record, boost.key_mask, q_sel):
                self.bridge.original_model(input_ids=seq, attention_mask=mask, use_cache=False)
            res[label] = [round(float(record[layer][0]), 6) for layer in range(self.n_layers)]
        return [res]

    @torch.inference_mode()
    def logits(self, request: GenerationRequest) -> torch.Tensor:
        p = self.prompt(request)
        batch = self._pad([p])
        with self.hooked(self._boost_for(request, p, batch.input_ids.shape[1])):
            return self.bridge.original_model(input_ids=batch.input_ids).logits[0].float()

    @torch.inference_mode()
    def generate_uncached(self, request: GenerationRequest) -> list[int]:
        """Greedy-decode without the KV cache (a check on cached decoding); return the new token ids."""
        p = self.prompt(request)
        batch = self._pad([p])
        kwargs = self._gen_kwargs(request.params)
        kwargs["generation_config"].use_cache = False
        with self.hooked(self._boost_for(request, p, batch.input_ids.shape[1])):
            seq = self.bridge.original_model.generate(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                                      **kwargs)
        return seq[0, batch.input_ids.shape[1]:].tolist()


def _chain(boost_hook, record, layer, keys, q_sel):
    def hook(pattern, hook=None):
        if boost_hook is not None:
            pattern = boost_hook(pattern, hook)
        if record is not None:
            record[layer] = B.instruction_mass(pattern, keys, q_sel)
        return pattern

    return hook


# ---------------------------------------------------------------- registry

_ENGINES: dict[tuple, Engine] = {}
_engines_lock = threading.Lock()


def get_engine(model_name: str | None = None, engine: str = "fast", device: str | None = None,
               dtype: str | None = None) -> Engine:
    """Return the process-wide engine for a model, loading the model on first use."""
    from shared.settings import get_settings

    s = get_settings()
    model_name = model_name or s["model.name"]
    device = device or s["model.device"]
    dtype = dtype or s["model.dtype"]
    if engine not in ENGINES:
        raise ValidationError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}", field="engine")
    key = (resolve_model(model_name).name, engine, device, dtype)
    with _engines_lock:
        if key not in _ENGINES:
            loaded = get_model(model_name, device, dtype, purpose=engine)
            _ENGINES[key] = (FastEngine if engine == "fast" else TransformerLensEngine)(loaded)
        return _ENGINES[key]
