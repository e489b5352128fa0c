"""The InstaBoost method: boost math, the prompt and its instruction span, model loading, and two engines.

- ``boost``: the pure math (key masks, log-M biases, the pattern hook); no I/O, no model state.
- ``prompt``: renders a placement (or a chat) and finds the boosted text's exact token spans.
- ``loading``: resolves a model name (alias, hub id, folder, .gguf) and loads it.
- ``base``: the interface both engines share (batching, decoding, results).
- ``fast``: the log-M bias inside fused attention (SDPA), KV cache, per-row spans, each with its own M.
- ``lens``: the TransformerLens ``hook_pattern`` reference, also the analysis tool.

``get_engine`` keeps one engine per (model, engine kind, device, dtype) per process: the only model cache.
"""

from __future__ import annotations

import threading

from shared.errors import ValidationError
from shared.fields import ENGINES
from worker.engine.base import Engine

__all__ = ["Engine", "get_engine", "clear_engines"]

_engines: dict[tuple, Engine] = {}
# A lock rather than functools.cache: two threads asking at once must not load a model twice.
_lock = threading.Lock()


def get_engine(model_name: str | None = None, engine: str = "fast", device: str | None = None,
               dtype: str | None = None) -> Engine:
    """Return the process-wide engine for a model, loading the model on first use."""
    from shared.settings import get_settings
    from worker.engine.loading import load_model, resolve_model

    s = get_settings()
    model_name = model_name or s.model.name
    device = device or s.model.device
    dtype = dtype or s.model.dtype
    if engine not in ENGINES:
        raise ValidationError(f"unknown engine {engine!r}; use one of {', '.join(ENGINES)}", field="engine")
    key = (resolve_model(model_name).name, engine, device, dtype)
    with _lock:
        if key not in _engines:
            # Each engine loads its own copy: TransformerLens' bridge rewires the modules it wraps.
            loaded = load_model(model_name, device, dtype)
            if engine == "fast":
                from worker.engine.fast import FastEngine as cls
            else:
                from worker.engine.lens import TransformerLensEngine as cls
            _engines[key] = cls(loaded)
        return _engines[key]


def clear_engines() -> None:
    """Forget every loaded engine (their models are freed once nothing else holds them)."""
    with _lock:
        _engines.clear()
