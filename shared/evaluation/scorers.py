"""Scores of one output, declared once: instruction checks, fluency and degeneration signals, the judge.

``SCORERS`` is the registry the worker, the job page and the CSV export read: each scorer's kind
("check", "fluency" or "judge"), whether it is cheap (computed for every run) or expensive (computed
when asked: perplexity needs a forward pass of the unboosted model, the judge an HTTP call), its output
type and its columns, which are both the keys it adds to a run's score dict and its CSV column names.
``score_output`` fills every column (expensive ones from its inputs, None when not given).

Text signals work on *words*: the casefolded output split into runs of letters and digits, with each
Chinese, Japanese or Korean character a word of its own, and every number the same word "0", so a
numbered list that repeats its item ("14. Stay healthy", "15. Stay healthy", ...) counts as repetition.

- ``repeated_ngram_share``: rep-4 of Welleck et al. (2019), 1 - distinct 4-grams / all 4-grams
  (0 for fewer than 4 words). ``repetitive`` when it is at least 0.3.
- ``longest_repeat_words``: the longest run of words that occurs twice in the output (overlaps allowed,
  so a loop of period p over n words gives n - p).
- ``copy_run_words``: the longest run of consecutive instruction words that the output reproduces;
  ``copied`` when it is at least k (default 6). Text in double quotes ("...", “...”, «...») in the
  instruction is left out, since an instruction quotes what the output should contain.
- ``echo_run_words``: the same against the query (shown, not scored: IFEval's repeat_prompt asks for it).
- ``empty``: the output has no letter or digit. ``truncated``: generation stopped at max_new_tokens
  without an end-of-sequence token (None when the counts are not known).
- ``canned``: every clause of the output is stock assistant talk ("I'm ready to help.", "How can I
  help you today?"), an answer that ignores the query.
- ``deflected``: the output talks about the instruction or offers help instead of answering the query
  ("I am ready to assist you. I will provide you with a response in English in all lowercase letters."):
  canned; or some sentence is such talk (about the answer or the question, an offer, an apology, a request
  for input) and the other sentences hold fewer than 6 words that could answer (neither function words nor
  the instruction's); or the output is a bare scaffold of the instruction ("SECTION 1: SECTION 2:", "P.S.",
  "The answer is:") (``is_deflection``). English only. On 192 real outputs of SmolLM2-135M-Instruct at
  M = 5..11, labelled by reading (tests/unit/data/deflection_labels.jsonl): precision 1.00, recall 0.79.
- ``effective``: ``follows`` and neither ``copied`` nor ``deflected`` (None when the case has no checks):
  the success a user would count.
- ``perplexity``: given by the worker: exp of the mean negative log-likelihood of the output tokens,
  after the same prompt (chat template, instruction and query), under the same model without the boost.

Fluency, on the paper's 0-2 scale (``FluencyParams`` holds the constants)::

    fluency = 0 if empty, else 2 * q_ppl * q_rep * q_copy * q_deflect * q_trunc, rounded to 3 places
    q_ppl    = clamp(1 - ln(ppl / 25) / ln(1000 / 25))       1 when perplexity is None (not computed)
    q_rep    = clamp(1 - (repeated_ngram_share - 0.1) / 0.5)
    q_copy   = clamp(1 - 2 * copy_run_words / words) if copied, else 1
    q_deflect = 0.25 if deflected (canned included), else 1
    q_trunc  = 0.75 if truncated, else 1

where clamp limits to [0, 1]. For SmolLM2-135M-Instruct, fluent answers have perplexity ~3-15 under
the unboosted model, so they keep q_ppl = 1; word salad (hundreds to thousands) goes to 0. A loop
("14. Stay healthy" over and over) has a high rep-4 and scores 0; an output that is half copied
instruction scores 0; a canned reply or a deflection scores at most 0.5; a fluent answer cut at the token
limit 1.5.
Text signals cannot tell a fluent answer to another question ("You can use the following code ...")
from a real one; perplexity after the prompt and the judge can.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from shared.evaluation.checks import evaluate_checks

REPETITIVE = 0.3  # rep-4 at or above which an output is flagged repetitive
NGRAM = 4


@dataclass(frozen=True)
class Scorer:
    name: str
    kind: str  # "check", "fluency" or "judge"
    cost: str  # "cheap": every run; "expensive": when asked
    output: str  # type of its columns' values
    columns: tuple[str, ...]
    description: str


SCORERS: tuple[Scorer, ...] = (
    Scorer("checks", "check", "cheap", "bool|int|str|None",
           ("follows", "follows_loose", "checks_passed", "checks_total", "failed_checks"),
           "The case's simple and IFEval checks: follows = all pass (strict), follows_loose = IFEval's loose "
           "variant; None when the case has no checks."),
    Scorer("length", "fluency", "cheap", "int", ("words",), "Words in the output."),
    Scorer("empty", "fluency", "cheap", "bool", ("empty",), "The output has no letter or digit."),
    Scorer("truncated", "fluency", "cheap", "bool|None", ("truncated",),
           "Stopped at max_new_tokens without an end-of-sequence token."),
    Scorer("repetition", "fluency", "cheap", "float|int|bool",
           ("repeated_ngram_share", "longest_repeat_words", "repetitive"),
           "Share of repeated word 4-grams (rep-4), longest repeated run of words, repetitive = rep-4 >= 0.3."),
    Scorer("instruction_copy", "fluency", "cheap", "int|bool", ("copy_run_words", "copied", "echo_run_words"),
           "Longest run of instruction words reproduced, copied = run >= k; the same for the query (echo)."),
    Scorer("canned", "fluency", "cheap", "bool", ("canned",), "Only stock assistant phrases, ignoring the query."),
    Scorer("deflection", "fluency", "cheap", "bool", ("deflected",),
           "Talks about the instruction or offers help instead of answering the query (canned included)."),
    Scorer("perplexity", "fluency", "expensive", "float|None", ("perplexity",),
           "Perplexity of the output under the unboosted model (one batched forward pass, worker side)."),
    Scorer("fluency", "fluency", "cheap", "float", ("fluency",),
           "0-2 from perplexity, repetition, copying, deflections, emptiness and truncation (module doc)."),
    Scorer("effective", "check", "cheap", "bool|None", ("effective",),
           "Follows the checks and neither copies the instruction nor deflects; None when the case has no checks."),
    Scorer("judge", "judge", "expensive", "bool|float|str|None", ("judge_follows", "judge_fluency", "judge_reason"),
           "An LLM judge through an OpenAI-compatible endpoint; off by default (shared.evaluation.judge)."),
)
BY_NAME: dict[str, Scorer] = {s.name: s for s in SCORERS}
COLUMNS: tuple[str, ...] = tuple(c for s in SCORERS for c in s.columns)


@dataclass(frozen=True)
class FluencyParams:
    ppl_good: float = 25.0  # at or below: no penalty
    ppl_bad: float = 1000.0  # at or above: q_ppl = 0
    rep_ok: float = 0.10  # rep-4 a fluent answer may have (lists repeat a frame)
    rep_span: float = 0.50  # q_rep falls from 1 to 0 over rep_ok .. rep_ok + rep_span
    canned: float = 0.25  # a deflection's factor too (canned replies are deflections)
    truncated: float = 0.75


DEFAULT_FLUENCY = FluencyParams()

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uac00-\ud7af"
_WORD = re.compile(rf"[{_CJK}]|(?:(?![{_CJK}])[^\W_])+")
_QUOTED = re.compile(r'"[^"]*"|“[^”]*”|«[^»]*»')

_CANNED = re.compile("|".join((
    r"(i'm|i am) (here|ready|happy|glad|always happy) to (help|assist)( you)?( with (that|this|anything|"
    r"your questions?))?( today)?",
    r"how (can|may|could) i (help|assist)( you)?( today)?",
    r"what can i (do|help you with)( for you)?( today)?",
    r"what would you like (to know|me to do|to talk about)( today)?",
    r"(is there )?anything else( i can help( you)? with)?",
    r"(please )?(feel free to|let me know (if|what|how)|don't hesitate to)[^.!?]*",
    r"(i'm|i am) (an? )?(ai|assistant|helpful assistant|language model|ai assistant)",
    r"(sure|okay|ok|of course|certainly|absolutely|great|hello|hi|hey|i understand|got it|thank you|thanks)"
    r"( there)?",
)))


def words(text: str) -> list[str]:
    """Split text into casefolded words, each CJK character one word and every number the word "0"."""
    return ["0" if w.isdigit() else w for w in _WORD.findall(text.casefold())]


def _longest_common_run(a: list[str], b: list[str], *, self_repeat: bool = False) -> int:
    """Return the longest run of consecutive words shared by a and b (self_repeat: two places in a, b is a)."""
    where = defaultdict(list)
    for j, w in enumerate(b):
        where[w].append(j)
    best, prev = 0, {}
    for i, w in enumerate(a):
        cur = {}
        for j in where.get(w, ()):
            if self_repeat and j >= i:
                break
            cur[j] = run = prev.get(j - 1, 0) + 1
            best = max(best, run)
        prev = cur
    return best


def repeated_ngram_share(ws: list[str], n: int = NGRAM) -> float:
    """Return 1 - distinct n-grams / all n-grams of the words (0 when there are fewer than n words)."""
    grams = [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]
    return 1 - len(set(grams)) / len(grams) if grams else 0.0


def copy_run(text: str, source: str, *, drop_quoted: bool = True) -> int:
    """Return the longest run of consecutive words of source (quoted text left out) that text reproduces."""
    ws = words(text)
    # Each piece between quotes on its own, so no run bridges a quote.
    return max(_longest_common_run(ws, words(piece)) for piece in (_QUOTED.split(source) if drop_quoted else [source]))


def is_canned(text: str) -> bool:
    """Tell whether every clause of text is stock assistant talk (and there is at least one)."""
    clauses = [c.strip() for c in re.split(r"[.!?,;:\n]+", text.casefold().replace("’", "'")) if c.strip()]
    return bool(clauses) and all(_CANNED.fullmatch(c) for c in clauses)


# Deflection: sentences about the answer itself, the instruction or the question, or offers of help, not about
# the query (each sentence matched whole, casefolded, end punctuation dropped).
_ABOUT_ANSWER = (r"(response|responses|answer|answers|reply|replies|request|instruction|instructions|question|"
                 r"text|format|formatting|letters?|capital|capitals|lowercase|uppercase|words?|sentences?|"
                 r"paragraphs?|sections?|bullet points?|language|english|french|spanish|german|placeholders?|"
                 r"postscript|title|quotation marks?|commas?|json|keywords?|phrase|highlighted|markdown)")
_DEFLECT_SENTENCE = re.compile("|".join((
    # "I will provide you with a response in English in all lowercase letters."
    rf"(i|i'll|i will|i would|i'd|i can|i'm going to|i am going to|i shall|let me|here is|here's|"
    rf"below is)\b.*\b{_ABOUT_ANSWER}\b.*",
    # "The answer to this question is:", "Your answer should contain at least 3 sentences."
    r"(the|your|my|this) (answer|response|reply|question|request|instruction)s?\b.*",
    r".*\b(your|the) (answer|response)s? (should|must|will)\b.*",
    r".*\b(in|of|to|for|with) your (answer|response)\b.*",
    r".*\bplease\b.*\b(your|the) (answer|response)\b.*|.*\b(your|the) (answer|response)\b.*\bplease\b.*",
    # "Please provide the text you would like me to ..."
    r"(please |kindly )?(provide|give|send|share|tell|show) me (the|your|with|what|which|more|a|an|some)\b.*",
    r"(please )?(provide|give|send|share|enter|paste|type)\b.*\b(text|question|query|topic|input|details|"
    r"information|request)\b.*",
    r".*\b(you want|you would like|you'd like|you asked|you have asked|you requested|you need) me to\b.*",
    r"(what|which) (is|are|would|do|topic|text|question)\b.*\b(you|your)\b.*",
    r"(as|per) (you|your|requested|instructed)\b.*",
    r"(i'm|i am|i'd be|i would be) (ready|happy|glad|here|able|eager|delighted)\b.*",
    r"(i|i will|i'll|i can) (help|assist|do that|do this|try|comply|follow)\b.*",
    r"(sure|okay|ok|of course|certainly|absolutely|understood|got it|alright|great)( thing)?\b.*\b(i|i'll|i will|"
    r"here|let me)\b.*",
    r"(p\.?s\.? )?(i )?hope (this|that|it) helps.*",
    # Apologies, refusals, self-descriptions and offers: "I'm sorry for the confusion, but I can help with that."
    r"(i'm|i am) sorry\b.*",
    r".*\b(i|i'll|i will|i can) (help|assist)( you)? with (that|this|it|anything)\b.*",
    r".*\b(i'm|i am) (unable|not able) to\b.*",
    r"(i'm|i am) (a|an|your) .*",
    r"(i|i'll|i will|i can) (provide|give|offer) you\b.*",
)))
_VERDICT = re.compile(r".*\b(yes|no|maybe|true|false)")  # "The answer to this question is yes." answers it
DEFLECTION_ANSWER_WORDS = 6  # answer words (not function or instruction words) outside such talk that make an answer
# Words that carry no answer: an output made of these and the instruction's own words answers nothing.
_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been am it its this that these those and or but of to in on at for with by from "
    "as into about so if then than here there my your our their his her i you we they he she me us them 0".split())


def _sentences(text: str) -> list[str]:
    return [c.strip() for c in re.split(r"(?<=[.!?:;])\s+|\n+", text.casefold().replace("’", "'")) if c.strip()]


def _format_only(text: str, instruction: str) -> bool:
    """Tell whether text is a bare scaffold: 1 to 3 distinct words that mean something, all of the instruction."""
    content = {w for w in words(text) if w not in _FUNCTION_WORDS}
    # More words than that and it recites the instruction: the copy measure's case, not this one.
    return 1 <= len(content) <= 3 and content <= set(words(instruction))


def is_deflection(text: str, instruction: str = "", k: int = 6) -> bool:
    """Tell whether text talks about the answer or offers help instead of answering the query.

    Deflected: some sentence is such talk (``_DEFLECT_SENTENCE``, or canned) and the other sentences hold fewer
    than DEFLECTION_ANSWER_WORDS words that could answer (not function words, not the instruction's); or the output is only the instruction's format ("SECTION 1: SECTION 2:",
    "The answer is:", "P.S."): one to three distinct words besides function words, all of them the
    instruction's. A sentence the instruction quotes as an answer ("My answer is no.") and one that ends in a
    verdict ("The answer to this question is yes.") answer. A sentence that recites k or more instruction words
    in a row is the copy measure's, so it counts for neither side.
    """
    sentences = _sentences(text)
    if not sentences:
        return False
    # Sentences the instruction offers as answers ("My answer is no."): quoted, of three words or more.
    if " ".join(words(text)) in {" ".join(words(q)) for q in _QUOTED.findall(instruction) if len(words(q)) >= 3}:
        return False
    own = [s for s in sentences if not instruction or copy_run(s, instruction) < k]
    flagged = [s for s in own if not _VERDICT.fullmatch(s.rstrip(".!?:;"))
               and (_DEFLECT_SENTENCE.fullmatch(s.rstrip(".!?:;")) or is_canned(s))]
    # Words that could answer: neither function words nor the instruction's (a JSON or section scaffold has none).
    mine = set(words(instruction)) | _FUNCTION_WORDS
    rest = sum(w not in mine for s in own if s not in flagged for w in words(s))
    if flagged and rest < DEFLECTION_ANSWER_WORDS:
        return True
    return (bool(instruction) and not _VERDICT.fullmatch(sentences[-1].rstrip(".!?:;"))
            and _format_only(text, instruction))


def is_truncated(output_tokens: int | None, max_new_tokens: int | None, hit_eos: bool | None) -> bool | None:
    """Tell whether generation stopped at the token limit without an end-of-sequence token."""
    if output_tokens is None or max_new_tokens is None or hit_eos is None:
        return None
    return not hit_eos and output_tokens >= max_new_tokens


def _clamp(x: float) -> float:
    return min(1.0, max(0.0, x))


def fluency_score(*, empty: bool, perplexity: float | None, rep: float, copied: bool, copy_words: int,
                  n_words: int, canned: bool, truncated: bool | None, deflected: bool = False,
                  params: FluencyParams = DEFAULT_FLUENCY) -> float:
    """Combine the signals into the 0-2 fluency score (formula in the module docstring)."""
    if empty:
        return 0.0
    p = params
    q_ppl = 1.0 if perplexity is None else _clamp(1 - math.log(perplexity / p.ppl_good)
                                                  / math.log(p.ppl_bad / p.ppl_good))
    q_rep = _clamp(1 - (rep - p.rep_ok) / p.rep_span)
    q_copy = _clamp(1 - 2 * copy_words / max(n_words, 1)) if copied else 1.0
    q = q_ppl * q_rep * q_copy * (p.canned if canned or deflected else 1.0) * (p.truncated if truncated else 1.0)
    return round(2 * q, 3)


def score_output(text: str, *, instruction: str, query: str, output_tokens: int | None = None,
                 max_new_tokens: int | None = None, hit_eos: bool | None = None, perplexity: float | None = None,
                 case: Any = None, k: int = 6, loose: bool = True,
                 params: FluencyParams = DEFAULT_FLUENCY) -> dict[str, Any]:
    """Score one output; return a flat JSON-able dict with every key of COLUMNS (judge keys None)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if perplexity is not None and not (math.isfinite(perplexity) and perplexity >= 1.0):
        raise ValueError(f"perplexity must be a finite number >= 1 or None, got {perplexity!r}")
    ws = words(text)
    empty = not any(c.isalnum() for c in text)
    rep = repeated_ngram_share(ws)
    run = copy_run(text, instruction)
    canned = not empty and is_canned(text)
    deflected = canned or (not empty and is_deflection(text, instruction, k))
    truncated = is_truncated(output_tokens, max_new_tokens, hit_eos)
    out: dict[str, Any] = dict.fromkeys(COLUMNS)
    if case is not None:
        checked = evaluate_checks(case, text, loose=loose)
        out.update({key: checked[key] for key in BY_NAME["checks"].columns})
    out.update(
        words=len(ws), empty=empty, truncated=truncated,
        repeated_ngram_share=round(rep, 4), longest_repeat_words=_longest_common_run(ws, ws, self_repeat=True),
        repetitive=rep >= REPETITIVE, copy_run_words=run, copied=run >= k,
        echo_run_words=copy_run(text, query, drop_quoted=False), canned=canned, deflected=deflected,
        perplexity=perplexity,
        fluency=fluency_score(empty=empty, perplexity=perplexity, rep=rep, copied=run >= k, copy_words=run,
                              n_words=len(ws), canned=canned, truncated=truncated, deflected=deflected,
                              params=params),
        effective=effective(out["follows"], copied=run >= k, deflected=deflected, repetitive=rep >= REPETITIVE),
    )
    return out


def effective(follows: bool | None, *, copied: bool | None, deflected: bool | None,
              repetitive: bool | None = False) -> bool | None:
    """Return effective success: follows the checks, no instruction copy, no deflection, no loop (None without checks)."""
    if follows is None:
        return None
    # A loop ("Bonjour. Bonjour. Bonjour.") passes format checks but is no answer a user would count.
    return bool(follows) and not copied and not deflected and not repetitive
