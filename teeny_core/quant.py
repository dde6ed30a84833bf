"""Uniform integer quantization math shared by every weight quantizer (RTN, GPTQ, AWQ).

Convention (the GPTQ reference's): ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)`` and
``w_hat = scale * (q - zero)``. Symmetric schemes fix ``zero = 2**(bits-1)``; asymmetric ones choose
``zero = round(-min / scale)``. Scales and zeros have shape ``[out_features, n_groups]``, where the groups
split the input dimension (granularity "group"), or are one per row ("channel") or one in all ("tensor").
"""

from __future__ import annotations

import dataclasses
import fnmatch
from typing import Any, Iterable, Literal

Granularity = Literal["tensor", "channel", "group"]
Scheme = Literal["sym", "asym"]


def skipped(name: str, patterns: Iterable[str]) -> bool:
    """Whether a module's qualified name matches one of the skip glob patterns (or equals one)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def qparams(w, bits: int, scheme: Scheme = "asym", *, clip: float = 1.0):
    """Scale and zero for each row of ``w`` [rows, cols] over all of its columns (one group per row).

    ``clip`` < 1 shrinks the range (used by clipping searches). Returns ``(scale, zero)`` each [rows, 1].
    """
    import torch

    maxq = 2**bits - 1
    w = w.float()
    xmin = torch.minimum(w.min(dim=1, keepdim=True).values, torch.zeros(1, device=w.device)) * clip
    xmax = torch.maximum(w.max(dim=1, keepdim=True).values, torch.zeros(1, device=w.device)) * clip
    if scheme == "sym":
        xmax = torch.maximum(xmin.abs(), xmax)
        xmin = -xmax
    dead = (xmin == 0) & (xmax == 0)
    xmin = torch.where(dead, torch.full_like(xmin, -1.0), xmin)
    xmax = torch.where(dead, torch.full_like(xmax, 1.0), xmax)
    scale = (xmax - xmin) / maxq
    if scheme == "sym":
        zero = torch.full_like(scale, (maxq + 1) / 2)
    else:
        zero = torch.round(-xmin / scale)
    return scale, zero


def quantize(w, scale, zero, bits: int):
    """Integer codes (as float tensor) for ``w`` with broadcastable ``scale`` and ``zero``."""
    import torch

    return torch.clamp(torch.round(w.float() / scale) + zero, 0, 2**bits - 1)


def dequantize(q, scale, zero):
    return scale * (q - zero)


def group_size_for(cols: int, granularity: Granularity, group_size: int) -> int:
    """Columns per group: all for tensor/channel, ``group_size`` for group (which must divide ``cols``)."""
    from teeny_core.errors import TeenyError

    if granularity != "group":
        return cols
    if group_size <= 0 or cols % group_size:
        raise TeenyError(f"group_size={group_size} does not divide the input width {cols}; "
                         f"use a divisor of {cols} or granularity='channel'")
    return group_size


def quantize_weight(w, bits: int, scheme: Scheme = "asym", granularity: Granularity = "group",
                    group_size: int = 128):
    """Round-to-nearest quantization of a 2-D weight.

    Returns ``(q, scale, zero)``: integer codes [rows, cols] (int32), and float32 scale/zero
    [rows, n_groups] (tensor granularity: [1, 1]). ``dequantize_weight`` inverts it exactly.
    """
    import torch

    rows, cols = w.shape
    w = w.float()
    if granularity == "tensor":
        scale, zero = qparams(w.reshape(1, -1), bits, scheme)
        return quantize(w, scale, zero, bits).to(torch.int32), scale, zero
    gs = group_size_for(cols, granularity, group_size)
    grouped = w.reshape(rows * (cols // gs), gs)
    scale, zero = qparams(grouped, bits, scheme)
    q = quantize(grouped, scale, zero, bits).reshape(rows, cols).to(torch.int32)
    return q, scale.reshape(rows, cols // gs), zero.reshape(rows, cols // gs)


def quantize_with(w, scale, zero, bits: int):
    """Codes [rows, cols] (int32) of ``w`` on a given grid: per-group ``scale``/``zero`` [rows, n_groups]
    over contiguous column groups (n_groups = 1: per row)."""
    import torch

    cols = w.shape[1]
    width = cols // scale.shape[1]
    scale_e, zero_e = scale.repeat_interleave(width, dim=1), zero.repeat_interleave(width, dim=1)
    return quantize(w, scale_e, zero_e, bits).to(torch.int32)


def dequantize_weight(q, scale, zero, g_idx=None):
    """Float32 weight from codes [rows, cols] and per-group scale/zero [rows, n_groups].

    ``g_idx`` [cols] maps each input column to its group (act-order); by default groups are contiguous.
    """
    import torch

    rows, cols = q.shape
    if g_idx is None:
        n_groups = scale.shape[1]
        g_idx = torch.arange(cols, device=q.device) // (cols // n_groups)
    if scale.shape[0] == 1 and rows != 1:  # tensor granularity
        scale, zero = scale.expand(rows, -1), zero.expand(rows, -1)
    return dequantize(q.float(), scale[:, g_idx].float(), zero[:, g_idx].float())


@dataclasses.dataclass
class QuantizedLinear:
    """One linear as a checkpoint holds it: ``w = scale[:, g_idx] * (q - zero[:, g_idx])``.

    ``q`` int32 codes [out, in]; ``scale``/``zero`` float32 [out, groups]; ``g_idx`` int64 [in] (act-order makes
    it non-monotonic); ``bias`` [out] or None.
    """

    q: Any
    scale: Any
    zero: Any
    g_idx: Any
    bits: int
    bias: Any = None

    def dequantize(self):
        """The float32 weight [out, in]."""
        return dequantize_weight(self.q, self.scale, self.zero, self.g_idx)


def with_dequantized(linears: Iterable[tuple[str, Any]], tensors: dict[str, Any]) -> dict[str, Any]:
    """``tensors`` with each ``(name, QuantizedLinear)`` of ``linears`` added back as its float32
    ``<name>.weight`` (and ``<name>.bias`` where it has one): a checkpoint's plain state dict."""
    for name, linear in linears:
        tensors[f"{name}.weight"] = linear.dequantize()
        if linear.bias is not None:
            tensors[f"{name}.bias"] = linear.bias
    return tensors


def lm_head_outside(spec, config: dict[str, Any], round_head, store):
    """The walker's ``outside`` for a quantizer that rounds ``lm_head``: ``round_head(weight)`` (a float32 copy)
    returns the tensors to write under ``spec.lm_head``. A tied lm_head is rounded from the embedding, which is
    kept as it was (``store`` dtype); an ``lm_head.weight`` a tied checkpoint also holds is dropped for the copy."""
    tied = bool(config.get("tie_word_embeddings", False))
    source, head = f"{spec.embed if tied else spec.lm_head}.weight", f"{spec.lm_head}.weight"

    def outside(key: str, tensor):
        if key == source:
            rounded = round_head(tensor.float().clone())
            return {key: tensor.to(store), **rounded} if tied else rounded
        return {} if tied and key == head else None

    return outside
