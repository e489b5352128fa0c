"""Build the prompt for a placement and find the boosted text's exact token spans from tokenizer offsets.

An instruction request boosts one span (the instruction); a chat request boosts each of its boosted
segments, found the same way: sentinels stand in for them while the chat template renders.

The boilerplate is a second kind of span: the template tokens of the instruction's turn that are not the
instruction, which BoostSpec.boilerplate_multiplier may de-boost. With placement system it is the system turn's
scaffolding around the instruction (SmolLM2: ``<|im_start|>system\n`` before it, ``<|im_end|>\n`` after it),
found from the offsets of the system turn rendered alone. Position 0 is never part of it: the first token is
the attention sink, which holds most heads' idle mass, so scaling it redistributes that mass over the whole
row, a different operation from de-boosting scaffolding. Placements prefix and raw have none: the instruction
then has no turn of its own (prefix shares the user turn with the query; raw has no template).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from jinja2 import TemplateError

from shared.errors import ValidationError

# What a chat template may raise when it rejects messages (transformers raises ValueError when there is
# none). Named, not `Exception`: a broad except here once swallowed other errors and fell back silently.
TEMPLATE_ERRORS = (TemplateError, ValueError, TypeError, KeyError, IndexError, AttributeError)

# Sentinels let us render the chat template once and know exactly where the instruction lands.
_S_INSTR = "\u2063INSTR\u2063"
_S_QUERY = "\u2063QUERY\u2063"


# The M of a boilerplate span in Prompt.all_spans: the spec's boilerplate_multiplier (worker.engine.boost.row_spans).
BOILERPLATE = "boilerplate"


def _s_span(k: int) -> str:
    return f"\u2063SPAN{k}\u2063"


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt, its token ids and its boosted [start, end) token spans.

    span / char_span: the instruction's (chat: the hull of every boosted span; (0, 0) when none).
    spans: every boosted span as (start, end, M); M is None for the instruction (the spec's multiplier).
    boilerplate: the boilerplate's [start, end) token spans (see the module's docstring); () when none.
    """

    text: str
    input_ids: list[int]
    span: tuple[int, int]
    char_span: tuple[int, int]
    placement: str  # the placement used: 'system' and 'prefix' fall back without a usable chat template
    spans: tuple[tuple[int, int, float | None], ...] = ()
    boilerplate: tuple[tuple[int, int], ...] = ()

    @property
    def span_text(self) -> str:
        return self.text[self.char_span[0]:self.char_span[1]]

    @property
    def all_spans(self) -> tuple[tuple[int, int, float | str | None], ...]:
        """Return spans, then each boilerplate span as (start, end, BOILERPLATE): what the engines boost."""
        return self.spans + tuple((a, b, BOILERPLATE) for a, b in self.boilerplate)


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
    return _render(tokenizer, instruction, query, placement)[:3]


def system_turn_end(tokenizer, template: str, system: str) -> int | None:
    """Return where the system turn ends in template (a rendering whose first message is the system turn
    with content ``system``), or None when the template does not render that turn alone as its prefix
    (e.g. a template that folds the system text into the user turn)."""
    try:
        alone = tokenizer.apply_chat_template([{"role": "system", "content": system}], tokenize=False,
                                              add_generation_prompt=False)
    except TEMPLATE_ERRORS:
        return None
    if not isinstance(alone, str) or not alone or not template.startswith(alone) or alone.count(system) != 1:
        return None
    return len(alone)


def boilerplate_spans(offsets, turn: tuple[int, int], boosted: list[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    """Return the token spans of the turn's chars [turn) outside every boosted token span, position 0 left out.

    offsets: the tokens' char offsets; a token belongs to the turn when its chars lie inside it.
    """
    taken = {k for a, b in boosted for k in range(a, b)}
    inside = [k for k, (a, b) in enumerate(offsets)
              if k > 0 and b > a and a >= turn[0] and b <= turn[1] and k not in taken]
    out: list[tuple[int, int]] = []
    for k in inside:
        if out and out[-1][1] == k:
            out[-1] = (out[-1][0], k + 1)
        else:
            out.append((k, k + 1))
    return tuple(out)


def _render(tokenizer, instruction: str, query: str, placement: str) -> tuple[str, tuple[int, int], bool, str]:
    """render(), plus the placement actually used after the fallbacks."""
    return _render_turn(tokenizer, instruction, query, placement)[:4]


def _render_turn(tokenizer, instruction: str, query: str,
                 placement: str) -> tuple[str, tuple[int, int], bool, str, int | None]:
    """_render(), plus where the instruction's own turn ends in the text (placement system; None otherwise)."""
    placement = effective_placement(tokenizer, placement)
    if placement == "raw":
        text = f"{instruction}\n\n{query}"
        return text, (0, len(instruction)), False, "raw", None
    if placement == "system":
        messages = [{"role": "system", "content": _S_INSTR}, {"role": "user", "content": _S_QUERY}]
    elif placement == "prefix":
        messages = [{"role": "user", "content": f"{_S_INSTR}\n\n{_S_QUERY}"}]
    else:
        raise ValidationError(f"unknown placement {placement!r}; use system, prefix or raw", field="placement")
    try:
        template = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    except TEMPLATE_ERRORS as exc:  # e.g. a template's raise_exception("System role not supported")
        if placement == "system":
            warnings.warn(f"chat template rejects a system turn ({exc}); using placement 'prefix'", stacklevel=2)
            return _render_turn(tokenizer, instruction, query, "prefix")
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
    end = system_turn_end(tokenizer, template, _S_INSTR) if placement == "system" else None
    if end is not None:  # the instruction (the turn's only sentinel) stands in it, so it shifts by its length
        end += len(instruction) - len(_S_INSTR)
    return text, (i, i + len(instruction)), True, placement, end


def build_prompt(tokenizer, instruction: str, query: str, placement: str) -> Prompt:
    """Render and tokenize the prompt; the span covers every token that overlaps the instruction text."""
    text, (cs, ce), templated, used, turn_end = _render_turn(tokenizer, instruction, query, placement)
    enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    # Overlap, not containment: a token may carry a neighbour's whitespace with the instruction's first
    # or last characters, and that token is still part of the instruction.
    inside = [k for k, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
    if not inside:
        raise ValidationError("the instruction produced no tokens", field="instruction")
    span = (inside[0], inside[-1] + 1)
    boilerplate = boilerplate_spans(offsets, (0, turn_end), [span]) if turn_end is not None else ()
    return Prompt(text=text, input_ids=list(ids), span=span, char_span=(cs, ce), placement=used,
                  spans=((*span, None),), boilerplate=boilerplate)


def _fold_system(messages: list[dict]) -> list[dict]:
    """Move the system turns' text to the start of the first user turn (placement 'prefix')."""
    system = [m for m in messages if m["role"] == "system"]
    rest = [dict(m) for m in messages if m["role"] != "system"]
    if not system:
        return rest
    head = "\n\n".join(m["content"] for m in system)
    for m in rest:
        if m["role"] == "user":
            m["content"] = f"{head}\n\n{m['content']}" if m["content"] else head
            return rest
    return [{"role": "user", "content": head}, *rest]


def render_chat(tokenizer, messages, placement: str) -> tuple[str, list[tuple[int, int]], bool]:
    """Return (prompt text, each boosted segment's char span in order, whether special tokens are in the text).

    Boosted segments go through the template as sentinels and are put back afterwards, so their
    offsets are exact; unboosted text goes through the template as it is, so a chat without boosted
    segments renders exactly as ``apply_chat_template`` renders it.
    """
    placement = effective_placement(tokenizer, placement)
    boosted: list[str] = []
    turns = []
    for m in messages:
        parts = []
        for seg in m.segments:
            if seg.multiplier is None:
                parts.append(seg.text)
            else:
                parts.append(_s_span(len(boosted)))
                boosted.append(seg.text)
        turns.append({"role": m.role, "content": "".join(parts)})
    if placement == "raw":
        template, templated = "\n\n".join(t["content"] for t in turns), False
    else:
        if placement == "prefix":
            turns = _fold_system(turns)
        elif placement != "system":
            raise ValidationError(f"unknown placement {placement!r}; use system, prefix or raw", field="placement")
        try:
            template = tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        except TEMPLATE_ERRORS as exc:  # e.g. a template's raise_exception("System role not supported")
            if placement == "system" and any(t["role"] == "system" for t in turns):
                warnings.warn(f"chat template rejects a system turn ({exc}); using placement 'prefix'", stacklevel=2)
                return render_chat(tokenizer, messages, "prefix")
            raise ValidationError(f"the model's chat template failed: {exc}", field="messages") from None
        templated = True
    marks = [_s_span(k) for k in range(len(boosted))]
    if any(template.count(mark) != 1 for mark in marks):
        raise ValidationError("the chat template alters message text, so the boosted spans cannot be located; "
                              "use placement 'raw'", field="placement")
    # Put the texts back in order of position; each later offset shifts by what came before it.
    order = sorted(range(len(marks)), key=lambda k: template.index(marks[k]))
    shift, cursor, pieces, char_spans = 0, 0, [], [(0, 0)] * len(marks)
    for k in order:
        at = template.index(marks[k])
        pieces.append(template[cursor:at])
        start = at + shift
        pieces.append(boosted[k])
        char_spans[k] = (start, start + len(boosted[k]))
        shift += len(boosted[k]) - len(marks[k])
        cursor = at + len(marks[k])
    pieces.append(template[cursor:])
    return "".join(pieces), char_spans, templated


def build_chat_prompt(tokenizer, messages, placement: str) -> Prompt:
    """Render and tokenize a chat; each boosted segment's span covers every token overlapping its text."""
    text, char_spans, templated = render_chat(tokenizer, messages, placement)
    enc = tokenizer(text, add_special_tokens=not templated, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    multipliers = [s.multiplier for m in messages for s in m.segments if s.multiplier is not None]
    spans = []
    for k, ((cs, ce), m) in enumerate(zip(char_spans, multipliers, strict=True)):
        inside = [i for i, (a, b) in enumerate(offsets) if b > a and a < ce and b > cs]
        if not inside:
            raise ValidationError(f"boosted span {k + 1} produced no tokens", field="messages")
        spans.append((inside[0], inside[-1] + 1, m))
    if spans:
        hull = (min(s for s, _, _ in spans), max(e for _, e, _ in spans))
        char_hull = (min(s for s, _ in char_spans), max(e for _, e in char_spans))
    else:
        hull, char_hull = (0, 0), (0, 0)
    return Prompt(text=text, input_ids=list(ids), span=hull, char_span=char_hull,
                  placement=effective_placement(tokenizer, placement), spans=tuple(spans))
