"""Evaluation library for calibrating InstaBoost: torch-free, shared by the worker and the web app.

- ``checks``: the check registry (simple rules and Google's IFEval verifiers), validation and evaluation.
- ``scorers``: the scorer registry and ``score_output``: checks, repetition, instruction copying,
  empty/truncated output, canned replies, deflections, perplexity (given by the worker), the 0-2 fluency
  score and effective success (follows, no copy, no deflection).
- ``judge``: an optional LLM judge through an OpenAI-compatible endpoint.
- ``cases``: the Case record, case files (YAML, JSON, JSONL), the built-in packs and the fixed split.
- ``protocol``: the paper's protocol: grids, stop rule, choice of M by effective success under a copy
  ceiling, bootstrap CIs, summary table.

Importing any of these is cheap: the IFEval verifiers (and NLTK, langdetect) load on first evaluation.
"""
