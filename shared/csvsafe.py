"""Spreadsheet-safe CSV cells (OWASP CSV injection)."""

from __future__ import annotations

from typing import Any

# A spreadsheet evaluates cells starting with these as formulas.
FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralize(cell: Any) -> Any:
    """Prefix a text cell that a spreadsheet would read as a formula with a single quote.

    Spreadsheets skip leading blanks and line breaks before a formula (" =1+1", "\\n=cmd"), so those count too.
    """
    if isinstance(cell, str) and (cell.startswith(FORMULA_PREFIXES) or cell.lstrip().startswith(FORMULA_PREFIXES)):
        return "'" + cell
    return cell
