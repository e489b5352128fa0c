"""Whether a request fits the model it names: one rule for jobs and chat jobs, against what the workers advertise.

facts come from worker heartbeats ({"n_layers", "n_heads", "max_context"}, each optional). The prompt check is a
lower bound (ceil(utf8 bytes / MAX_BYTES_PER_TOKEN) tokens, template excluded): it only refuses prompts that
cannot fit; the worker counts tokens exactly before generating.
"""

from __future__ import annotations

from typing import Any, Mapping

# No tokenizer we know has a token longer than this (SmolLM2's longest is 81 bytes, a run of spaces), so
# ceil(utf8_bytes / MAX_BYTES_PER_TOKEN) is a safe lower bound on a text's token count at submit time.
MAX_BYTES_PER_TOKEN = 128


def fit_problems(facts: Mapping[str, Any], model: str, *, max_new_tokens: int, tokens_field: str,
                 start_layer: int | None = None, layers: Any = None, heads: Mapping[str, Any] | None = None,
                 prompt_bytes: int | None = None, prompt_field: str = "query", boost: str = "") -> list[dict]:
    """Return [{field, message}] for each way the request cannot run on a model with these facts.

    start_layer: checked when given (a middle block's first layer); layers: explicit layer indices; heads:
    explicit heads per layer; boost: the prefix of the boost's fields ("instaboost." in a chat request).
    """
    errors: list[dict] = []
    n_layers, n_heads, context = facts.get("n_layers"), facts.get("n_heads"), facts.get("max_context")
    if isinstance(n_layers, int):
        if start_layer is not None and start_layer >= n_layers:
            errors.append({"field": f"{boost}start_layer", "message": f"{boost}start_layer {start_layer} is out of "
                           f"range: {model} has {n_layers} layers (0..{n_layers - 1})"})
        if isinstance(layers, list) and max(layers) >= n_layers:
            errors.append({"field": f"{boost}layers", "message": f"{boost}layers {max(layers)} is out of range: "
                           f"{model} has {n_layers} layers (0..{n_layers - 1})"})
    if isinstance(n_heads, int) and heads:
        top = max(h for hs in heads.values() for h in hs)
        if top >= n_heads:
            errors.append({"field": f"{boost}heads", "message": f"{boost}heads names head {top}: {model} has "
                           f"{n_heads} heads per layer (0..{n_heads - 1})"})
        if isinstance(n_layers, int) and max(int(k) for k in heads) >= n_layers:
            errors.append({"field": f"{boost}heads", "message": f"{boost}heads names layer "
                           f"{max(int(k) for k in heads)}: {model} has {n_layers} layers"})
    if isinstance(context, int):
        if max_new_tokens >= context:
            errors.append({"field": tokens_field, "message": f"{tokens_field} {max_new_tokens} does not fit "
                           f"{model}'s context of {context} tokens; ask for fewer"})
        elif prompt_bytes is not None:
            at_least = -(-prompt_bytes // MAX_BYTES_PER_TOKEN)
            if at_least + max_new_tokens > context:
                errors.append({"field": prompt_field, "message": f"the prompt is at least {at_least} tokens; with "
                               f"{tokens_field} {max_new_tokens} it exceeds {model}'s context of {context} tokens: "
                               "shorten the instruction or query"})
    return errors
