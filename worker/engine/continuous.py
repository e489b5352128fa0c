"""Continuous batching over the fast engine: rows join and leave between decoding steps.

A ``ContinuousDecoder`` holds the running rows' keys and values in ONE packed, left-padded DynamicCache
(``worker.engine.packed``). Each ``step()``:

1. decodes one token for every running row (one forward of [rows, 1] over the packed cache);
2. retires the rows that finished (EOS, their own max_new_tokens, a stop string, a halt): their cache rows are
   dropped and the padding every remaining row shares is trimmed, and their results are returned at once;
3. admits waiting rows up to ``max_rows``: their prompts are prefilled together (left-padded among
   themselves, their own boost), their first token is chosen, and their cache is merged into the running one.
   With a token budget (``worker.step_token_budget``) a step processes at most that many tokens: each running
   row's decoded token counts 1, a prefill chunk its rows times its columns. Joining rows are grouped only
   while the group fits whole in what is left; a longer prompt is prefilled alone, a chunk per step, in its
   own cache (``worker.engine.prefill``), and joins once all of it is in. Groups holding interactive rows are
   served first, before the running rows' forward (step 1): an interactive row's first token comes from its
   prefill and does not wait for the batch's decoding; it then decodes with the others in the same step. So a
   long prompt joining stalls the running rows by at most the budget per step.

Why a packed cache rather than one DynamicCache per row re-padded every step: a decoding step then reads the
cache as plain generate() does (no copy), and the cache is rebuilt only when a row joins or leaves (a
concatenation or an index_select, like generate()'s own beam reordering). Per-row caches stacked every step
would copy every row's whole cache at every token: for SmolLM2-135M at 32 rows of 500 positions about
0.7 GB a step, more than the step's compute on CPU. A paged cache would avoid padding but needs an attention
kernel that reads pages; on CPU with SDPA the left padding costs only masked columns, and trimming the shared
padding whenever a row leaves keeps it to the spread of the running rows' lengths.

Each row keeps everything that makes its tokens its own: its spans with their M (a PaddedBoost rebuilt over
the rows' padded coordinates whenever rows join or leave), layers and heads, its logits processors and
grammar (fed its own unpadded ids), its seeded generator, its stop strings and budget, its logprob recorder
and streamer. So a row's tokens equal the same request decoded alone (the tests check greedy and seeded
sampling, rows joining mid-decoding, and the sliding-window Gemma 3).
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Hashable, Sequence

import torch

from shared.spec import GenerationRequest, GenerationResult
from worker.engine import packed
from worker.engine.base import PaddedRows
from worker.engine.boost import build_padded_boost
from worker.engine.fast import FastEngine, active_state, boost_state
from worker.engine.grammar import grammar_rows
from worker.engine.logits import row_processors, sampling_probs
from worker.engine.logprobs import StepRecorder, prompt_section
from worker.engine.prefill import Fill, advance, open_fill
from worker.engine.prompt import Prompt
from worker.engine.streaming import RowStreamer

CAPACITY_STEP = 128  # key columns the boost's cached biases cover beyond the current width


@dataclass
class Row:
    """One request inside the continuous padded group: its prompt, tokens so far and per-row decoding state."""

    key: Hashable
    request: GenerationRequest
    prompt: Prompt
    on_text: Callable[[str], None] | None = None
    generated: list[int] = field(default_factory=list)
    pad: int = 0  # left padding columns in the packed cache
    procs: list = field(default_factory=list)
    generator: torch.Generator | None = None
    recorder: StepRecorder | None = None
    streamer: RowStreamer | None = None
    scored: dict | None = None
    attention: bool = False  # measure its attention mass on the boosted spans once it ends
    first: bool = False  # interactive: joins ahead of the others
    joined: float = 0.0
    halted: bool = False
    done: bool = False

    @property
    def length(self) -> int:
        """Positions the row has in the cache once its last token is fed (prompt plus generated)."""
        return len(self.prompt.input_ids) + len(self.generated)


@dataclass
class StepCount:
    """What one step processed: rows decoded (a token each), prompt tokens prefilled (padding included), rows joined."""

    decoded: int = 0
    prefilled: int = 0
    joined: int = 0

    @property
    def tokens(self) -> int:
        return self.decoded + self.prefilled


class ContinuousDecoder:
    """Decode requests in a padded group that rows join and leave at every step (see the module docstring)."""

    def __init__(self, engine: FastEngine, max_rows: int = 32, attention: bool = False, token_budget: int = 0):
        if not isinstance(engine, FastEngine):
            raise TypeError("continuous batching runs over the fast engine")
        self.engine = engine
        self.model = engine.loaded.model
        self.max_rows = max(1, int(max_rows))
        self.budget = int(token_budget) if token_budget and token_budget > 0 else None  # None: no limit
        self.attention = attention
        self.waiting: deque[Row] = deque()
        self.filling: list[Fill] = []  # joining groups whose prompts are being prefilled, oldest first
        self.rows: list[Row] = []  # running, in cache order
        self.cache = None
        self.width = 0  # padded key columns in the cache (the pending tokens not yet included)
        self._state = None
        self.steps = 0  # decoding forwards run
        self.row_steps = 0  # rows decoded, summed over those forwards
        self.chunks = 0  # prefill forwards run
        self.last = StepCount()  # what the last step processed
        self.max_stall = 0  # most tokens one step processed while rows were decoding (what they waited for)
        self.timing = {"decode": 0.0, "prefill": 0.0, "total": 0.0}  # seconds: decoding forwards, prefills, steps

    @classmethod
    def configured(cls, engine: FastEngine, settings) -> "ContinuousDecoder":
        """Return a decoder with the worker's settings: worker.max_batch_rows rows, worker.step_token_budget tokens."""
        return cls(engine, max_rows=settings.worker.max_batch_rows, token_budget=settings.worker.step_token_budget)

    # -- queue ---------------------------------------------------------------------------------------------
    def submit(self, request: GenerationRequest, key: Hashable = None, on_text: Callable[[str], None] | None = None,
               first: bool = False, attention: bool | None = None) -> Hashable:
        """Queue a request (validated now); first=True puts it ahead of every waiting row (interactive work).

        on_text(delta) receives the row's text as it grows; attention (default: the decoder's) asks for the
        row's attention mass on its boosted spans.
        """
        prompt = self.engine.prompt(request)
        row = Row(key=key if key is not None else object(), request=request, prompt=prompt, on_text=on_text,
                  attention=self.attention if attention is None else attention, first=first)
        (self.waiting.appendleft if first else self.waiting.append)(row)
        return row.key

    def halt(self, key: Hashable) -> None:
        """End a row at the next step with its tokens so far (a cancelled job); a waiting row ends unstarted."""
        for row in [*self.rows, *self._filling_rows, *self.waiting]:
            if row.key == key:
                row.halted = True

    @property
    def idle(self) -> bool:
        return not self.rows and not self.filling and not self.waiting

    @property
    def keys(self) -> list[Hashable]:
        """Every row held: running, then prefilling, then waiting."""
        return [r.key for r in (*self.rows, *self._filling_rows, *self.waiting)]

    @property
    def _filling_rows(self) -> list[Row]:
        return [r for f in self.filling for r in f.rows]

    # -- the step ------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Hashable, GenerationResult]]:
        """Decode one token for the running rows, retire finished rows, admit waiting ones; return finished results."""
        start = time.perf_counter()
        self.last = StepCount()
        finished: list[Row] = []
        if self.rows and self._urgent:
            finished += self._admit(urgent_only=True)  # its first token now, not after the batch's forward
        if self.rows:
            self._decode()
            finished += self._retire()
        finished += self._admit()
        if self.last.decoded:
            self.max_stall = max(self.max_stall, self.last.tokens)
        out = [(row.key, self._result(row)) for row in finished]
        self.timing["total"] += time.perf_counter() - start
        return out

    def run(self, requests: Sequence[GenerationRequest],
            on_text: Callable[[int, str], None] | None = None) -> list[GenerationResult]:
        """Decode every request to its end (rows admitted in order as slots free); return results in order."""
        for i, req in enumerate(requests):
            self.submit(req, key=i, on_text=None if on_text is None else (lambda d, i=i: on_text(i, d)))
        out: dict = {}
        while not self.idle:
            out.update(self.step())
        return [out[i] for i in range(len(requests))]

    def _decode(self) -> None:
        dev = self.engine.device
        ids = torch.tensor([[r.generated[-1]] for r in self.rows], device=dev)
        mask = packed.attention_mask([r.pad for r in self.rows], self.width + 1, dev)
        pos = torch.tensor([[self.width - r.pad] for r in self.rows], device=dev)
        if self._state is None or self.width + 1 > self._state.capacity:
            self._state = self._boost_state(self.width + CAPACITY_STEP)
        start = time.perf_counter()
        with active_state(self._state):
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=self.cache,
                                use_cache=True).logits[:, -1]
        self._sync()
        self.timing["decode"] += time.perf_counter() - start
        self.width += 1
        self.steps += 1
        self.row_steps += len(self.rows)
        self.last.decoded = len(self.rows)
        top = logits.argmax(-1).tolist()  # one read for every plain greedy row (no per-row device sync)
        for row, scores, best in zip(self.rows, logits, top):
            self._choose(row, scores, best)

    def _retire(self) -> list[Row]:
        gone = [r for r in self.rows if r.done or r.halted]
        if not gone:
            return []
        keep = [i for i, r in enumerate(self.rows) if not (r.done or r.halted)]
        self.rows = [self.rows[i] for i in keep]
        if not self.rows:
            self.cache, self.width = None, 0
        else:
            trim = min(r.pad for r in self.rows)  # columns that are padding for every remaining row
            self.width = packed.select(self.cache, keep, self.width, trim)
            for r in self.rows:
                r.pad -= trim
        self._state = None
        return gone

    @property
    def _urgent(self) -> bool:
        """Whether interactive rows wait or are being prefilled."""
        return any(f.urgent for f in self.filling) or bool(self.waiting and self.waiting[0].first)

    def _admit(self, urgent_only: bool = False) -> list[Row]:
        """Prefill joining rows within what the step's budget leaves; rows whose prompt is in join decoding.

        urgent_only: before the running rows decode, only interactive groups, leaving the budget their decoding needs.
        """
        finished = [r for r in self.waiting if r.halted]
        for r in finished:
            self.waiting.remove(r)
        for fill in [f for f in self.filling if all(r.halted for r in f.rows)]:
            self.filling.remove(fill)  # nobody is left to join: its prefill stops here
            finished += fill.rows
        spent = self.last.tokens + (len(self.rows) if urgent_only else 0)
        left = float("inf") if self.budget is None else self.budget - spent
        # Interactive groups first, the prefilling ones then the new ones; then the others in the same order.
        for urgent in (True,) if urgent_only else (True, False):
            for fill in [f for f in self.filling if f.urgent == urgent]:
                left -= self._advance(fill, left, finished)
            while self.waiting and self.waiting[0].first == urgent and left >= 1 and self._room() > 0:
                left -= self._advance(self._open(left), left, finished)
        return finished

    def _room(self) -> int:
        return self.max_rows - len(self.rows) - len(self._filling_rows)

    def _open(self, left: float) -> Fill:
        """Take the next waiting rows as one joining group: as many as fit whole in left tokens, at least one."""
        group = [self.waiting.popleft()]
        room, widest = self._room(), len(group[0].prompt.input_ids)
        while self.waiting and len(group) < room and not self.waiting[0].halted:
            wider = max(widest, len(self.waiting[0].prompt.input_ids))
            if (len(group) + 1) * wider > left:
                break  # a row that would make the group spill over this step waits for a group of its own
            group.append(self.waiting.popleft())
            widest = wider
        padded = self.engine._pad([r.prompt for r in group])
        for row, pad in zip(group, padded.pads):
            row.pad, row.joined = pad, time.perf_counter()
            self._setup(row)
        fill = open_fill(self.model, group, padded,
                         self._boost([r.request for r in group], padded.spans, padded.input_ids.shape[1]))
        self.filling.append(fill)
        return fill

    def _advance(self, fill: Fill, left: float, finished: list[Row]) -> int:
        """Prefill as many of the group's columns as left allows; join its rows once done; return the tokens spent."""
        cols = fill.remaining if left == float("inf") else min(fill.remaining, int(left // len(fill.rows)))
        if cols < 1:
            return 0
        start = time.perf_counter()
        logits = advance(self.model, fill, cols)
        self._sync()
        self.timing["prefill"] += time.perf_counter() - start
        self.chunks += 1
        spent = cols * len(fill.rows)
        self.last.prefilled += spent
        if logits is not None:
            self.filling.remove(fill)
            finished += self._join(fill, logits)
        return spent

    def _join(self, fill: Fill, logits: torch.Tensor) -> list[Row]:
        """Choose the group's first tokens and merge its live rows' cache into the running one; return those done."""
        group, cache, width = fill.rows, fill.cache, fill.width
        for i, row in enumerate(group):
            if row.request.prompt_logprobs is not None:
                row.scored = prompt_section(self.engine.tokenizer, logits[i, row.pad:], row.prompt.input_ids,
                                            row.request.prompt_logprobs)
            if row.request.params.max_new_tokens == 0 or row.halted:
                row.done = True
            else:
                self._choose(row, logits[i, -1] if fill.every else logits[i])
        live = [r for r in group if not r.done]
        if live:
            keep = [i for i, r in enumerate(group) if not r.done]
            trim = min(r.pad for r in live)
            width = packed.select(cache, keep, width, trim) if len(keep) < len(group) or trim else width
            for r in live:
                r.pad -= trim
            if self.cache is None:
                self.cache, self.width = cache, width
            else:
                new = packed.merge(self.cache, self.width, cache, width)
                for r in self.rows:
                    r.pad += new - self.width
                for r in live:
                    r.pad += new - width
                self.width = new
            self.rows += live
            self._state = None
        self.last.joined += len(live)
        return [r for r in group if r.done]

    def _sync(self) -> None:
        if self.engine.device.startswith("cuda"):
            torch.cuda.synchronize()  # so the timing split counts the forward's own time

    def _setup(self, row: Row) -> None:
        req, n = row.request, len(row.prompt.input_ids)
        grammar = grammar_rows(self.engine.grammars, [req], [n])[0] if req.grammar else None
        row.procs = row_processors(req.params, n) + ([grammar] if grammar is not None else [])
        if not req.params.greedy:
            row.generator = torch.Generator(device=self.engine.device).manual_seed(req.params.seed)
        if req.logprobs is not None:
            row.recorder = StepRecorder([req.logprobs])
        if row.on_text is not None:
            relay = row.on_text
            row.streamer = RowStreamer(self.engine.tokenizer, 1, self.engine._eos_ids(), lambda _, d: relay(d),
                                       req.params.stop, budgets=[req.params.max_new_tokens],
                                       strips=[not req.exact_text])
            row.streamer._prompt_seen = True  # tokens are put one at a time, never the prompt

    def _choose(self, row: Row, scores: torch.Tensor, best: int | None = None) -> None:
        """Pick the row's next token from its raw logits, in the static engine's order; mark it done when it ends.

        best: the raw logits' argmax, already read (used when nothing reshapes a greedy row's scores).
        """
        params = row.request.params
        plain = row.recorder is None and not row.procs
        if plain and params.greedy and best is not None:
            self._take(row, best)
            return
        scores = scores.clone()
        if not plain:
            ids = torch.tensor(row.prompt.input_ids + row.generated, device=scores.device)
            if row.recorder is not None:
                row.recorder(ids[None], scores[None])
            for proc in row.procs:
                scores = proc(ids, scores)
        if params.greedy:
            token = int(scores.argmax(-1))
        else:
            token = int(torch.multinomial(sampling_probs(scores, params), 1, generator=row.generator))
        self._take(row, token)

    def _take(self, row: Row, token: int) -> None:
        """Append the row's token, stream it, and mark the row done at its EOS, budget or stop string."""
        params = row.request.params
        row.generated.append(token)
        if row.streamer is not None:
            row.streamer.put(torch.tensor([token]))
        eos = self.engine._eos_ids()
        if token in eos or len(row.generated) >= params.max_new_tokens or self._stopped(row):
            row.done = True

    def _stopped(self, row: Row) -> bool:
        stop = row.request.params.stop
        if not stop:
            return False
        # The tail is enough: a stop string that ended earlier would have ended the row then.
        tail = row.generated[-(max(len(s) for s in stop) + 8):]
        text = self.engine.tokenizer.decode(tail, skip_special_tokens=True)
        return any(s in text for s in stop)

    def _boost(self, requests: Sequence[GenerationRequest], spans, length: int, prompt_len: int | None = None):
        """Return the rows' boost over length key columns; prompt_len: where their decoding queries start, less 1."""
        if all(r.is_identity for r in requests):
            return None  # M = 1 everywhere: plain SDPA, as the static engine runs it
        return build_padded_boost([r.spec for r in requests], spans, length, self.engine.n_layers,
                                 self.engine.n_heads, self.engine.device, prompt_len=prompt_len)

    def _boost_state(self, capacity: int):
        spans = [[(a + r.pad, b + r.pad, m) for a, b, m in r.prompt.all_spans] for r in self.rows]
        # Every query of a decoding step is a generated one (prompt_len 0), whatever the capacity: so scope
        # "generated" keeps boosting and scope "prompt" stops, as in the row's own generate().
        return boost_state(self._boost([r.request for r in self.rows], spans, capacity, prompt_len=0), capacity)

    # -- results -------------------------------------------------------------------------------------------
    def _result(self, row: Row) -> GenerationResult:
        engine, dev = self.engine, self.engine.device
        ids = row.prompt.input_ids
        padded = PaddedRows(torch.tensor([ids], device=dev), torch.ones(1, len(ids), dtype=torch.long, device=dev),
                      [list(row.prompt.all_spans)], [0])
        seq = torch.tensor([ids + row.generated], device=dev)
        if row.recorder is not None and row.generated:
            row.recorder.finish(seq)
        if row.streamer is not None:
            row.streamer.end()
        seconds = time.perf_counter() - row.joined if row.joined else 0.0
        masses = None
        if row.attention and row.generated:
            masses = engine._attention_mass([row.request], padded, seq)
        return engine._finish([row.request], [row.prompt], padded, seq, seconds, masses, None,
                              [row.scored], row.recorder)[0]
