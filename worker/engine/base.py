"""The engines' common interface: prompt building, left padding, decoding settings and result assembly.

An engine takes GenerationRequests (padded together) and returns GenerationResults; ``fast`` and ``lens``
differ only in how they apply the boost inside attention.
"""

from __future__ import annotations

import math
import functools
from dataclasses import dataclass, replace
from itertools import groupby
from typing import Callable, Sequence

import torch

from shared.errors import JobErrorCode, ValidationError
from shared.spec import GenerationParams, GenerationRequest, GenerationResult
from shared.streaming import cut_at_stop, final_text
from worker.engine.grammar import Grammars, grammar_rows
from worker.engine.loading import LoadedModel
from worker.engine.logits import RowProcessors, row_processors
from worker.engine.logprobs import StepRecorder, trim_section
from worker.engine.prompt import Prompt, build_chat_prompt, build_prompt
from worker.engine.steps import RowBudget, RowHalt, RowSampler, StepClock, as_hook


@dataclass
class PaddedRows:
    """Left-padded token ids for a group of prompts, with each row's (start, end, M) spans in padded coordinates."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    spans: list[list[tuple[int, int, float | None]]]
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
        if request.prompt_ids is not None:
            p = self._token_prompt(request)
        elif request.messages is not None:
            p = build_chat_prompt(self.tokenizer, request.messages, request.spec.placement)
        else:
            p = build_prompt(self.tokenizer, request.instruction, request.query, request.spec.placement)
        need = len(p.input_ids) + request.params.max_new_tokens
        if need > self.max_context:
            what = "the messages" if request.messages is not None else "the instruction or query"
            raise ValidationError(
                f"the prompt is {len(p.input_ids)} tokens; with max_new_tokens {request.params.max_new_tokens} it "
                f"exceeds the model's context of {self.max_context} tokens: shorten {what}",
                field="messages" if request.messages is not None else "query",
                code=JobErrorCode.context_length_exceeded)
        vocab = len(self.tokenizer)
        if any(token >= vocab for token, _ in request.params.logit_bias):
            raise ValidationError(f"logit_bias names token ids past {self.model_name}'s vocabulary of {vocab} "
                                  f"tokens (0..{vocab - 1})", field="logit_bias")
        # Resolve early so a bad layer or head index fails before any compute.
        request.spec.resolve_heads(self.n_layers, self.n_heads)
        if request.grammar:
            self.grammars.compile(request.grammar)  # a schema the tokenizer cannot serve fails here, alone
        return p

    @functools.cached_property
    def grammars(self) -> Grammars:
        """The tokenizer's compiled response_format grammars (built on first use: about a second)."""
        return Grammars(self.tokenizer, self._eos_ids())

    def _token_prompt(self, request: GenerationRequest) -> Prompt:
        """Return a completion's prompt given as token ids, boosted at its token spans."""
        ids, vocab = list(request.prompt_ids), len(self.tokenizer)
        bad = [i for i in ids if not 0 <= i < vocab]
        if bad:
            raise ValidationError(f"prompt holds token id {bad[0]}, out of range for the model's vocabulary of "
                                  f"{vocab} tokens (0..{vocab - 1})", field="prompt", code=JobErrorCode.out_of_range)
        spans = request.prompt_spans
        if any(not 0 <= a < b <= len(ids) for a, b, _ in spans):
            raise ValidationError(f"instaboost.spans must lie within the prompt's {len(ids)} tokens", field="prompt")
        hull = (min(a for a, _, _ in spans), max(b for _, b, _ in spans)) if spans else (0, 0)
        return Prompt(text=self.tokenizer.decode(ids), input_ids=ids, span=hull, char_span=(0, 0), placement="raw",
                      spans=tuple(spans))

    def count_prompt_tokens(self, instruction: str, query: str, placement: str = "system") -> int:
        """Return the prompt's length in tokens for this model."""
        return len(build_prompt(self.tokenizer, instruction, query, placement).input_ids)

    def _pad(self, prompts: Sequence[Prompt]) -> PaddedRows:
        width = max(len(p.input_ids) for p in prompts)
        pad_id = self.tokenizer.pad_token_id
        ids, mask, spans, pads = [], [], [], []
        for p in prompts:
            n = width - len(p.input_ids)
            ids.append([pad_id] * n + p.input_ids)
            mask.append([0] * n + [1] * len(p.input_ids))
            spans.append([(a + n, b + n, m) for a, b, m in p.all_spans])
            pads.append(n)
        dev = self.device
        return PaddedRows(torch.tensor(ids, device=dev), torch.tensor(mask, device=dev), spans, pads)

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
        kwargs = {"generation_config": cfg}
        if params.stop:
            cfg.stop_strings = list(params.stop)
            kwargs["tokenizer"] = self.tokenizer  # generate() needs it to match stop strings
        return kwargs

    def _decode_kwargs(self, requests: Sequence[GenerationRequest], width: int, clock: StepClock,
                       halt: Callable[[int], bool] | None = None, pads: Sequence[int] | None = None,
                       recorder: StepRecorder | None = None) -> dict:
        """Return generate()'s arguments for rows that share stop strings but maybe nothing else.

        generate() decodes greedily up to the longest row's budget; each row's own logits processors
        (worker.engine.logits, built from its params, then its response_format grammar from worker.engine.grammar,
        last so that no bias can force a token the grammar forbids) reshape its scores first, then RowSampler draws
        the sampling rows' tokens with their own seeded generators and RowBudget ends each row at its own length.
        pads: each row's left padding (none when not given).
        """
        from transformers import LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        params = [r.params for r in requests]
        budgets = [p.max_new_tokens for p in params]
        kwargs = self._gen_kwargs(replace(params[0], max_new_tokens=max(budgets), temperature=0.0))
        criteria = [clock] + ([RowBudget(width, budgets)] if len(set(budgets)) > 1 else [])
        if halt is not None:
            criteria.append(RowHalt(halt))
        kwargs["stopping_criteria"] = StoppingCriteriaList([as_hook(StoppingCriteria, c) for c in criteria])
        pads = list(pads) if pads is not None else [0] * len(params)
        processors = [recorder] if recorder is not None else []  # first: it reads the raw logits
        processors += self._row_processors(requests, width, pads)
        if any(not p.greedy for p in params):
            processors.append(RowSampler(params, self.device))
        if processors:
            kwargs["logits_processor"] = LogitsProcessorList([as_hook(LogitsProcessor, p) for p in processors])
        return kwargs

    def _row_processors(self, requests: Sequence[GenerationRequest], width: int, pads: Sequence[int]) -> list:
        """Return the per-row processors (the seam other concerns extend), or [] when no row has one."""
        lens = [width - pad for pad in pads]  # each row's prompt without its padding (RowProcessors strips it)
        grammars = grammar_rows(self.grammars, requests, lens)
        procs = RowProcessors([row_processors(r.params, n) + ([g] if g is not None else [])
                               for r, n, g in zip(requests, lens, grammars)], list(pads))
        return [procs] if procs else []

    def generate(self, requests: Sequence[GenerationRequest], attention: bool = False,
                 on_text: Callable[[int, str], None] | None = None,
                 halt: Callable[[int], bool] | None = None) -> list[GenerationResult]:
        """Generate for every request; requests sharing decoding settings run as one batch.

        on_text(i, delta), when given, receives request i's text as it is produced; the deltas of a
        request join up to its result's text. halt(i), when given, is asked after every decoding step:
        True ends request i there (a cancelled job's row stops costing compute; its result is partial).
        """
        requests = list(requests)
        prompts = [self.prompt(r) for r in requests]
        results: list[GenerationResult | None] = [None] * len(requests)
        order = sorted(range(len(requests)), key=lambda i: params_key(requests[i].params))
        for _, group in groupby(order, key=lambda i: params_key(requests[i].params)):
            idx = list(group)
            relay = None if on_text is None else (lambda row, delta, idx=idx: on_text(idx[row], delta))
            stop = None if halt is None else (lambda row, idx=idx: halt(idx[row]))
            for i, res in zip(idx, self._generate_group([requests[i] for i in idx], [prompts[i] for i in idx],
                                                        attention, relay, stop)):
                results[i] = res
        return results  # type: ignore[return-value]

    def _generate_group(self, requests, prompts, attention, on_text=None, halt=None) -> list[GenerationResult]:
        raise NotImplementedError

    def _streamer(self, requests: Sequence[GenerationRequest], on_text):
        """Return a streamer for generate() that relays each row's text deltas, or None."""
        if on_text is None:
            return None
        from worker.engine.streaming import RowStreamer

        return RowStreamer(self.tokenizer, len(requests), self._eos_ids(), on_text, requests[0].params.stop,
                           budgets=[r.params.max_new_tokens for r in requests],
                           strips=[not r.exact_text for r in requests])

    def _finish(self, requests, prompts, padded: PaddedRows, sequences: torch.Tensor, seconds: float,
                masses, clock: StepClock | None = None, scored: Sequence[dict | None] = (),
                recorder: StepRecorder | None = None) -> list[GenerationResult]:
        width = padded.input_ids.shape[1]
        eos = self._eos_ids()
        out = []
        for row, (req, p) in enumerate(zip(requests, prompts)):
            gen = sequences[row, width:width + req.params.max_new_tokens].tolist()  # after its budget: padding
            # A row a stop string ended is padded afterwards; the pad token does not count as generated.
            n = content_length(gen, eos | ({self.tokenizer.pad_token_id} if req.params.stop else set()))
            if clock is not None:
                # In a padded group a row costs until its own last token (its EOS counts), not the group's whole time.
                seconds = clock.until_step(min(n + 1, len(gen)))
            decoded = self.tokenizer.decode(gen[:n], skip_special_tokens=True)
            text, stopped = final_text(decoded, req.params.stop, strip=not req.exact_text)
            spans = tuple((a, b, req.spec.multiplier if m is None else m) for a, b, m in p.spans)
            logprobs = None
            if req.logprobs is not None or req.prompt_logprobs is not None:
                output = recorder.row(self.tokenizer, row, gen[:n]) if req.logprobs is not None else None
                if output is not None and stopped:  # the stop string's tokens are not part of the text
                    output = trim_section(output, len(cut_at_stop(decoded, req.params.stop)[0]))
                logprobs = {"prompt": scored[row] if scored else None, "output": output}
            out.append(GenerationResult(text=text, prompt_tokens=len(p.input_ids), output_tokens=n,
                                        span=p.span, span_text=p.span_text, seconds=seconds,
                                        attention_mass=masses[row] if masses else None, spans=spans,
                                        finish_reason="stop" if stopped or n < len(gen) else "length",
                                        placement=p.placement, logprobs=logprobs))
        return out

    @property
    def plain_model(self):
        """The Hugging Face model as it runs without any boost (outside the engines' boost contexts)."""
        return self.loaded.model

    @torch.inference_mode()
    def perplexity(self, requests: Sequence[GenerationRequest], outputs: Sequence[str],
                   batch_size: int = 16) -> list[float | None]:
        """Return each output's perplexity after its request's prompt under the model WITHOUT the boost.

        exp of the mean negative log-likelihood of the output's tokens (re-encoded from the text), given
        the same prompt (chat template, placement, instruction and query). The requests' boosts are
        ignored: this scores how natural the text is to the plain model. One forward pass per group of
        rows (right-padded, no cache); None for an output without tokens.
        """
        if len(requests) != len(outputs):
            raise ValueError("perplexity needs one output per request")
        rows: list[tuple[int, list[int], list[int]]] = []
        result: list[float | None] = [None] * len(requests)
        for i, (req, text) in enumerate(zip(requests, outputs)):
            out_ids = self.tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
            if not out_ids:
                continue
            if req.messages is not None:
                p = build_chat_prompt(self.tokenizer, req.messages, req.spec.placement)
            else:
                p = build_prompt(self.tokenizer, req.instruction, req.query, req.spec.placement)
            prompt_ids = list(p.input_ids)
            room = self.max_context - len(prompt_ids)
            if room < 1:
                continue
            rows.append((i, prompt_ids, list(out_ids)[:room]))
        model = self.plain_model
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        # Longest rows together, so a padded group pads little; rows left-padded so every output ends at the last
        # position and only the last `keep` positions need logits (the vocabulary projection dominates).
        rows.sort(key=lambda r: len(r[1]) + len(r[2]), reverse=True)
        for start in range(0, len(rows), max(1, batch_size)):
            chunk = rows[start:start + batch_size]
            width = max(len(a) + len(b) for _, a, b in chunk)
            keep = max(len(b) for _, _, b in chunk) + 1
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, (_, a, b) in enumerate(chunk):
                seq = a + b
                ids[r, width - len(seq):] = torch.tensor(seq)
                mask[r, width - len(seq):] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                           position_ids=positions.to(self.device), use_cache=False, logits_to_keep=keep).logits
            for r, (i, a, b) in enumerate(chunk):
                # logits[:, j] predicts the token at position width - keep + j + 1.
                row = logits[r, keep - 1 - len(b):keep - 1].float()
                target = torch.tensor(b, device=row.device)
                nll = (torch.logsumexp(row, dim=-1) - row.gather(-1, target[:, None])[:, 0]).mean().item()
                result[i] = float(max(1.0, math.exp(min(nll, 690.0))))
        return result

    def _eos_ids(self) -> set[int]:
        eos = self.loaded.model.generation_config.eos_token_id
        if eos is None:
            eos = self.tokenizer.eos_token_id
        return set(eos if isinstance(eos, (list, tuple)) else [eos])

    def _analysis_inputs(self, padded: PaddedRows, sequences: torch.Tensor, budgets: Sequence[int]):
        """Return (attention mask, query selector) for re-reading a finished generation."""
        width = padded.input_ids.shape[1]
        eos = self._eos_ids()
        mask = torch.ones_like(sequences)
        mask[:, :width] = padded.attention_mask
        q_sel = torch.zeros_like(sequences, dtype=torch.bool)
        for row in range(sequences.shape[0]):
            gen = sequences[row, width:width + budgets[row]].tolist()
            n = min(content_length(gen, eos) + 1, len(gen))  # the EOS counts as generated here
            mask[row, width + n:] = 0
            # Positions width-1 .. width+n-2 are the queries whose outputs were the generated tokens.
            q_sel[row, width - 1:width + n - 1] = True
        return mask, q_sel

    def logits(self, request: GenerationRequest, continuation: Sequence[int] = ()) -> torch.Tensor:
        """Return the boosted next-token logits for every position of the prompt and then continuation, as float32
        [L, V]; the continuation's tokens count as generated ones (the boost's scope)."""
        raise NotImplementedError

    def _with_continuation(self, input_ids: torch.Tensor, continuation: Sequence[int]) -> torch.Tensor:
        """Return [1, L] prompt ids followed by the continuation's token ids."""
        if not continuation:
            return input_ids
        return torch.cat([input_ids, torch.tensor([list(continuation)], device=input_ids.device)], dim=1)


def content_length(generated: list[int], eos: set[int]) -> int:
    """Return how many generated tokens come before the first end-of-sequence token."""
    return next((k for k, t in enumerate(generated) if t in eos), len(generated))


def params_key(p: GenerationParams):
    # Rows with different lengths, temperatures, top-p and seeds share a padded group (RowSampler, RowBudget);
    # generate() matches stop strings for the whole padded group, so those still split it.
    return (p.stop,)


def processed_length(args, kwargs) -> int | None:
    """Return how many positions a causal LM forward has seen once it ends: cached ones plus its inputs.

    Read by a forward pre-hook (with_kwargs) on the model, before the cache is updated. Sliding-window caches
    hand attention only the last keys, so both engines need this to map key index to absolute position.
    """
    x = kwargs.get("input_ids", args[0] if args else None)
    if x is None:
        x = kwargs.get("inputs_embeds")
    if x is None:
        return None
    past = kwargs.get("past_key_values")
    seen = past.get_seq_length() if past is not None and hasattr(past, "get_seq_length") else 0
    return int(seen) + int(x.shape[1])
