"""Formatting of numbers and markdown tables for the report (and the sharpness section)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd

# ---------------------------------------------------------------------------------------------------------------------
# formatting


def _isnan(x: Any) -> bool:
    try:
        return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))
    except TypeError:
        return False


def fmt(x: Any, spec: str = ".2f", signed: bool = False) -> str:
    if _isnan(x):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(float(x), ("+" if signed else "") + spec)


def fmt_p(p: Any) -> str:
    if _isnan(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: Any) -> str:
    """ "p = 0.012" or "p < 0.001" (never "p = < 0.001")."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _cell(value: Any) -> str:
    text = "" if _isnan(value) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub pipe table; align is one letter per column (l, r, c), default left."""
    align = align or "l" * len(headers)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _values(series: pd.Series) -> list:
    """Distinct non-missing values in a stable order."""
    seen = []
    for value in series.tolist():
        if isinstance(value, (float, np.floating)) and not math.isnan(value) and float(value).is_integer():
            value = int(value)  # a column with a missing entry turns ints into floats; 128 should read 128
        if not _isnan(value) and value not in seen:
            seen.append(value)
    try:
        return sorted(seen)
    except TypeError:
        return sorted(seen, key=str)


def _join(values: Sequence[Any], empty: str = "–") -> str:
    return ", ".join(str(v) for v in values) if len(values) else empty


def _col(runs: pd.DataFrame, name: str) -> pd.Series:
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def _plural(n: int, word: str, many: str | None = None) -> str:
    return f"{n} {word if n == 1 else (many or word + 's')}"
