"""Build the prompt for a placement and find the instruction's exact token span from tokenizer offsets."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from shared.errors import ValidationError

# Sentinels let us render the chat template once and know exactly where the instruction lands.
_S_INSTR = "\u2063INSTR\u2063"
_S_QUERY = "\u2063QUERY\u2063"


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt, its token ids and the instruction's [start, end) token span."""

    text: str
    input_ids: list[int]
    span: tuple[int, int]
    char_span: tuple[int, int]
    placement: str

    @property
    def span_text(self) -> str:
        return self.text[self.char_span[0]:self.char_span[1]]


def has_chat_template(tokenizer) -> bool:
    """Return whether the tokenizer carries a chat template."""
    return bool(getattr(tokenizer, "chat_template", None))


def effective_placement(tokenizer, placement: str) -> str:
    """Return the placement actually used: templated placements fall back to raw without a template."""
    if placement in ("system", "prefix") and not has_chat_template(tokenizer):
        warnings.warn(f"the model has no chat template; placement {placement!r} falls back to 'raw'", stacklevel=2)
        return "raw"
    return placement


def render(tokenizer, instruction: str, query: str, placement: str) -> tuple[str, tuple[int, int], bool]:
    """Return (prompt text, instruction char span, whether the text already holds special tokens)."""
    placement = effective_placement(tokenizer, placement)
    if placement == "raw":
        text = f"{instruction}\n\n{query}"
        return text, (0, len(instruction)), False
    if placement == "system":
        messages = [{"role": "system", "content": _S_INSTR}, {"role": "user", "content": _S_QUERY}]
    elif placement == "prefix":
        messages = [{"role": "user", "content": f"{_S_INSTR}\n\n{_S_QUERY}"}]
    else:
        raise ValidationError(f"unknown placement {placement!r}; use system, prefix or raw", field="placement")
    try:
        template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except Exception as exc:  # templates raise arbitrary errors, e.g. "System role not supported"
        if placement == "system":
            warnings.warn(f"chat template rejects a system turn ({exc}); using placement 'prefix'", stacklevel=2)
            return render(tokenizer, instruction, query, "prefix")
        raise ValidationError(f"the model's chat template failed: {exc}", field="placement") from None
    if template.count(_S_INSTR) != 1 or template.count(_S_QUERY) != 1:
        raise ValidationError("the chat template alters message text, so the instruction span cannot be "
                              "located; use placement 'raw'", field="placement")
    i, q = template.index(_S_INSTR), template.index(_S_QUERY)
    # Replace back to front so the earlier sentinel's offset stays valid.
    if q > i:
        text = template[:q] + query + template[q + len(_S_QUERY):]
        text = text[:i] + instruction + text[i + len(_S_INSTR):]
    else:
        text = template[:i] + instruction + template[i + len(_S_INSTR):]
        text = text[:q] + query + text[q + len(_S_QUERY):]
        i = i - len(_S_QUERY) + len(query)
    return text, (i, i + len(instruction)), True


def build_prompt(tokenizer, instruction: str, query: str, placement: str) -> Prompt:
    """Render and tokenize the prompt; the span covers every token that overlaps the instruction text."""
    text, (cs, ce), templated = render(tokenizer, instruction, query, placement)
    enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # Overlap, not containment: a token may carry a neighbour's whitespace with the instruction's first
    # or last characters, and that token is still part of the instruction.
    inside = [k for k, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
    if not inside:
        raise ValidationError("the instruction produced no tokens", field="instruction")
    return Prompt(text=text, input_ids=list(ids), span=(inside[0], inside[-1] + 1), char_span=(cs, ce),
                  placement=effective_placement(tokenizer, placement))
