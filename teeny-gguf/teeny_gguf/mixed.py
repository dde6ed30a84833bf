"""GGUF mixed precision: each decoder-layer linear's ggml type chosen from a sensitivity table under a bits budget,
applied through llama.cpp's per-tensor type overrides (``llama_model_quantize_params.tt_overrides``).

The planner is the core's (:func:`teeny_core.sensitivity.plan_bits`, the exact knapsack rtn, gptq and awq use);
here a choice is a ggml type and its cost the type's own bits per weight (scales included, from gguf-py's block
sizes). A type whose block does not divide a tensor's rows (k-quants need rows of a multiple of 256) is not a
choice for that tensor: llama.cpp would store it in a fallback type instead. A type's damage is the sensitivity
at its nominal bits (Q2_K 2, Q3_K 3, Q4_* and IQ4_NL 4, Q5_* 5, Q6_K 6, Q8_0 8); bits the table did not measure
(5 and 6 with the default 2, 3, 4, 8) are interpolated linearly in log damage between the measured neighbours
(the damage of rounding falls about geometrically with each bit).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from teeny_core import TeenyError

NOMINAL_BITS = {"Q2_K": 2, "Q3_K": 3, "Q4_0": 4, "Q4_1": 4, "Q4_K": 4, "IQ4_NL": 4, "IQ4_XS": 4, "Q5_0": 5,
                "Q5_1": 5, "Q5_K": 5, "Q6_K": 6, "Q8_0": 8}
"""ggml types ``target_bits`` may choose, with the bit-width whose sensitivity stands for each."""


def type_layout(name: str) -> tuple[int, int]:
    """``(weights per block, bytes per block)`` of a ggml type."""
    import gguf

    return gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name]]


def type_bits(name: str) -> float:
    """Stored bits per weight of a ggml type (its scales included)."""
    block, size = type_layout(name)
    return 8 * size / block


def interpolated(scores: dict[str, float], bits: int) -> float:
    """The damage at ``bits`` from ``scores`` (bits as strings -> damage): measured, else log-linear between the
    nearest measured widths below and above."""
    measured = {int(b): float(v) for b, v in scores.items()}
    if bits in measured:
        return measured[bits]
    below = max(b for b in measured if b < bits)
    above = min(b for b in measured if b > bits)
    t = (bits - below) / (above - below)
    lo, hi = max(measured[below], 1e-30), max(measured[above], 1e-30)
    return math.exp((1 - t) * math.log(lo) + t * math.log(hi))


def check_types(allowed: list[str], target: float, shapes: dict[str, tuple[int, int]]) -> None:
    """One line, before any work, for a type ``target_bits`` cannot choose, a linear no allowed type fits, or a
    target outside what the allowed types reach."""
    bad = [t for t in allowed if t.upper() not in NOMINAL_BITS]
    if bad or not allowed:
        raise TeenyError(f"gguf: allowed_types={allowed} holds {bad or 'nothing'}; target_bits chooses among "
                         f"{', '.join(NOMINAL_BITS)}")
    weights = sum(o * i for o, i in shapes.values())
    lowest = highest = 0.0
    for name, (rows, cols) in shapes.items():
        fits = [type_bits(t) for t in allowed if cols % type_layout(t)[0] == 0]
        if not fits:
            raise TeenyError(f"gguf: no type of allowed_types={allowed} fits {name} (rows of {cols} weights); "
                             "add a type with 32-weight blocks such as Q4_0, IQ4_NL, Q5_0 or Q8_0")
        lowest += min(fits) * rows * cols
        highest += max(fits) * rows * cols
    lowest, highest = lowest / weights, highest / weights
    if not lowest - 0.05 <= target <= highest + 0.05:
        raise TeenyError(f"gguf: target_bits={target} cannot be reached with allowed_types={allowed}: their plans "
                         f"average {lowest:.3f} .. {highest:.3f} bits per weight on this model's linears")


def plan_types(source, calibration, *, allowed: list[str], target: float, sensitivity: str,
               shapes: dict[str, tuple[int, int]]) -> tuple[dict[str, str], dict[str, Any]]:
    """``(ggml type per linear (HF name), the sensitivity used)``: read from ``sensitivity`` or measured with
    round-to-nearest (group 32, the sub-block of most k-quants) on ``calibration``, then the core's knapsack."""
    from teeny_core.sensitivity import plan_bits, sensitivity_for

    allowed = [t.upper() for t in allowed]
    check_types(allowed, target, shapes)
    wanted = sorted({NOMINAL_BITS[t] for t in allowed})
    measured = sorted({b for b in wanted if b in (2, 3, 4, 8)} | {b for w in wanted if w in (5, 6) for b in (4, 8)})
    data = sensitivity_for(source, calibration, shapes, measured, method="rtn",
                           group_size=None if sensitivity else 32, sym=False, sensitivity=sensitivity,
                           where="gguf")
    damage = {n: {t: interpolated(data["modules"][n][data["score"]], NOMINAL_BITS[t])
                  if shapes[n][1] % type_layout(t)[0] == 0 else math.inf for t in allowed} for n in shapes}
    plan = plan_bits(shapes, damage, allowed, target, 0,
                     cost=lambda name, t: type_bits(t) * shapes[name][0] * shapes[name][1])
    return plan, data


def layer_linear_bits(gguf_file: str | Path, names: list[str]) -> tuple[float, dict[str, str]]:
    """``(bits per weight, {tensor: ggml type})`` of the GGUF tensors ``names``, read from the file's header."""
    from teeny_core.formats.gguf_header import read_gguf_header

    tensors = {t.name: t for t in read_gguf_header(gguf_file).tensors}
    missing = [n for n in names if n not in tensors]
    if missing:
        raise TeenyError(f"{gguf_file}: no tensor {missing[0]} ({len(missing)} missing)")
    chosen = [tensors[n] for n in names]
    return (8 * sum(t.n_bytes for t in chosen) / sum(t.n_elements for t in chosen),
            {t.name: t.type_name for t in chosen})
