"""Formatting of numbers and markdown tables for the report (and the sharpness section)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import pandas as pd


def is_missing(x: Any) -> bool:
    """None, pd.NA or a float NaN (what a table cell shows as "–")."""
    try:
        return x is None or x is pd.NA or (isinstance(x, float) and math.isnan(x))
    except TypeError:
        return False


def fmt(x: Any, spec: str = ".2f", signed: bool = False) -> str:
    """`x` in format `spec` ("+" in front when `signed`); "–" when missing, "inf"/"-inf" for infinities."""
    if is_missing(x):
        return "–"
    if isinstance(x, float) and math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return format(float(x), ("+" if signed else "") + spec)


def fmt_p(p: Any) -> str:
    """A p-value to three decimals, "< 0.001" below that, "–" when missing."""
    if is_missing(p):
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def p_clause(p: Any) -> str:
    """ "p = 0.012" or "p < 0.001" (never "p = < 0.001")."""
    text = fmt_p(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _cell(value: Any) -> str:
    text = "" if is_missing(value) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], align: str | None = None) -> str:
    """A GitHub pipe table; align is one letter per column (l, r, c), default left."""
    align = align or "l" * len(headers)
    marks = {"l": ":---", "r": "---:", "c": ":---:"}
    lines = ["| " + " | ".join(_cell(h) for h in headers) + " |", "|" + "|".join(marks[a] for a in align) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def distinct_values(series: pd.Series) -> list:
    """Distinct non-missing values in a stable order (sorted); integral floats below 2**53 as ints (128.0 → 128),
    larger ones as floats (1e30 → 1e+30 when printed)."""
    seen = []
    for value in series.tolist():
        # a column with a missing entry turns ints into floats: 128.0 should read 128, but only a float below
        # 2**53 is a count held exactly; above that (rho = 1e30) str(float) gives "1e+30", int() 31 digits of noise
        if isinstance(value, (float, np.floating)) and math.isfinite(value) and float(value).is_integer():
            value = int(value) if abs(value) < 2**53 else float(value)
        if not is_missing(value) and value not in seen:
            seen.append(value)
    try:
        return sorted(seen)
    except TypeError:
        return sorted(seen, key=str)


def join_values(values: Sequence[Any], empty: str = "–") -> str:
    """ "a, b, c", or `empty` when there is no value."""
    return ", ".join(str(v) for v in values) if len(values) else empty


def column_or_empty(runs: pd.DataFrame, name: str) -> pd.Series:
    """runs[name], or a column of None when no run has that key (e.g. data.hub_path on a generated-data sweep)."""
    return runs[name] if name in runs.columns else pd.Series([None] * len(runs), index=runs.index, dtype=object)


def plural(n: int, word: str, many: str | None = None) -> str:
    """ "1 run", "3 runs" (`many` for an irregular plural)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
