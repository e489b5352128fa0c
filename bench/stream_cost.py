"""The cost of streaming, before and after, side by side in one run.

1. Detokenization, CPU ms per streamed token: the old streamer (the whole row decoded again at every token, the
   stop-string and hold-back rules over the whole text) vs the incremental one (worker.engine.streaming: a short
   window per token), on real tokenizer ids of rows of --lengths tokens, rounds interleaved (bench.timing).
2. Worker -> web transport, through the real Redis: the old reader (LRANGE on a list every 50 ms) vs the new
   (XREAD BLOCK on a stream): the reader's CPU while it waits --idle seconds for a first event (a prefill), then,
   while a publisher appends an event every --gap-ms, each event's latency from publish to read and the reader's
   CPU per event.

    python bench/stream_cost.py [--lengths 128 512 2048] [--rounds 3] [--events 200] [--gap-ms 20] [--idle 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
import uuid
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
warnings.filterwarnings("ignore")

from bench.timing import interleaved  # noqa: E402

from shared.streaming import cut_at_stop, publish_event, read_events  # noqa: E402
from worker.engine.streaming import RowStreamer  # noqa: E402

TEXT = ("Berlin was founded in the 13th century at a crossing of the Spree. Über die Jahrhunderte wuchs die Stadt; "
        "in 1871 it became the capital of the German Empire — 東京 and Paris grew alike. Émigrés, wars and the Wall "
        "(1961–1989) shaped it; today it is a city of 3.7 million people and many languages. ")
STOP = ("</answer>", "\n\nUser:")


class OldDeltaBuffer:
    """The delta rules before this change: the whole decoded text searched at every token (for comparison)."""

    def __init__(self, stop, strip=True):
        self.stop, self.strip, self.sent, self.stopped = [s for s in stop if s], strip, "", False

    def update(self, decoded: str, final: bool = False) -> str:
        text, hit = cut_at_stop(decoded, self.stop)
        final = final or hit
        self.stopped = self.stopped or hit
        text = text.lstrip() if self.strip else text
        if not final:
            text = text[:-1] if text.endswith("\ufffd") else text
            hold = max((k for s in self.stop for k in range(1, len(s)) if text.endswith(s[:k])), default=0)
            text = text[:len(text) - hold]
        visible = text.rstrip() if self.strip else text
        if not visible.startswith(self.sent) or len(visible) <= len(self.sent):
            return ""
        delta, self.sent = visible[len(self.sent):], visible
        return delta


def old_stream(tokenizer, ids: list[int]) -> str:
    """Stream a row the old way: decode the whole row at every token (fed as generate() feeds a streamer)."""
    import torch

    buf, row, out = OldDeltaBuffer(STOP), [], []
    for tok in ids:
        row.extend(torch.tensor([tok]).reshape(-1).tolist())
        out.append(buf.update(tokenizer.decode(row, skip_special_tokens=True)))
    out.append(buf.update(tokenizer.decode(row, skip_special_tokens=True), final=True))
    return "".join(out)


def new_stream(tokenizer, ids: list[int]) -> str:
    """Stream a row through RowStreamer, as generate() hands it the tokens."""
    import torch

    out: list[str] = []
    streamer = RowStreamer(tokenizer, 1, set(), lambda _r, d: out.append(d), STOP)
    streamer.put(torch.zeros(1, 1, dtype=torch.long))
    for tok in ids:
        streamer.put(torch.tensor([tok]))
    streamer.end()
    return "".join(out)


def detokenization(tokenizer, lengths: list[int], rounds: int) -> None:
    base = tokenizer(TEXT * 200, add_special_tokens=False)["input_ids"]
    print("1. detokenization, CPU ms per streamed token (median of rounds)")
    print(f"{'tokens':>8} {'old':>10} {'new':>10} {'old/new':>8}")
    for n in lengths:
        ids = base[:n]
        assert old_stream(tokenizer, ids) == new_stream(tokenizer, ids), "the streamed texts differ"
        cpu: dict[str, list[float]] = {"old": [], "new": []}

        def timed(name, fn):
            def run():
                t0 = time.process_time()
                fn(tokenizer, ids)
                cpu[name].append(time.process_time() - t0)
            return run

        interleaved({"old": timed("old", old_stream), "new": timed("new", new_stream)}, rounds)
        old, new = (statistics.median(cpu[k][1:]) * 1000 / n for k in ("old", "new"))  # [0]: the warm-up
        print(f"{n:>8} {old:>10.4f} {new:>10.4f} {old / max(new, 1e-9):>8.1f}")


def transport(url: str, events: int, gap: float, idle: float) -> None:
    from shared.worker_registry import redis_client

    print(f"2. transport through Redis: {idle:g} s idle, then {events} events, one every {gap * 1000:.0f} ms")
    print(f"{'reader':>24} {'idle CPU ms/s':>14} {'median ms':>10} {'p95 ms':>8} {'CPU ms/event':>13}")
    results = {}
    for name in ("old: LRANGE every 50 ms", "new: XREAD BLOCK"):
        client = redis_client(url)
        key = f"bench_stream_{uuid.uuid4().hex[:8]}"
        latencies: list[float] = []
        cpu = [0.0, 0.0]  # waiting for the first event, then reading them all

        def reader():
            t0, got, cursor = time.thread_time(), 0, (0 if name.startswith("old") else "0")
            t_first = None
            while got < events:
                if name.startswith("old"):
                    raw = client.lrange(key, cursor, -1)
                    now = time.time()
                    cursor += len(raw)
                    batch = [json.loads(r) for r in raw]
                else:
                    batch, cursor = read_events(client, key, cursor, 1.0)
                    now = time.time()
                latencies.extend(now - e["at"] for e in batch)
                if batch and t_first is None:
                    t_first = time.thread_time()
                    cpu[0] = t_first - t0
                got += len(batch)
                if name.startswith("old") and got < events:
                    time.sleep(0.05)
            cpu[1] = time.thread_time() - t_first

        thread = threading.Thread(target=reader)
        thread.start()
        time.sleep(idle)
        pub = redis_client(url)
        for i in range(events):
            event = {"type": "delta", "text": "x", "seq": i, "at": time.time()}
            if name.startswith("old"):
                pub.rpush(key, json.dumps(event))
            else:
                publish_event(pub, key, event)
            time.sleep(gap)
        thread.join(60)
        pub.delete(key)
        lat = sorted(latencies)
        results[name] = (cpu[0] * 1000 / idle, statistics.median(lat) * 1000, lat[int(0.95 * (len(lat) - 1))] * 1000,
                         cpu[1] * 1000 / events)
        print(f"{name:>24} {results[name][0]:>14.3f} {results[name][1]:>10.2f} {results[name][2]:>8.2f} "
              f"{results[name][3]:>13.4f}")
        client.close()
        pub.close()
    (oi, om, _, oc), (ni, nm, _, nc) = results.values()
    print(f"ratios old/new: idle CPU {oi / max(ni, 1e-9):.1f}x, median latency {om / max(nm, 1e-6):.1f}x, "
          f"CPU per event {oc / max(nc, 1e-9):.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[128, 512, 2048])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--events", type=int, default=200)
    ap.add_argument("--gap-ms", type=float, default=20)
    ap.add_argument("--idle", type=float, default=3.0)
    ap.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    ap.add_argument("--model", default="smollm2-135m-instruct")
    args = ap.parse_args()
    from transformers import AutoTokenizer

    from worker.engine.loading import resolve_model

    src = resolve_model(args.model)
    tokenizer = AutoTokenizer.from_pretrained(src.path, gguf_file=src.gguf_file)
    detokenization(tokenizer, args.lengths, args.rounds)
    transport(args.redis, args.events, args.gap_ms / 1000, args.idle)


if __name__ == "__main__":
    main()
