"""Test cases: the Case record, loading case files (YAML, JSON, JSONL), built-in packs, the fixed split.

A case file holds a list of cases, or a mapping ``{cases: [...], name: ..., description: ...}``; a
JSONL file holds one case per line. A case::

    name: all_lowercase                 # unique in the file
    instruction: Write everything in lowercase letters only.
    query: Tell me about Paris.
    description: Style - never use capital letters.        # optional
    check: {type: lowercase}            # optional: one simple check or a list (``checks`` is the same key)
    ifeval: [change_case:english_lowercase]                 # optional: IFEval instructions (see checks.py)
    split: validation                   # optional: pin the case to a half (validation or test)

The parser follows the suffix: ``.json`` with the JSON parser (so an escaped pair such as
``\\ud83d\\ude02`` is one emoji), ``.jsonl`` line by line, ``.yaml``/``.yml`` with YAML. Every
problem in a file is reported at once, in one ValidationError whose ``errors`` name the file, the case
(number and name) and the field. Text must be valid Unicode without NUL characters; the only changes
made to it are dropping a UTF-8 byte order mark and storing check values as their kind says.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from shared import yamlsafe
from shared.errors import NotFound, ValidationError
from shared.evaluation.checks import Check, IfevalCheck, parse_check, parse_ifeval, run_checks

PACKS_DIR = Path(__file__).parent / "packs"
FORMATS = {".yaml": "yaml", ".yml": "yaml", ".json": "json", ".jsonl": "jsonl"}
CASE_KEYS = ("name", "instruction", "query", "description", "check", "checks", "ifeval", "split")
FILE_KEYS = ("cases", "name", "description")
SPLITS = ("validation", "test")
SPLIT_SEED = 42
MAX_NAME_CHARS = 200
MAX_TEXT_CHARS = 20000  # the default of settings' limits.max_text_chars; callers pass the deployment's value


@dataclass(frozen=True)
class Case:
    name: str
    instruction: str
    query: str
    description: str = ""
    checks: tuple[Check, ...] = ()
    ifeval: tuple[IfevalCheck, ...] = ()
    split: str | None = None  # pinned half, or None to let split() choose

    def passes(self, text: str) -> bool | None:
        """Return whether every check passes (strict), or None when the case has none."""
        return run_checks([*self.checks, *self.ifeval], text, loose=False)["follows"]


@dataclass(frozen=True)
class Pack:
    name: str
    file: str
    description: str
    placement: str = "system"  # where the instruction goes when the pack runs


PACKS: tuple[Pack, ...] = (
    Pack("default", "default.yaml", "The 12 hand-written cases: language, persona, style, format, refusal, content."),
    Pack("ifeval", "ifeval.yaml", "IFEval instruction classes x everyday queries, the instruction in the system "
                                  "turn, verified by Google's IFEval checkers (120 cases)."),
)
PACKS_BY_NAME: dict[str, Pack] = {p.name: p for p in PACKS}


def _string_problem(value: str) -> str | None:
    """Return why a string cannot be stored as text (NUL, lone surrogate), or None."""
    if "\x00" in value:
        return f"contains a NUL character at position {value.index(chr(0)) + 1}; remove it"
    for i, c in enumerate(value):
        if "\ud800" <= c <= "\udfff":
            nxt = value[i + 1] if i + 1 < len(value) else ""
            if "\ud800" <= c <= "\udbff" and "\udc00" <= nxt <= "\udfff":
                code = 0x10000 + ((ord(c) - 0xD800) << 10) + (ord(nxt) - 0xDC00)
                how = (f"it is the escaped pair for {chr(code)} (U+{code:04X}), which YAML reads as two halves: "
                       f"write the character itself or \\U{code:08X}")
            else:
                how = "write the character itself instead of a \\u escape"
            return f"is not valid Unicode text: lone surrogate \\u{ord(c):04x} at position {i + 1}; {how}"
    return None


def _blank(value: str) -> bool:
    return not value.replace("\ufeff", "").strip()  # as the job API: a byte order mark is blank too


def _bad_strings(value: Any, path: str) -> Iterable[tuple[str, str]]:
    """Yield (path, problem) for every string under value that is not storable text."""
    if isinstance(value, str):
        problem = _string_problem(value)
        if problem:
            yield path, problem
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _bad_strings(k, f"{path} (a key)")
            yield from _bad_strings(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _bad_strings(v, f"{path}[{i}]")


def _parse_case(raw: Any, max_text_chars: int) -> tuple[Case | None, list[tuple[str, str]]]:
    """Return (case, []) or (None, [(field, problem), ...]) for one raw case."""
    if not isinstance(raw, Mapping):
        return None, [("", f"must be a mapping with name, instruction and query; got {type(raw).__name__}")]
    problems = [(path, f"{path} {problem}") for key, value in raw.items() if isinstance(key, str)
                for path, problem in _bad_strings(value, key)]
    bad = {path.split(".")[0].split("[")[0] for path, _ in problems}  # keys already reported
    unknown = [str(k) for k in raw if k not in CASE_KEYS]
    for key in unknown:
        close = difflib.get_close_matches(key, CASE_KEYS, n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        problems.append((key, f"has unknown keys [{key!r}]{hint}; a case takes {', '.join(CASE_KEYS)}"))
    missing = [k for k in ("name", "instruction", "query")
               if k not in bad and (raw.get(k) is None or (isinstance(raw[k], str) and _blank(raw[k])))]
    if missing:
        problems.append((missing[0], f"is missing {', '.join(missing)}"))
    for key in ("name", "instruction", "query", "description"):
        value = raw.get(key)
        if key in bad or key in missing or value is None:
            continue
        if not isinstance(value, str):
            problems.append((key, f"{key} must be text, got {type(value).__name__} {value!r}; put it in quotes"))
        elif key == "name" and (len(value) > MAX_NAME_CHARS or not value.isprintable()):
            problems.append((key, f"name must be at most {MAX_NAME_CHARS} printable characters on one line"))
        elif key in ("instruction", "query") and len(value) > max_text_chars:
            problems.append((key, f"{key} is {len(value)} characters; at most {max_text_chars} are allowed"))
    if raw.get("split") is not None and raw["split"] not in SPLITS:
        problems.append(("split", f"split must be validation or test (or left out), got {raw['split']!r}"))
    if "check" in raw and "checks" in raw:
        problems.append(("checks", "use check or checks, not both (they are the same key)"))
    check_key = "checks" if "checks" in raw else "check"
    raw_checks, raw_ifeval = raw.get(check_key), raw.get("ifeval")
    checks, ifevals = [], []
    if check_key not in bad:
        for i, item in enumerate(raw_checks if isinstance(raw_checks, list) else [] if raw_checks is None
                                 else [raw_checks]):
            check, msgs = parse_check(item)
            checks.append(check)
            problems += [(f"{check_key}[{i}]", f"{check_key}[{i}]: {m}") for m in msgs]
    if "ifeval" not in bad and raw_ifeval is not None:
        if not isinstance(raw_ifeval, list):
            problems.append(("ifeval", f"ifeval must be a list of ids or {{id, kwargs}} mappings, got {raw_ifeval!r}"))
        else:
            for i, item in enumerate(raw_ifeval):
                check, msgs = parse_ifeval(item)
                ifevals.append(check)
                problems += [(f"ifeval[{i}]", f"ifeval[{i}]: {m}") for m in msgs]
    if problems:
        return None, problems
    return Case(raw["name"], raw["instruction"], raw["query"], raw.get("description") or "", tuple(checks),
                tuple(ifevals), raw.get("split")), []


def _decode(data: str | bytes, source: str) -> str:
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[:exc.start].count(b"\n") + 1
            raise ValidationError(f"{source} is not UTF-8 text: byte {exc.start + 1} (line {line}) cannot be "
                                  f"decoded; save the file as UTF-8", field="cases") from None
    return data.removeprefix("\ufeff")


def _read(text: str, fmt: str, source: str) -> tuple[list[tuple[str, Any]], list[dict]]:
    """Parse text; return ([(where, raw case), ...], file-level errors)."""
    def fail(message: str) -> tuple[list, list[dict]]:
        return [], [{"field": "cases", "message": f"{source} {message}"}]

    if fmt == "jsonl":
        items, errors = [], []
        for n, line in enumerate(text.split("\n"), 1):  # not splitlines(): U+2028 may sit inside a JSON string
            if not line.strip():
                continue
            try:
                items.append((f"line {n}", json.loads(line)))
            except ValueError as exc:
                errors.append({"field": f"line {n}", "message": f"{source} line {n} is not valid JSON: {exc}"})
        return (items, errors) if items or errors else fail("must hold a non-empty list of cases (one per line)")
    if fmt == "json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            return fail(f"is not valid JSON: {exc}")
    elif fmt == "yaml":
        try:
            data = yamlsafe.safe_load(text, "cases files")
        except yamlsafe.AliasRefused as exc:
            return fail(f"is refused: {exc}")
        except yaml.YAMLError as exc:
            return fail(f"is not valid YAML: {' '.join(str(exc).split())}")
    else:
        return fail(f"has unknown format {fmt!r}; use one of {', '.join(sorted(set(FORMATS.values())))}")
    if isinstance(data, dict):
        extra = [str(k) for k in data if k not in FILE_KEYS]
        if extra:
            return fail(f"has unknown top-level keys {extra}; a mapping holds {', '.join(FILE_KEYS)}")
        data = data.get("cases")
    if not isinstance(data, list) or not data:
        return fail("must hold a non-empty list of cases (or a mapping with a 'cases' list)")
    return [(f"case {i}", raw) for i, raw in enumerate(data, 1)], []


def parse_cases(data: str | bytes, fmt: str, *, source: str = "upload",
                max_text_chars: int = MAX_TEXT_CHARS) -> list[Case]:
    """Parse case-file text in fmt ("yaml", "json" or "jsonl"); raise one ValidationError listing every problem."""
    items, errors = _read(_decode(data, source), fmt, source)
    cases, seen = [], {}
    for index, (where, raw) in enumerate(items):
        name = raw.get("name") if isinstance(raw, Mapping) else None
        label = f"{source} {where}" + (f" ({name})" if isinstance(name, str) and not _string_problem(name) else "")
        case, problems = _parse_case(raw, max_text_chars)
        for fld, message in problems:
            errors.append({"field": f"cases[{index}]" + (f".{fld}" if fld else ""), "message": f"{label}: {message}"})
        if isinstance(name, str) and name in seen:
            errors.append({"field": f"cases[{index}].name",
                           "message": f"{label}: duplicate case name {name!r} (also {seen[name]}); names must be "
                                      f"unique"})
        elif isinstance(name, str):
            seen[name] = where
        if case is not None:
            cases.append(case)
    if errors:
        shown = "; ".join(e["message"] for e in errors[:10])
        more = f"; and {len(errors) - 10} more (see errors)" if len(errors) > 10 else ""
        count = f"{len(errors)} problems" if len(errors) > 1 else "1 problem"
        raise ValidationError(f"{source}: {count}: {shown}{more}", errors=errors)
    return cases


def load_cases(path: str | Path, *, max_text_chars: int = MAX_TEXT_CHARS) -> list[Case]:
    """Read a case file, choosing the parser by its suffix (.yaml, .yml, .json, .jsonl)."""
    path = Path(path)
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValidationError(f"cases file {path.name} has suffix {path.suffix or '(none)'!r}; name it .yaml, .yml, "
                              f".json or .jsonl so its format is known", field="cases")
    if not path.is_file():
        raise ValidationError(f"cases file {path} does not exist", field="cases")
    return parse_cases(path.read_bytes(), fmt, source=path.name, max_text_chars=max_text_chars)


def load_pack(name: str) -> list[Case]:
    """Return a built-in pack's cases."""
    pack = PACKS_BY_NAME.get(name)
    if pack is None:
        raise NotFound(f"no built-in case pack {name!r}; the packs are {', '.join(PACKS_BY_NAME)}", field="pack")
    return list(_pack_cases(pack.file))


@functools.cache
def _pack_cases(file: str) -> tuple[Case, ...]:
    """Return a pack file's cases, parsed once per process."""
    # A pack ships with the code and its cases are frozen; parsing ifeval.yaml takes 0.3 s of CPU, which every
    # POST /api/sweeps naming it paid before.
    return tuple(load_cases(PACKS_DIR / file))


def _rank(seed: int, name: str) -> str:
    # sha256, not hash(): the same halves on every Python version and process.
    return hashlib.sha256(f"{seed}\x00{name}".encode("utf-8", "surrogatepass")).hexdigest()


def split(cases: list[Case], seed: int = SPLIT_SEED) -> tuple[list[Case], list[Case]]:
    """Return (validation, test): pinned cases where they say, the rest by seeded hash so validation gets ceil(n/2)."""
    pinned_val = sum(c.split == "validation" for c in cases)
    free = sorted((c for c in cases if c.split is None), key=lambda c: _rank(seed, c.name))
    take = max(0, min(len(free), (len(cases) + 1) // 2 - pinned_val))
    to_val = {c.name for c in free[:take]}
    validation = [c for c in cases if c.split == "validation" or c.name in to_val]
    test = [c for c in cases if c.split == "test" or (c.split is None and c.name not in to_val)]
    return validation, test
