"""The fast engine: InstaBoost as an additive log-M bias on the boosted keys inside fused attention.

``softmax(s + log f)`` equals the hook's multiply-and-renormalize, so the same boost runs inside
transformers' SDPA path (registered as ``instaboost_sdpa``) with the KV cache on and, per row,
its own spans, each with its own M. The bias is active only inside ``fast_boost``, a context variable
that is always reset, so a failed generation never leaves the model boosted.

Per row, a scope zeroes the bias on the queries it leaves alone, and a target mass p adds log F per
(head, query) from the share a that an extra SDPA pass measures (``_effective_bias``): that pass runs only in
forwards where some row has a target, and costs one attention with an 8-wide value per boosted layer.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import time
from dataclasses import dataclass, field
from typing import Sequence

import torch

from shared.errors import ModelError
from shared.spec import GenerationRequest
from worker.engine.base import PaddedRows, Engine, processed_length
from worker.engine.boost import (PaddedBoost, bias_for_layer, build_padded_boost, instruction_mass_sum, key_offset,
                                 key_window, query_gate, target_cells, target_log_factors)
from worker.engine.loading import LoadedModel
from worker.engine.logprobs import decode
from worker.engine.steps import StepClock

ATTN_NAME = "instaboost_sdpa"
ANALYSIS_BLOCK = 128  # queries measured at once by the attention analysis: B x H x 128 x K floats


@dataclass
class _FastState:
    boost: PaddedBoost | None
    record: dict | None = None  # layer -> [B] mass, filled during an analysis pass
    q_sel: torch.Tensor | None = None
    keys: torch.Tensor | None = None
    capacity: int = 0  # key positions the cached biases cover (prompt + new tokens)
    total: int | None = None  # positions processed once the running forward ends (set by _track_total)
    _cache: dict = field(default_factory=dict)

    def bias(self, layer: int, kv_len: int, dtype) -> torch.Tensor | None:
        """Return the layer's bias for its kv_len keys; built once per generate over absolute positions, then
        sliced per step to the keys the layer sees (the last kv_len of a sliding-window cache)."""
        if self.boost is None or layer not in self.boost.heads:
            return None
        start = key_offset(kv_len, self.total)
        cached = self._cache.get(layer)
        if cached is None or cached.shape[-1] < start + kv_len or cached.dtype != dtype:
            cached = bias_for_layer(self.boost, layer, max(start + kv_len, self.capacity), dtype)
            if bool((cached == cached[:, :1]).all()):
                cached = cached[:, :1].contiguous()  # same for every head: a [B, 1, 1, K] mask broadcasts for free
            self._cache[layer] = cached
        return cached[..., start:start + kv_len]


_ACTIVE: contextvars.ContextVar[_FastState | None] = contextvars.ContextVar("instaboost_fast", default=None)


SHARE_CHANNELS = 8  # the share pass's value width: an indicator repeated, a size every SDPA kernel takes


def _effective_bias(module, query, key, attention_mask, state: _FastState, **kwargs) -> torch.Tensor | None:
    """Return this forward's bias: log M on the boosted cells, plus log F for target-mass rows, on the queries
    each row's scope boosts; None when nothing here is boosted.

    The target needs each head's share a on the boosted keys after M: one extra SDPA over the same queries,
    keys, mask and M bias, whose values are the boosted keys' indicator, so its output is a itself.
    """
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layer, kv_len, q_len = module.layer_idx, key.shape[2], query.shape[2]
    bias = state.bias(layer, kv_len, query.dtype)
    boost = state.boost
    if bias is None:
        return None
    gate = query_gate(boost, q_len, kv_len, state.total)
    if gate is not None:
        gate = gate.to(query.device)
        if not bool(gate.any()):
            return None  # no row's scope boosts these queries (e.g. scope "prompt" while decoding)
    zero = torch.zeros((), dtype=query.dtype, device=query.device)
    targeted = boost.target is not None and ~torch.isnan(boost.target)
    if targeted is not False and gate is not None:
        targeted = targeted & gate.any(-1).to(targeted.device)  # rows the scope boosts in this forward
    if targeted is not False and bool(targeted.any()):
        ind = key_window(boost.key_mask, kv_len, state.total).to(query.device, query.dtype)
        values = ind[:, None, :, None].expand(key.shape[0], key.shape[1], kv_len, SHARE_CHANNELS)
        share, _ = sdpa_attention_forward(module, query, key, values, attention_mask, position_bias=bias, **kwargs)
        log_f = target_log_factors(share[..., 0].transpose(1, 2), boost.target).to(query.dtype)  # [B, H, Q]
        cells = target_cells(boost, layer, kv_len, state.total).to(query.device)
        bias = bias + torch.where(cells, log_f[..., None], zero)
    if gate is not None:
        bias = torch.where(gate[:, None, :, None], bias, zero)
    return bias


def _instaboost_attention(module, query, key, value, attention_mask, **kwargs):
    """SDPA with the active row-wise bias (log M, and log F for a target mass) added to the boosted keys' scores."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    state = _ACTIVE.get()
    if state is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    bias = _effective_bias(module, query, key, attention_mask, state, **kwargs)
    if state.record is not None:
        return _sdpa_with_record(module, query, key, value, attention_mask, bias, state, **kwargs)
    if bias is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return sdpa_attention_forward(module, query, key, value, attention_mask, position_bias=bias, **kwargs)


def _sdpa_with_record(module, query, key, value, attention_mask, bias, state, scaling=None, **kwargs):
    """Run the layer's attention as usual and record its instruction mass, in bounded memory (analysis passes).

    Only the queries whose outputs were generated tokens are measured, ANALYSIS_BLOCK of them at a time,
    so the explicit [B, H, Q, K] weights of a long prompt are never held at once: memory grows with K,
    not with Q x K.
    """
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    out = sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, position_bias=bias,
                                 **kwargs)
    k = repeat_kv(key, getattr(module, "num_key_value_groups", 1)).float()
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    q_len, kv_len = query.shape[2], k.shape[2]
    sel = state.q_sel[:, -q_len:]
    rows = sel.any(0).nonzero().flatten()
    total = torch.zeros(query.shape[0], dtype=torch.float32, device=query.device)
    first, last = (int(rows.min()), int(rows.max()) + 1) if rows.numel() else (0, 0)
    for a in range(first, last, ANALYSIS_BLOCK):
        b = min(a + ANALYSIS_BLOCK, last)
        scores = torch.matmul(query[:, :, a:b].float(), k.transpose(2, 3)) * scaling  # [B, H, b-a, K]
        if attention_mask is None:  # causal: query i sees keys up to i + (K - Q)
            allowed = torch.ones(b - a, kv_len, dtype=torch.bool, device=query.device).tril(a + kv_len - q_len)
            scores = scores.masked_fill(~allowed[None, None], float("-inf"))
        else:
            mask = attention_mask if attention_mask.shape[2] == 1 else attention_mask[:, :, a:b]
            scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask.float()
        if bias is not None:
            scores = scores + (bias[:, :, a:b] if bias.shape[2] > 1 else bias).float()
        weights = torch.softmax(scores, dim=-1).nan_to_num(0.0)
        total += instruction_mass_sum(weights, state.keys, sel[:, a:b])
    state.record[module.layer_idx] = total / sel.sum(-1).clamp_min(1)
    return out


def _track_total(module, args, kwargs) -> None:
    """Forward pre-hook on the fast engine's model: tell the active state how many positions this forward ends at."""
    state = _ACTIVE.get()
    if state is not None:
        state.total = processed_length(args, kwargs)


@functools.cache
def register_attention() -> None:
    """Register instaboost_sdpa with transformers' attention and mask registries (once per process)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(ATTN_NAME, _instaboost_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(ATTN_NAME, sdpa_mask)


@contextlib.contextmanager
def fast_boost(boost: PaddedBoost | None, capacity: int = 0):
    """Activate a padded group boost for the fast attention function; always deactivates on exit."""
    with active_state(boost_state(boost, capacity)):
        yield


def boost_state(boost: PaddedBoost | None, capacity: int = 0) -> _FastState:
    """Return a boost's state for active_state; it keeps its biases across forwards (continuous decoding)."""
    return _FastState(boost, capacity=capacity)


@contextlib.contextmanager
def active_state(state: _FastState):
    """Activate a boost state for the fast attention function; always deactivates on exit."""
    token = _ACTIVE.set(state)
    try:
        yield
    finally:
        _ACTIVE.reset(token)


class FastEngine(Engine):
    """Additive log-M bias on the boosted keys inside SDPA, KV cache on, per-row spans each with its own M."""

    kind = "fast"

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        register_attention()
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
        if not getattr(loaded.model, "_instaboost_tracks_total", False):
            loaded.model.register_forward_pre_hook(_track_total, with_kwargs=True)
            loaded.model._instaboost_tracks_total = True

    def _boost_for(self, requests, padded: PaddedRows, length: int) -> PaddedBoost | None:
        if all(r.is_identity for r in requests):
            return None  # M = 1 everywhere: run SDPA exactly as plain generation does
        return build_padded_boost([r.spec for r in requests], padded.spans, length, self.n_layers,
                                 self.n_heads, self.device, prompt_len=padded.input_ids.shape[1])

    @torch.inference_mode()
    def _generate_group(self, requests, prompts, attention, on_text=None, halt=None):
        padded = self._pad(prompts)
        width = padded.input_ids.shape[1]
        boost = self._boost_for(requests, padded, width)
        clock = StepClock()
        with fast_boost(boost, capacity=width + max(r.params.max_new_tokens for r in requests)):
            seq, scored, recorder = decode(self, self.loaded.model, requests, prompts, padded, clock, on_text, halt)
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - clock.start
        masses = self._attention_mass(requests, padded, seq) if attention else None
        return self._finish(requests, prompts, padded, seq, seconds, masses, clock if len(requests) > 1 else None,
                            scored, recorder)

    def _attention_mass(self, requests, padded, seq):
        mask, q_sel = self._analysis_inputs(padded, seq, [r.params.max_new_tokens for r in requests])
        boost = build_padded_boost([r.spec for r in requests], padded.spans, seq.shape[1], self.n_layers,
                                  self.n_heads, self.device, prompt_len=padded.input_ids.shape[1])
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
    def logits(self, request: GenerationRequest, continuation: Sequence[int] = ()) -> torch.Tensor:
        p = self.prompt(request)
        padded = self._pad([p])
        ids = self._with_continuation(padded.input_ids, continuation)
        with fast_boost(self._boost_for([request], padded, ids.shape[1])):
            return self.loaded.model(input_ids=ids).logits[0].float()
