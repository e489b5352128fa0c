"""The deflection detector against 192 real outputs of SmolLM2-135M-Instruct at M = 5..11, labelled by reading.

tests/unit/data/deflection_labels.jsonl: one output a line (case, split, M, instruction, query, output,
deflection, copy) from ``instaboost calibrate --records`` on 48 cases of the ifeval pack (2 queries x 24
instruction classes; M = 5, 7, 9, 11; 64 new tokens, greedy, all layers). A label says what a reader sees:
deflection = the output talks about the instruction or the answer, or offers help, instead of answering the
query ("I'm ready to help. What's your budget?", "SECTION 1: SECTION 2:", "The answer is:"); copy = it
recites the instruction. A recitation is labelled copy only unless it also talks about the answer in its own
words. Outputs in French, Spanish or German that talk about their language are deflections the detector
misses (it reads English).
"""

import json
from pathlib import Path

import pytest

from shared.evaluation.scorers import score_output

LABELS = [json.loads(line) for line in
          (Path(__file__).parent / "data" / "deflection_labels.jsonl").read_text(encoding="utf-8").splitlines()
          if line.strip()]


def confusion(key: str, label: str) -> tuple[int, int, int, int]:
    tp = fp = fn = tn = 0
    for row in LABELS:
        got = score_output(row["output"], instruction=row["instruction"], query=row["query"])[key]
        tp += got and row[label]
        fp += got and not row[label]
        fn += not got and row[label]
        tn += not got and not row[label]
    return tp, fp, fn, tn


def test_the_table_holds_at_least_40_real_outputs_at_m_5_to_13_with_both_labels():
    assert len(LABELS) >= 40
    assert all(5 <= row["M"] <= 13 for row in LABELS)
    assert {row["deflection"] for row in LABELS} == {True, False} and {row["copy"] for row in LABELS} == {True, False}
    assert all(isinstance(row["output"], str) for row in LABELS)


# Measured: deflection precision 1.00, recall 0.79 (tp 31, fp 0, fn 8, tn 153); copy 1.00 and 1.00.
@pytest.mark.parametrize("key, label, precision, recall", [("deflected", "deflection", 0.9, 0.75),
                                                            ("copied", "copy", 0.95, 0.95)])
def test_precision_and_recall_on_the_labelled_outputs(key, label, precision, recall, capsys):
    tp, fp, fn, tn = confusion(key, label)
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    with capsys.disabled():
        print(f"\n{key} vs label {label}: precision {p:.2f}, recall {r:.2f} (tp {tp}, fp {fp}, fn {fn}, tn {tn}, "
              f"n {len(LABELS)})")
    assert p >= precision and r >= recall
