"""Add the options the subcommands share (job fields, --heads, --device, --dtype) and validate them as the API does."""

from __future__ import annotations

import argparse

from shared.errors import ValidationError
from shared.fields import JOB_FIELDS
from shared.requests.job import check_field

HEADS_HELP = ("fraction of heads boosted per layer, in (0, 1], or explicit heads per layer like '8:0,3;9:1' "
              "(layers not named boost all their heads)")


def add_field_options(p: argparse.ArgumentParser, required: tuple[str, ...] = (), skip: tuple[str, ...] = ()) -> None:
    """Add an option for every job field with a command-line flag (shared.fields), help and choices included.

    Values stay text: the same validator as the API and the form parses them, so bounds and messages agree.
    """
    for f in JOB_FIELDS:
        if f.cli is None or f.name in skip:
            continue
        flags = [f.cli, *([f.cli_short] if f.cli_short else [])]
        kwargs = {"dest": f.name, "help": f.help + (" One value here." if f.is_list else ""),
                  "required": f.name in required, "metavar": f.name.upper().rstrip("S") if f.is_list else None}
        if f.kind == "choice":
            kwargs.update(choices=f.choices, metavar=None)
        elif f.kind == "boolean":
            kwargs = {"dest": f.name, "help": f.help, "action": "store_true", "default": None}
        p.add_argument(*flags, **kwargs)


def add_runtime_args(p: argparse.ArgumentParser) -> None:
    """Add --device and --dtype."""
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--dtype", help="auto, float32, bfloat16 or float16")


def field_values(args: argparse.Namespace, settings) -> dict:
    """Return every command-line job field, validated as the API validates it (defaults from settings).

    Errors name the flag (--max-new-tokens), not the field, since that is what the user typed.
    """
    errors: list[dict] = []
    out = {}
    for f in JOB_FIELDS:
        if f.cli is None or not hasattr(args, f.name):
            continue
        given = getattr(args, f.name)
        value = f.default_value(settings) if given is None else given
        out[f.name], problems = check_field(f.name, value, settings, strict=False)
        errors += problems
        if f.is_list and isinstance(out[f.name], tuple) and len(out[f.name]) > 1:
            errors.append({"field": f.name, "message": f"{f.name} takes one value here, got {given!r}"})
    if errors:
        flags = {f.name: f.cli for f in JOB_FIELDS if f.cli}
        named = []
        for e in errors:
            name = e["field"].split("[")[0]
            flag = flags.get(name, e["field"])
            named.append({"field": flag, "message": e["message"].replace(e["field"], flag, 1)})
        raise ValidationError("; ".join(e["message"] for e in named), field=named[0]["field"], errors=named)
    return out


def pick(value, default):
    """Return value, or default when it is None."""
    return default if value is None else value


def parse_heads(text) -> tuple[float | None, dict[int, tuple[int, ...]] | None]:
    """Parse --heads: a fraction like 0.2, or explicit heads per layer like '8:0,3;9:1'."""
    if text is None:
        return None, None
    text = str(text).strip()
    if ":" not in text:
        try:
            return float(text), None
        except ValueError:
            raise ValidationError(f"--heads must be a fraction like 0.2 or per-layer heads like '8:0,3;9:1'; "
                                  f"got {text!r}", field="head_fraction") from None
    heads: dict[int, tuple[int, ...]] = {}
    try:
        for part in filter(None, (p.strip() for p in text.split(";"))):
            layer, _, hs = part.partition(":")
            heads[int(layer)] = tuple(int(h) for h in hs.split(",") if h.strip())
    except ValueError:
        raise ValidationError(f"--heads {text!r}: write layer:head,head;layer:head, e.g. '8:0,3;9:1'",
                              field="heads") from None
    return None, heads
