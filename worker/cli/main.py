"""The `instaboost` command: generate, run-tests, serve, settings."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import warnings

from shared.errors import InstaBoostError, ValidationError
from shared.settings import get_settings, to_markdown, to_yaml
from worker.cli.options import HEADS_HELP, add_field_options, add_runtime_args, field_values, parse_heads, pick


# run-tests takes instruction and query from its cases, and its CSV has no attention columns.
RUN_TESTS_SKIP = ("instruction", "query", "attention")


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser for every subcommand."""
    p = argparse.ArgumentParser(prog="instaboost", description="Instruction attention boosting (InstaBoost).")
    p.add_argument("--config", help="config.yaml to read (default: ./config.yaml or $INSTABOOST_CONFIG)")
    sub = p.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="run one generation, no services needed")
    add_field_options(g, required=("instruction", "query"))
    add_runtime_args(g)
    g.add_argument("--layers", help="all | middle | comma-separated indices like 0,3,5")
    g.add_argument("--heads", help=HEADS_HELP)
    g.add_argument("--json", action="store_true", help="print one JSON object instead of the text")

    t = sub.add_parser("run-tests", help="run test cases into the original / all / middle comparison CSV")
    t.add_argument("--cases", help="YAML or JSON file of cases (default: the built-in cases)")
    t.add_argument("--output", help="CSV path (default: results/instaboost_results_<time>.csv)")
    t.add_argument("--num-runs", type=int)
    add_field_options(t, skip=RUN_TESTS_SKIP)
    add_runtime_args(t)
    t.add_argument("--heads", help=HEADS_HELP)
    t.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    c = sub.add_parser("calibrate", help="sweep M over a case set with the paper's protocol and recommend one; "
                                         "no services needed")
    src = c.add_mutually_exclusive_group(required=True)
    src.add_argument("--cases", help="YAML, JSON or JSONL case file (instruction, query, checks or ifeval)")
    src.add_argument("--pack", help="a built-in case pack: default (12 cases) or ifeval (120 cases)")
    grid = c.add_mutually_exclusive_group()
    grid.add_argument("--multipliers", dest="grid_multipliers", help="comma-separated grid of M, e.g. 1,3,5,9 (1 is always run)")
    grid.add_argument("--grid", choices=("paper", "log"), default=None,
                      help="paper: 1, 3, 5, ..., 19 (default); log: 10 log-spaced values from 1 to 20")
    c.add_argument("--layer-modes", dest="sweep_layer_modes", default="all", help="comma-separated layer modes to calibrate: all, middle")
    c.add_argument("--head-fractions", default="1",
                   help="comma-separated shares of heads boosted per layer, each in (0, 1] (default 1)")
    c.add_argument("--scopes", help="comma-separated scopes to calibrate as settings: all, generated, prompt "
                   "(default: --scope)")
    c.add_argument("--target-masses", help="comma-separated target masses to calibrate as settings, each in "
                   "(0, 1) or none (default: --target-mass)")
    c.add_argument("--boilerplate-multipliers", help="comma-separated boilerplate multipliers to calibrate as "
                   "settings, each in (0, 1], 1 = off (default: --boilerplate-multiplier)")
    c.add_argument("--fluency-floor", type=float, default=None, help="stop going up once mean validation "
                   "fluency (0-2) falls below this (default 1.0)")
    c.add_argument("--copy-ceiling", type=float, default=None, help="pass over an M whose validation copy rate "
                   "is above this share (default: setting scoring.copy_ceiling, 0.05)")
    c.add_argument("--limit", type=int, help="use only the first N cases of the set")
    c.add_argument("--batch-size", type=int, default=16, help="rows generated together (default 16)")
    c.add_argument("--no-perplexity", action="store_true",
                   help="skip the perplexity pass (fluency then rests on the text signals alone)")
    c.add_argument("--test-at", choices=("all", "recommended"), default="all",
                   help="run the test half at every M (all, the full table) or only unboosted and at each "
                        "setting's recommended M (recommended: the paper's protocol, half the cost)")
    c.add_argument("--threads", type=int, help="torch CPU threads (1 is fastest on a busy machine)")
    c.add_argument("--csv", help="also write the per-M table here as CSV")
    c.add_argument("--records", help="also write every scored run here as JSON lines")
    c.add_argument("--from-records", metavar="FILE", help="generate nothing: score the outputs of a --records file "
                   "of this case set again with today's scorers and print its table and recommendation")
    add_field_options(c, skip=CALIBRATE_SKIP)
    add_runtime_args(c)

    s = sub.add_parser("serve", help="start the web app and one worker on this machine")
    try:
        from worker.cli.serve import add_serve_arguments

        add_serve_arguments(s)
    except ImportError:  # pragma: no cover - serve lands separately
        pass

    st = sub.add_parser("settings", help="show settings, or print config.yaml / the README table")
    fmt = st.add_mutually_exclusive_group()
    fmt.add_argument("--yaml", action="store_true", help="print config.yaml with every default")
    fmt.add_argument("--markdown", action="store_true", help="print the settings table for the README")
    return p


CALIBRATE_SKIP = ("instruction", "query", "multipliers", "layer_modes", "head_boost_percentage", "engine",
                  "attention")


def _spec_and_params(args, s):
    from shared.spec import BoostSpec, GenerationParams

    values = field_values(args, s)
    fraction, explicit = parse_heads(args.heads)
    heads = fraction if fraction is not None else s.instaboost.head_boost_percentage / 100.0
    layers = getattr(args, "layers", None)
    if layers is None:
        layers = "middle" if s.instaboost.boost_middle_layers_only else "all"
    target = values.get("target_mass")
    # A target mass alone is the target-mass mode: no fixed M on top unless --multiplier is given.
    m = 1.0 if target is not None and getattr(args, "multipliers", None) is None else values["multipliers"][0]
    spec = BoostSpec(multiplier=m, layers=layers, start_layer=values["start_layer"],
                     num_middle_layers=values["num_middle_layers"], head_fraction=heads, heads=explicit,
                     seed=values["seed"], placement=values["placement"], scope=values.get("scope", "all"),
                     target_mass=target, boilerplate_multiplier=values.get("boilerplate_multiplier", 1.0))
    extras = ("top_k", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty")
    params = GenerationParams(max_new_tokens=values["max_new_tokens"], temperature=values["temperature"],
                              top_p=values["top_p"], seed=values["seed"],
                              **{k: values[k] for k in extras if k in values})
    return spec, params, values


def _engine(args, s, values):
    from transformers.utils import logging as hf_logging

    from worker.engine import get_engine

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()

    return get_engine(values["model"], values["engine"], device=pick(args.device, s.model.device),
                      dtype=pick(args.dtype, s.model.dtype))


def cmd_generate(args) -> int:
    """Run one generation and print the text or a JSON object."""
    from shared.spec import GenerationRequest

    s = get_settings()
    spec, params, values = _spec_and_params(args, s)
    request = GenerationRequest(values["instruction"], values["query"], spec, params)
    engine = _engine(args, s, values)
    result = engine.generate([request], attention=values["attention"])[0]
    if args.json:
        out = {"model": engine.model_name, "engine": engine.kind, "multiplier": spec.multiplier,
               "layers": list(spec.resolve_layers(engine.n_layers)),
               **result.to_dict(), "placement": result.placement or spec.placement}  # the placement used
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(result.text)
    return 0


def cmd_run_tests(args) -> int:
    """Run the test cases and write the comparison CSV."""
    from pathlib import Path

    from worker.cli.run_tests import default_output, read_cases, run_cases

    s = get_settings()
    cases = read_cases(args.cases, s.limits.max_text_chars)
    spec, params, values = _spec_and_params(args, s)
    num_runs = pick(args.num_runs, s.evaluation.num_runs)
    if num_runs < 1:
        raise ValidationError("--num-runs must be >= 1", field="num_runs")
    output = Path(args.output) if args.output else default_output(s.evaluation.results_dir)
    engine = _engine(args, s, values)
    report = run_cases(engine, cases, spec, params, num_runs, output, progress=not args.no_progress)
    print(f"wrote {output} ({report.rows} rows)")
    for variant, c in report.summary.items():
        if c["checked"]:
            print(f"{variant:>14}: {c['passed']}/{c['checked']} checks passed")
    if report.failed:
        print(f"instaboost: {report.failed} rows hold an error (see the error column)", file=sys.stderr)
        return 1
    return 0


def _csv_numbers(text: str, flag: str) -> list[float]:
    try:
        values = [float(p) for p in str(text).split(",") if p.strip()]
    except ValueError:
        raise ValidationError(f"{flag} takes comma-separated numbers, got {text!r}", field=flag) from None
    if not values:
        raise ValidationError(f"{flag} needs at least one number", field=flag)
    return values


CALIBRATE_FLAGS = {"layer_modes": "--layer-modes", "head_fractions": "--head-fractions", "scopes": "--scopes",
                   "target_masses": "--target-masses", "boilerplate_multipliers": "--boilerplate-multipliers",
                   "grid": "--multipliers"}


def _sweep_dimensions(args, values: dict, grid, s) -> list:
    """Return the settings calibrated, read by the sweep request's own fields (as the API and the form read them)."""
    from shared.calibration import sweep_settings
    from shared.requests.sweep import validate_sweep

    # Scope and target mass are sweep dimensions like layer modes; --scope / --target-mass give the single value.
    dims = {"layer_modes": args.sweep_layer_modes, "head_fractions": args.head_fractions, "grid": list(grid),
            "scopes": args.scopes or [values.get("scope") or "all"],
            "target_masses": args.target_masses or [values.get("target_mass")],
            "boilerplate_multipliers": args.boilerplate_multipliers or [values.get("boilerplate_multiplier") or 1.0]}
    req, errors = validate_sweep(dims, s, strict=False)
    errors = errors or req.dimension_problems({})
    if errors:
        flags = [CALIBRATE_FLAGS.get(e["field"].split("[")[0], e["field"]) for e in errors]
        raise ValidationError("; ".join(f"{f}: {e['message']}" for f, e in zip(flags, errors)), field=flags[0])
    return sweep_settings(req.layer_modes, req.head_fractions, req.swept_scopes(), req.swept_target_masses(),
                          req.swept_boilerplate_multipliers())


def cmd_calibrate(args) -> int:
    """Sweep M over a case set locally (fast engine, batched rows); print the table and the recommendation."""
    from pathlib import Path

    from shared.calibration import format_table, load_case_set, table_csv
    from shared.evaluation import protocol
    from shared.spec import BoostSpec, GenerationParams
    from worker.calibrate import calibrate_local

    s = get_settings()
    cases = load_case_set(args.pack, args.cases, max_text_chars=s.limits.max_text_chars)
    if args.limit is not None:
        if args.limit < 2:
            raise ValidationError("--limit must be >= 2 (a validation and a test case)", field="--limit")
        cases = cases[:args.limit]
    grid = protocol.get_grid(_csv_numbers(args.grid_multipliers, "--multipliers") if args.grid_multipliers else
                             (args.grid or "paper"))
    floor = protocol.FLOOR if args.fluency_floor is None else args.fluency_floor
    if not 0 <= floor <= 2:
        raise ValidationError("--fluency-floor is on the 0-2 scale", field="--fluency-floor")
    ceiling = s.scoring.copy_ceiling if args.copy_ceiling is None else args.copy_ceiling
    if not 0 <= ceiling <= 1:
        raise ValidationError("--copy-ceiling is a share of outputs, 0 to 1", field="--copy-ceiling")
    if args.batch_size < 1:
        raise ValidationError("--batch-size must be >= 1", field="--batch-size")
    values = field_values(args, s)
    settings = _sweep_dimensions(args, values, grid, s)
    if args.from_records:
        return _calibrate_from_records(args, cases, floor, ceiling, values["max_new_tokens"], s)
    values["engine"] = "fast"  # rows of different M, layers and heads batch together only on the fast engine
    base = BoostSpec(start_layer=values["start_layer"], num_middle_layers=values["num_middle_layers"],
                     seed=values["seed"], placement=values["placement"], scope=values.get("scope", "all"),
                     target_mass=values.get("target_mass"),
                     boilerplate_multiplier=values.get("boilerplate_multiplier", 1.0))
    params = GenerationParams(max_new_tokens=values["max_new_tokens"], temperature=values["temperature"],
                              top_p=values["top_p"], seed=values["seed"])
    if args.threads:
        import torch

        torch.set_num_threads(max(1, args.threads))
    engine = _engine(args, s, values)
    print(f"calibrating {engine.model_name}: {len(cases)} cases, grid {', '.join(f'{m:g}' for m in grid)}, "
          f"settings {', '.join(x.label for x in settings)}, floor {floor:g}, copy ceiling {ceiling:g}, "
          f"max_new_tokens {params.max_new_tokens}",
          file=sys.stderr)
    # Records are written as they are scored, so a sweep stopped part way keeps the rows it ran.
    with (open(args.records, "w", encoding="utf-8") if args.records else contextlib.nullcontext()) as fh:
        def write(r: dict) -> None:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")
            fh.flush()

        out = calibrate_local(engine, cases, grid=grid, settings=settings, floor=floor, copy_ceiling=ceiling,
                              base=base, params=params,
                              batch_size=args.batch_size, perplexity=not args.no_perplexity,
                              copy_words=s.scoring.copy_words, test_at=args.test_at,
                              on_record=write if fh is not None else None)
    print(format_table(out["summary"]))
    if args.csv:
        Path(args.csv).write_text(table_csv(out["summary"]), encoding="utf-8")
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.records:
        print(f"wrote {args.records}", file=sys.stderr)
    return 0


def _calibrate_from_records(args, cases, floor: float, ceiling: float, max_new: int, s) -> int:
    """Score a records file's outputs again and print (and write) its table: calibrate --from-records."""
    from pathlib import Path

    from shared.calibration import format_table, rescore_records, result_summary, table_csv
    from shared.evaluation import protocol

    try:
        with open(args.from_records, encoding="utf-8") as fh:
            records = [json.loads(line) for line in fh if line.strip()]
    except (OSError, ValueError) as exc:
        raise ValidationError(f"cannot read --from-records {args.from_records}: {exc}", field="--from-records")
    records = rescore_records(records, cases, max_new_tokens=max_new, copy_words=s.scoring.copy_words)
    summary = result_summary(protocol.calibrate(records, floor=floor, copy_ceiling=ceiling))
    print(format_table(summary))
    if args.csv:
        Path(args.csv).write_text(table_csv(summary), encoding="utf-8")
        print(f"wrote {args.csv}", file=sys.stderr)
    if args.records:
        with open(args.records, "w", encoding="utf-8") as fh:
            for r in records:
                fh.write(json.dumps(r, ensure_ascii=False) + "\n")
        print(f"wrote {args.records}", file=sys.stderr)
    return 0


def cmd_settings(args) -> int:
    """Print the resolved settings, config.yaml or the README table."""
    if args.yaml:
        print(to_yaml(), end="")
    elif args.markdown:
        print(to_markdown(), end="")
    else:
        s = get_settings()
        for name, value in s.public().items():
            print(f"{name} = {json.dumps(value)}    ({s.sources[name]})")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; errors print a message and exit non-zero, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    # Library chatter (deprecations, progress bars from transformers) would bury the answer.
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.config:
            os.environ["INSTABOOST_CONFIG"] = args.config
        from shared.settings import get_settings

        get_settings.cache_clear()
        handler = {"generate": cmd_generate, "run-tests": cmd_run_tests, "settings": cmd_settings,
                   "calibrate": cmd_calibrate}.get(args.command)
        if handler is None:
            from worker.cli.serve import run_serve

            return run_serve(args)
        return handler(args)
    except InstaBoostError as exc:
        where = f" ({exc.field})" if exc.field and exc.field not in exc.message else ""
        print(f"instaboost: error{where}: {exc.message}", file=sys.stderr)
        return getattr(exc, "exit_code", 2)
    except KeyboardInterrupt:
        print("instaboost: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `instaboost generate --json | head` closed the pipe early
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
