"""YAML the service reads (case files, built-in packs, config.yaml) without aliases, and YAML it writes without them.

An alias (``*name``) repeats its anchor's node without copying text: ten levels of ten aliases each turn a
few hundred bytes into 10**10 strings once the tree is walked ("billion laughs"). ``safe_load`` refuses any
alias while composing, before a node is built, so an uploaded file costs at most its own size.
"""

from __future__ import annotations

from typing import Any

import yaml


class AliasRefused(yaml.YAMLError):
    """A YAML document used an alias (``*name``), which the service refuses."""


class _NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that raises AliasRefused at the first alias event."""

    what = "YAML files"

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else "?"
            raise AliasRefused(f"YAML aliases (*{event.anchor}, line {line}) are not allowed in {self.what}; "
                               "write the value out in full")
        return super().compose_node(parent, index)


class _NoAliasDumper(yaml.SafeDumper):
    """yaml.SafeDumper that writes repeated objects out in full (no &anchor / *alias)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def safe_load(text: str, what: str = "YAML files") -> Any:
    """Parse one YAML document like yaml.safe_load, raising AliasRefused (a YAMLError) on any alias."""
    loader = type("NoAliasLoader", (_NoAliasLoader,), {"what": what})(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def safe_dump(data: Any, **kwargs) -> str:
    """Render data like yaml.safe_dump, without anchors or aliases (so safe_load reads it back)."""
    return yaml.dump(data, Dumper=_NoAliasDumper, **kwargs)
