"""What the engine itself allows, measured in the bench's process beside bench/queue_continuous.py's queue numbers.

- ``step_costs``: the chat's time to first token inside a running batch is at least its prefill plus the decoding
  forwards it waits for; on an idle worker it is its prefill alone (its first token comes from the prefill's
  logits). This times, with the fast engine and a ``ContinuousDecoder`` as the continuous worker builds it (same
  ``max_batch_rows`` and ``step_token_budget``, same threads): the chat's prefill alone, a decoding step at 1
  row, a decoding step of the busy batch (``max_batch_rows - 1`` load rows, the chat's slot free), and the step
  in which the chat joins that batch (decode plus the chat's prefill).
- ``engine_rates``: tokens per second of our own engine in this process, no queue: the static engine
  (``Engine.generate``, ``max_batch_rows`` rows per call) on the rows with their boosts (half of them boosted)
  and unboosted (every row its job's original), and the continuous decoder on the boosted rows. Ours through
  the queue cannot beat the static engine unboosted; its ratio to the peer bounds the queue's.

Each measure runs once to warm up, then --repeat times; the median is kept.
"""

from __future__ import annotations

import statistics
import time


def _engine(args):
    import torch

    from worker.engine import get_engine

    torch.set_num_threads(args.threads)
    return get_engine(args.model, "fast", None if args.device == "auto" else args.device)


def chat_request(params: dict):
    """Return the GenerationRequest of a chat job's params (as the worker builds it)."""
    from worker.jobs.kinds import job_kind

    kind = job_kind(dict(params))
    return kind.generation_request(kind.rows()[0])


def job_requests(bodies: list[dict], settings, unboosted: bool = False) -> list:
    """Return every row's GenerationRequest of the jobs (unboosted: each row as its job's original)."""
    from shared.job_request import JobRequest

    out = []
    for body in bodies:
        request = JobRequest.from_dict(body, settings)
        variants = request.variants()
        out += [request.generation_request(variants[0] if unboosted else v) for v in variants]
    return out


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def step_costs(args, settings, chat, load: list, repeat: int = 3) -> dict:
    """Return the median seconds of: the chat's prefill alone, a 1-row step, a busy step, the chat's join step."""
    from worker.engine.continuous import ContinuousDecoder

    engine = _engine(args)
    rows, budget = args.max_rows, settings.worker.step_token_budget  # the workers' (--max-rows)
    b = max(1, rows - 1)
    out: dict[str, list[float]] = {"prefill_s": [], "step1_s": [], "stepB_s": [], "join_s": [], "stepB1_s": []}
    for _ in range(repeat + 1):
        d = ContinuousDecoder(engine, max_rows=rows, token_budget=budget)
        d.submit(chat, key="chat", first=True)
        prefill = _timed(d.step)  # nothing decodes: the chat's prefill and its first token
        step1 = statistics.median(_timed(d.step) for _ in range(4))
        d = ContinuousDecoder(engine, max_rows=rows, token_budget=budget)
        for i, r in enumerate(load[:b]):
            d.submit(r, key=i)
        while len(d.rows) < b:
            d.step()
        busy = statistics.median(_timed(d.step) for _ in range(4))
        d.submit(chat, key="chat", first=True)
        join = _timed(d.step)  # today's order: the batch decodes, then the chat is prefilled and gets its token
        after = statistics.median(_timed(d.step) for _ in range(3))
        for k, v in zip(out, (prefill, step1, busy, join, after)):
            out[k].append(v)
    med = {k: statistics.median(v[1:]) for k, v in out.items()}  # the first round warms up
    return dict(med, busy_rows=b, joined_rows=len(d.rows))


def engine_rates(args, settings, bodies: list[dict], new_tokens: int) -> dict:
    """Return tokens/s of our engine in this process: static boosted, static unboosted, continuous boosted."""
    from worker.engine.continuous import ContinuousDecoder

    engine = _engine(args)
    rows = args.max_rows
    boosted, plain = job_requests(bodies, settings), job_requests(bodies, settings, unboosted=True)

    def static(requests):
        results = []
        for i in range(0, len(requests), rows):
            results += engine.generate(requests[i:i + rows])
        return results

    def continuous(requests):
        d = ContinuousDecoder(engine, max_rows=rows, token_budget=settings.worker.step_token_budget)
        return d.run(requests)

    engine.generate(boosted[:2])  # warm-up
    out = {}
    for name, fn, requests in (("static_boosted", static, boosted), ("static_unboosted", static, plain),
                               ("continuous_boosted", continuous, boosted)):
        t = time.perf_counter()
        results = fn(requests)
        wall = time.perf_counter() - t
        tokens = sum(r.output_tokens for r in results)
        out[name] = {"rows": len(requests), "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall}
    return out
