"""Pass/fail checks on an output, declared once: the simple rules and Google's IFEval verifiers.

A case lists simple checks under ``check`` (one mapping or a list) and IFEval instructions under
``ifeval`` (a list; an entry is an id alone when the instruction takes no kwargs)::

    check: [{type: regex, value: "(?i)\\bbonjour\\b"}, {type: max_words, value: 50}]
    ifeval:
      - change_case:english_lowercase
      - {id: length_constraints:number_words, kwargs: {num_words: 50, relation: less than}}

Every kwarg an IFEval instruction takes is required: the verifiers pick a *random* value for a missing
one, which would make a check differ from run to run.

Validation reads only the tables below, so the web app can check an upload without importing the
verifiers. Evaluation runs Google's verifiers offline through shared.evaluation.verifiers, which imports
them on first use.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

from shared.errors import ValidationError
from shared.evaluation.verifiers import ifeval_backend, run_ifeval

# --- simple checks ----------------------------------------------------------------------------------

def _is_json(text: str, _value: Any) -> bool:
    try:
        json.loads(text.removeprefix("```json").removeprefix("```").removesuffix("```").strip())
        return True
    except ValueError:
        return False


@dataclass(frozen=True)
class CheckType:
    name: str
    value: str | None  # what its value is: "regex", "text", "count", or None when it takes no value
    description: str
    test: Callable[[str, Any], bool]  # (stripped output, value) -> passed


CHECK_TYPES: tuple[CheckType, ...] = (
    CheckType("regex", "regex", "The output matches the regular expression somewhere (re.search).",
              lambda t, v: re.search(str(v), t) is not None),
    CheckType("not_contains_regex", "regex", "The output has no match of the regular expression.",
              lambda t, v: re.search(str(v), t) is None),
    CheckType("contains", "text", "The output contains the text, ignoring case.",
              lambda t, v: str(v).lower() in t.lower()),
    CheckType("not_contains", "text", "The output does not contain the text, ignoring case.",
              lambda t, v: str(v).lower() not in t.lower()),
    CheckType("json", None, "The whole output parses as JSON (a ```json fence around it is allowed).", _is_json),
    CheckType("lowercase", None, "The output has letters and no uppercase ones.",
              lambda t, v: t == t.lower() and any(c.isalpha() for c in t)),
    CheckType("uppercase", None, "The output has letters and no lowercase ones.",
              lambda t, v: t == t.upper() and any(c.isalpha() for c in t)),
    CheckType("max_words", "count", "The output has between 1 and N whitespace-separated words.",
              lambda t, v: 0 < len(t.split()) <= int(v)),
)
BY_TYPE: dict[str, CheckType] = {c.name: c for c in CHECK_TYPES}


@dataclass(frozen=True)
class Check:
    """One simple pass/fail rule applied to an output (stripped of surrounding whitespace)."""

    type: str
    value: Any = None

    def __call__(self, text: str) -> bool:
        return BY_TYPE[self.type].test(text.strip(), self.value)

    @property
    def label(self) -> str:
        return f"{self.type}:{self.value}" if self.value is not None else self.type


def _value_problem(kind: str, value: Any, compile_regex: bool = True) -> str | None:
    """Return what is wrong with a simple check's value, or None."""
    if kind == "count":
        if isinstance(value, float) and value.is_integer() and value >= 0:
            return None  # JSON's 50.0 is the integer 50
        if isinstance(value, bool) or not re.fullmatch(r"[0-9]+", str(value)):
            return f"needs a whole number, got {value!r}"
    elif not isinstance(value, (str, int, float)) or isinstance(value, bool) or str(value) == "":
        return f"needs a non-empty text value, got {value!r}"
    elif kind == "regex" and compile_regex:
        try:
            re.compile(str(value))
        except re.error as exc:
            return f"bad regex {value!r}: {exc}"
    return None


def parse_check(raw: Any, *, schema_only: bool = False) -> tuple[Check | None, list[str]]:
    """Return (the check, []) for a raw ``{type, value}`` mapping, or (None, problems).

    schema_only applies only the rules JSON Schema can state (the job API follows its OpenAPI document
    exactly): a regex is not compiled here, and one that does not compile fails its check when scored.
    """
    if not isinstance(raw, Mapping) or not isinstance(raw.get("type"), str) or raw["type"] not in BY_TYPE:
        return None, [f"check needs a type, one of {', '.join(BY_TYPE)}; got {raw!r}"]
    spec = BY_TYPE[raw["type"]]
    extra = set(raw) - {"type", "value"}
    if extra:
        return None, [f"check {spec.name} has unknown keys {sorted(map(str, extra))}; use type and value"]
    if spec.value is None:
        if raw.get("value") is not None:
            return None, [f"check type {spec.name} takes no value; remove {raw['value']!r}"]
        return Check(spec.name), []
    if "value" not in raw:
        return None, [f"check type {spec.name} needs a value"]
    problem = _value_problem(spec.value, raw["value"], not schema_only)
    if problem:
        return None, [f"check type {spec.name}: {problem}"]
    # Values are stored as their kind says (text as str, count as int), so YAML's `value: 42` is "42".
    value = int(raw["value"]) if spec.value == "count" else str(raw["value"])
    return Check(spec.name, value), []


# --- IFEval -----------------------------------------------------------------------------------------

RELATIONS = ("less than", "at least")
# The response languages IFEval's verifier knows (if_verifiable's LANGUAGE_CODES; a test keeps them equal).
LANGUAGES = ("en", "es", "pt", "ar", "hi", "fr", "ru", "de", "ja", "it", "bn", "uk", "th", "ur", "ta", "te", "bg",
             "ko", "pl", "he", "fa", "vi", "ne", "sw", "kn", "mr", "gu", "pa", "ml", "fi")

# Every IFEval kwarg and what it must be. Keywords and markers are used as regular expressions by the verifiers.
IFEVAL_KWARGS: dict[str, str] = {
    "keywords": "regex_list", "forbidden_words": "regex_list", "keyword": "regex", "section_spliter": "regex",
    "postscript_marker": "regex", "first_word": "text", "end_phrase": "text", "prompt_to_repeat": "text",
    "frequency": "count", "let_frequency": "count", "capital_frequency": "count", "num_sentences": "count",
    "num_paragraphs": "count", "nth_paragraph": "count", "num_words": "count", "num_placeholders": "count",
    "num_bullets": "count", "num_highlights": "count", "num_sections": "count",
    "relation": "relation", "let_relation": "relation", "capital_relation": "relation",
    "letter": "letter", "language": "language",
}


@dataclass(frozen=True)
class IfevalSpec:
    id: str
    kwargs: tuple[str, ...]  # all required
    description: str  # what passes
    needs: str = ""  # offline data it uses: "langdetect" (shipped in the package) or "punkt" (see module doc)


IFEVAL: tuple[IfevalSpec, ...] = (
    IfevalSpec("keywords:existence", ("keywords",), "Every keyword appears (case-insensitive)."),
    IfevalSpec("keywords:frequency", ("keyword", "frequency", "relation"),
               "The keyword appears less than / at least `frequency` times."),
    IfevalSpec("keywords:forbidden_words", ("forbidden_words",), "None of the words appears as a whole word."),
    IfevalSpec("keywords:letter_frequency", ("letter", "let_frequency", "let_relation"),
               "The letter appears less than / at least `let_frequency` times."),
    IfevalSpec("language:response_language", ("language",), "langdetect finds the language (ISO 639-1 code).",
               "langdetect"),
    IfevalSpec("length_constraints:number_sentences", ("num_sentences", "relation"),
               "Less than / at least `num_sentences` sentences.", "punkt"),
    IfevalSpec("length_constraints:number_paragraphs", ("num_paragraphs",),
               "Exactly `num_paragraphs` paragraphs separated by the markdown divider ***."),
    IfevalSpec("length_constraints:number_words", ("num_words", "relation"),
               "Less than / at least `num_words` words."),
    IfevalSpec("length_constraints:nth_paragraph_first_word", ("num_paragraphs", "nth_paragraph", "first_word"),
               "`num_paragraphs` paragraphs separated by blank lines; paragraph `nth_paragraph` starts with "
               "`first_word`."),
    IfevalSpec("detectable_content:number_placeholders", ("num_placeholders",),
               "At least `num_placeholders` placeholders in square brackets, like [address]."),
    IfevalSpec("detectable_content:postscript", ("postscript_marker",),
               "A postscript starting with the marker (e.g. P.S.)."),
    IfevalSpec("detectable_format:number_bullet_lists", ("num_bullets",),
               "Exactly `num_bullets` markdown bullet lines (* or -)."),
    IfevalSpec("detectable_format:constrained_response", (),
               "Contains 'My answer is yes.', 'My answer is no.' or 'My answer is maybe.'."),
    IfevalSpec("detectable_format:number_highlighted_sections", ("num_highlights",),
               "At least `num_highlights` markdown-highlighted *sections*."),
    IfevalSpec("detectable_format:multiple_sections", ("section_spliter", "num_sections"),
               "At least `num_sections` sections marked '<section_spliter> N'."),
    IfevalSpec("detectable_format:json_format", (), "The whole output is JSON (``` fences allowed)."),
    IfevalSpec("detectable_format:title", (), "A title in double angular brackets, like <<title>>."),
    IfevalSpec("combination:two_responses", (), "Two different responses separated by ******."),
    IfevalSpec("combination:repeat_prompt", ("prompt_to_repeat",),
               "Starts by repeating `prompt_to_repeat` (case-insensitive)."),
    IfevalSpec("startend:end_checker", ("end_phrase",), "Ends with the phrase (case-insensitive)."),
    IfevalSpec("change_case:capital_word_frequency", ("capital_frequency", "capital_relation"),
               "Less than / at least `capital_frequency` words in ALL CAPITALS.", "punkt"),
    IfevalSpec("change_case:english_capital", (), "English (langdetect) and all capital letters.", "langdetect"),
    IfevalSpec("change_case:english_lowercase", (), "English (langdetect) and all lowercase letters.", "langdetect"),
    IfevalSpec("punctuation:no_comma", (), "No commas."),
    IfevalSpec("startend:quotation", (), "The whole output is wrapped in double quotation marks."),
)
IFEVAL_BY_ID: dict[str, IfevalSpec] = {s.id: s for s in IFEVAL}


@dataclass(frozen=True)
class IfevalCheck:
    """One IFEval instruction (id and kwargs), verified by Google's instruction class."""

    id: str
    kwargs: Mapping[str, Any] = field(default_factory=dict, hash=False)

    def __call__(self, text: str) -> bool:
        return run_checks([self], text, loose=False)["follows"]

    @property
    def label(self) -> str:
        args = json.dumps(dict(self.kwargs), ensure_ascii=False, sort_keys=True) if self.kwargs else ""
        return f"ifeval:{self.id}{args}"


def _kwarg_problem(kind: str, value: Any, compile_regex: bool = True) -> str | None:
    if kind == "count":
        if isinstance(value, float) and value.is_integer() and value >= 1:
            return None  # JSON's 50.0 is the integer 50
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            return f"must be a whole number >= 1, got {value!r}"
    elif kind == "relation":
        if value not in RELATIONS:
            return f"must be one of {' or '.join(map(repr, RELATIONS))}, got {value!r}"
    elif kind == "letter":
        if not (isinstance(value, str) and len(value) == 1 and value.isascii() and value.isalpha()):
            return f"must be one letter a-z, got {value!r}"
    elif kind == "language":
        if value not in LANGUAGES:
            close = difflib.get_close_matches(str(value), LANGUAGES, n=3)
            hint = f" (did you mean {', '.join(close)}?)" if close else ""
            return f"must be an ISO 639-1 code IFEval knows, one of {', '.join(LANGUAGES)}; got {value!r}{hint}"
    else:
        if kind == "regex_list" and (not isinstance(value, list) or not value):
            return f"must be a non-empty list of words, got {value!r}"
        for item in value if kind == "regex_list" else [value]:
            if not isinstance(item, str) or not item.strip():
                return f"must be non-empty text, got {item!r}"
            if kind != "text" and compile_regex:
                try:
                    re.compile(item)
                except re.error as exc:
                    return f"{item!r} is used as a regular expression and does not compile: {exc}"
    return None


def _close_ids(wanted: str) -> list[str]:
    ids = [s.id for s in IFEVAL]
    by_tail = {s.id.partition(":")[2]: s.id for s in IFEVAL}
    close = difflib.get_close_matches(wanted, ids, n=3, cutoff=0.5)
    close += [by_tail[t] for t in difflib.get_close_matches(wanted.partition(":")[2] or wanted, by_tail, n=3,
                                                             cutoff=0.6)]
    return list(dict.fromkeys(close))[:3]


def parse_ifeval(raw: Any, *, schema_only: bool = False) -> tuple[IfevalCheck | None, list[str]]:
    """Return (the check, []) for an id or an ``{id, kwargs}`` mapping, or (None, problems).

    schema_only applies only the rules JSON Schema can state (the job API follows its OpenAPI document
    exactly): kwargs used as regexes are not compiled and nth_paragraph is not compared with
    num_paragraphs; such a check then fails when scored, with its error kept.
    """
    if isinstance(raw, str):
        raw = {"id": raw}
    if not isinstance(raw, Mapping) or not isinstance(raw.get("id"), str):
        return None, [f"an ifeval entry is an id or a mapping {{id: ..., kwargs: {{...}}}}; got {raw!r}"]
    extra = set(raw) - {"id", "kwargs"}
    if extra:
        return None, [f"ifeval entry {raw['id']!r} has unknown keys {sorted(map(str, extra))}; use id and kwargs"]
    spec = IFEVAL_BY_ID.get(raw["id"])
    if spec is None:
        close = _close_ids(raw["id"])
        hint = f"did you mean {' or '.join(close)}?" if close else "see shared.evaluation.checks.IFEVAL for the list"
        return None, [f"unknown IFEval id {raw['id']!r}; {hint}"]
    kwargs = {} if raw.get("kwargs") is None else raw["kwargs"]
    if not isinstance(kwargs, Mapping):
        return None, [f"ifeval {spec.id}: kwargs must be a mapping, got {kwargs!r}"]
    problems = []
    unknown = sorted(set(map(str, kwargs)) - set(spec.kwargs))
    if unknown:
        takes = ", ".join(spec.kwargs) or "none"
        problems.append(f"ifeval {spec.id}: unknown kwargs {unknown}; it takes {takes}")
    missing = [k for k in spec.kwargs if kwargs.get(k) is None]
    if missing:
        problems.append(f"ifeval {spec.id}: missing kwargs {', '.join(missing)}; give every kwarg "
                        f"({', '.join(spec.kwargs)}), since the verifier picks random values for missing ones")
    for name in spec.kwargs:
        if kwargs.get(name) is not None:
            problem = _kwarg_problem(IFEVAL_KWARGS[name], kwargs[name], not schema_only)
            if problem:
                problems.append(f"ifeval {spec.id}: {name} {problem}")
    if not problems and not schema_only and spec.id == "length_constraints:nth_paragraph_first_word" \
            and kwargs["nth_paragraph"] > kwargs["num_paragraphs"]:
        problems.append(f"ifeval {spec.id}: nth_paragraph must be <= num_paragraphs")
    if problems:
        return None, problems
    return IfevalCheck(spec.id, {k: int(kwargs[k]) if IFEVAL_KWARGS[k] == "count" else kwargs[k]
                                 for k in spec.kwargs}), []


def parse_checks(check: Any = None, ifeval: Any = None) -> tuple[tuple[Check, ...], tuple[IfevalCheck, ...]]:
    """Parse a case's ``check`` (one or a list) and ``ifeval`` (a list); raise ValidationError listing all problems."""
    checks, ifevals, errors = [], [], []
    for i, raw in enumerate(_as_list(check)):
        c, problems = parse_check(raw)
        checks.append(c)
        errors += [{"field": f"check[{i}]", "message": p} for p in problems]
    for i, raw in enumerate(_as_list(ifeval)):
        c, problems = parse_ifeval(raw)
        ifevals.append(c)
        errors += [{"field": f"ifeval[{i}]", "message": p} for p in problems]
    if errors:
        raise ValidationError("; ".join(e["message"] for e in errors), errors=errors)
    return tuple(checks), tuple(ifevals)


def _as_list(raw: Any) -> list:
    return [] if raw is None else raw if isinstance(raw, list) else [raw]


# --- evaluation -------------------------------------------------------------------------------------

def run_checks(checks: Iterable[Check | IfevalCheck], text: str, *, loose: bool = True) -> dict[str, Any]:
    """Apply checks to an output; return follows (all pass), follows_loose, counts and per-check results.

    ``follows_loose`` is IFEval's loose variant for every check: it passes when any of the output, the
    output without markdown asterisks, or either of those without its first line, last line or both passes.
    Both are None when there are no checks. A verifier that raises counts as a fail and its error is kept.
    """
    checks = list(checks)
    needs_backend = checks and (loose or any(isinstance(c, IfevalCheck) for c in checks))
    backend = ifeval_backend() if needs_backend else None
    variants = backend[2](text) if loose and backend else []
    results = []
    for c in checks:
        error = None
        try:
            if isinstance(c, IfevalCheck):
                strict, lax = run_ifeval(c.id, c.kwargs, text, backend)
            else:
                strict = c(text)
                lax = strict or any(v.strip() and c(v) for v in variants)
        except Exception as exc:  # a verifier's bug must not sink the whole job's scoring
            strict, lax, error = False, False, f"{type(exc).__name__}: {exc}"
        results.append({"check": c.label, "pass": bool(strict), "loose": bool(lax) if loose else None,
                        "error": error})
    passed = sum(r["pass"] for r in results)
    return {
        "follows": passed == len(results) if results else None,
        "follows_loose": all(r["loose"] for r in results) if results and loose else None,
        "checks_passed": passed if results else None,
        "checks_total": len(results) if results else None,
        "failed_checks": "; ".join(r["check"] for r in results if not r["pass"]) if results else None,
        "results": results,
    }


def evaluate_checks(case: Any, text: str, *, loose: bool = True) -> dict[str, Any]:
    """Apply a case's simple and IFEval checks to an output (see run_checks for the keys)."""
    return run_checks([*case.checks, *getattr(case, "ifeval", ())], text, loose=loose)
