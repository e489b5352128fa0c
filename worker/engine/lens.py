"""The reference engine: a TransformerLens hook on ``blocks.{i}.attn.hook_pattern`` that multiplies by M and renormalizes.

It runs a ``TransformerBridge`` around its own copy of the model (the bridge rewires the modules it
wraps), one request at a time, and doubles as the analysis tool. Hooks attach only inside
``bridge.hooks(...)``, which always removes them.
"""

from __future__ import annotations

import contextlib
import time
from typing import Sequence

import torch

from shared.spec import GenerationRequest
from worker.engine.base import Engine, processed_length
from worker.engine.boost import PaddedBoost, build_padded_boost, instruction_mass, make_pattern_hook
from worker.engine.loading import LoadedModel
from worker.engine.logprobs import decode
from worker.engine.steps import StepClock


class TransformerLensEngine(Engine):
    """TransformerBridge with a hook on blocks.{i}.attn.hook_pattern: multiply by M, renormalize."""

    kind = "transformerlens"

    def __init__(self, loaded: LoadedModel):
        super().__init__(loaded)
        from transformer_lens.model_bridge import TransformerBridge

        hub = loaded.source.hub_name or getattr(loaded.model.config, "_name_or_path", "") or loaded.source.name
        self.bridge = TransformerBridge.boot_transformers(hub, hf_model=loaded.model, tokenizer=loaded.tokenizer)

    @property
    def plain_model(self):
        return self.bridge.original_model  # the hooks run only inside hooked()

    @contextlib.contextmanager
    def hooked(self, boost: PaddedBoost | None, record: dict | None = None, keys=None, q_sel=None):
        """Attach the pattern hooks (boost, optionally record) for a block; always removes them."""
        seen: dict = {}  # positions processed once the running forward ends, for sliding-window caches

        def track(module, args, kwargs):
            seen["total"] = processed_length(args, kwargs)

        hooks = []
        for layer in range(self.n_layers):
            boost_hook = (make_pattern_hook(boost, layer, total=lambda: seen.get("total"))
                          if boost is not None and layer in boost.heads else None)
            if boost_hook is None and record is None:
                continue
            hooks.append((f"blocks.{layer}.attn.hook_pattern", _chain(boost_hook, record, layer, keys, q_sel)))
        handle = self.bridge.original_model.register_forward_pre_hook(track, with_kwargs=True)
        try:
            with self.bridge.hooks(fwd_hooks=hooks):
                yield
        finally:
            handle.remove()

    def _boost_for(self, request, prompt, length):
        # M = 1 still runs through the hook: the reference shows the hook itself is the identity.
        return build_padded_boost([request.spec], [list(prompt.all_spans)], length, self.n_layers, self.n_heads,
                                 self.device, keep_identity=True, prompt_len=len(prompt.input_ids))

    @torch.inference_mode()
    def _generate_group(self, requests, prompts, attention, on_text=None, halt=None):
        # The reference runs one request at a time: no padding, nothing to get wrong.
        out = []
        for row, (req, p) in enumerate(zip(requests, prompts)):
            padded = self._pad([p])
            boost = self._boost_for(req, p, padded.input_ids.shape[1])
            relay = None if on_text is None else (lambda _r, delta, row=row: on_text(row, delta))
            stop = None if halt is None else (lambda _r, row=row: halt(row))
            clock = StepClock()
            with self.hooked(boost):
                seq, scored, recorder = decode(self, self.bridge.original_model, [req], [p], padded, clock, relay, stop)
            seconds = time.perf_counter() - clock.start
            masses = self._attention_mass(req, p, padded, seq) if attention else None
            out.extend(self._finish([req], [p], padded, seq, seconds, masses, None, scored, recorder))
        return out

    def _attention_mass(self, req, p, padded, seq):
        mask, q_sel = self._analysis_inputs(padded, seq, [req.params.max_new_tokens])
        boost = build_padded_boost([req.spec], padded.spans, seq.shape[1], self.n_layers, self.n_heads,
                                  self.device, prompt_len=padded.input_ids.shape[1])
        res = {}
        for label, b in (("unboosted", None), ("boosted", boost)):
            record: dict = {}
            with self.hooked(b, record, boost.key_mask, q_sel):
                self.bridge.original_model(input_ids=seq, attention_mask=mask, use_cache=False)
            res[label] = [round(float(record[layer][0]), 6) for layer in range(self.n_layers)]
        return [res]

    @torch.inference_mode()
    def logits(self, request: GenerationRequest, continuation: Sequence[int] = ()) -> torch.Tensor:
        p = self.prompt(request)
        padded = self._pad([p])
        ids = self._with_continuation(padded.input_ids, continuation)
        with self.hooked(self._boost_for(request, p, ids.shape[1])):
            return self.bridge.original_model(input_ids=ids).logits[0].float()

    @torch.inference_mode()
    def generate_uncached(self, request: GenerationRequest) -> list[int]:
        """Greedy-decode without the KV cache (a check on cached decoding); return the new token ids."""
        p = self.prompt(request)
        padded = self._pad([p])
        kwargs = self._gen_kwargs(request.params)
        kwargs["generation_config"].use_cache = False
        with self.hooked(self._boost_for(request, p, padded.input_ids.shape[1])):
            seq = self.bridge.original_model.generate(input_ids=padded.input_ids, attention_mask=padded.attention_mask,
                                                      **kwargs)
        return seq[0, padded.input_ids.shape[1]:].tolist()


def _chain(boost_hook, record, layer, keys, q_sel):
    def hook(pattern, hook=None):
        if boost_hook is not None:
            pattern = boost_hook(pattern, hook)
        if record is not None:
            record[layer] = instruction_mass(pattern, keys, q_sel)
        return pattern

    return hook
