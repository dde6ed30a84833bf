"""Units for people: memory sizes parsed from text and bytes, numbers, rates and intervals formatted for tables."""

from __future__ import annotations

import math
import re
from typing import Any

from teeny_core.errors import TeenyError

_UNITS = {"": 1, "b": 1, "k": 1024, "kb": 1000, "kib": 1024, "m": 1024**2, "mb": 1000**2, "mib": 1024**2,
          "g": 1024**3, "gb": 1000**3, "gib": 1024**3, "t": 1024**4, "tb": 1000**4, "tib": 1024**4}


def parse_size(text: str | int) -> int:
    """Bytes from ``"8GiB"``, ``"512MB"``, ``"1.5 GB"``, ``"4G"`` (K/M/G/T alone are binary) or a plain number."""
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = m.group(2).lower() if m else ""
    if not m or unit not in _UNITS:
        raise TeenyError(f"bad memory size {text!r}; expected a number with a unit like 8GiB, 512MB or 16G")
    return int(float(m.group(1)) * _UNITS[unit])


def format_bytes(n: float | None) -> str:
    """``1536 -> "1.5 KiB"``; None or 0 -> ``"-"``."""
    if isinstance(n, bool) or not isinstance(n, (int, float)) or not n or not math.isfinite(n):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


def format_number(x: Any, digits: int = 4) -> str:
    """A number to ``digits`` significant digits; None as ``"-"``, anything else as its text."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return "-" if x is None else str(x)
    return f"{x:.{digits}g}"


def format_ci(ci: Any) -> str:
    """`` [low, high]`` to 3 significant digits, or "" when ``ci`` is not a pair."""
    return f" [{format_number(ci[0], 3)}, {format_number(ci[1], 3)}]" \
        if isinstance(ci, (list, tuple)) and len(ci) == 2 else ""


def format_rate(x: float | None, ci: Any = None) -> str:
    """A pass rate as a percentage with its CI: ``67.7% [60.2, 74.4]``."""
    if x is None:
        return "-"
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
    return f"{100 * x:.1f}%" + (f" [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ok else "")


def format_points(x: float, ci: Any = None) -> str:
    """A difference of pass rates in percentage points with its CI: ``-6.7 pp [-11.0, -3.0]``."""
    ok = isinstance(ci, (list, tuple)) and len(ci) == 2 and None not in ci
    return f"{100 * x:+.1f} pp" + (f" [{100 * ci[0]:+.1f}, {100 * ci[1]:+.1f}]" if ok else "")


def format_seconds(x: Any) -> str:
    """``0.2 -> "0.2 s"``; anything but a number -> ``"-"``."""
    return f"{x:.3g} s" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"


def format_params(n: Any) -> str:
    """A parameter count as people write it: ``494M``, ``1.54B``; ``?`` when unknown."""
    if not isinstance(n, (int, float)) or n <= 0:
        return "?"
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(int(n))
