"""Packed low-bit linears for CPU: GPTQ/AWQ codes kept at 4 bits in memory, multiplied by torch's int4 kernel.

The kernel is ``torch.ops.aten._weight_int4pack_mm_for_cpu`` (chosen by measurement, see
benchmarks/results/runtimes.md). It computes ``x @ w.T`` with ``w = (q - 8) * scale + offset`` per group of
32/64/128/256 input columns, from 4-bit codes packed by ``_convert_weight_to_int4pack_for_cpu``. A checkpoint's
``w = scale * (q - zero)`` maps onto it with ``offset = scale * (8 - zero)`` (integer zero points; the
offset is held or rebuilt from the scale and the integer factor ``8 - zero``, see :class:`PackedLinear`):

- 2/3/4-bit codes fit a nibble as they are; 8-bit codes are split into two nibble planes
  ``q = 16 * hi + lo`` and run as two int4 products (``16 * scale`` and no offset on the high plane, the
  offset ``scale * (136 - zero)`` on the low one);
- act-order (a non-monotonic ``g_idx``) becomes a fixed permutation of the input columns, applied to the
  activations, when every group has the same number of columns;
- group sizes above 256 (and per-channel scales) are split into kernel groups that repeat the scale and zero.

A layout the kernel cannot express (unequal act-order groups, an input width no kernel group divides,
non-integer zero points) keeps a float weight for that layer; :func:`pack_linears` says which and why. The
kernel's fast path takes bfloat16 activations (its float32 path is exact but several times slower above one
row); the compute dtype is an option of the runtime. Weights bound for a CUDA device are packed for torch's
CUDA int4 kernel instead (:mod:`teeny_core.packed_cuda`). This module imports torch at import time: only
runtimes import it, inside ``load``.
"""

from __future__ import annotations

from typing import Any

import torch

from teeny_core.packed_linear import PackedLinear

KERNEL_GROUPS = (256, 128, 64, 32)
COMPUTE_DTYPES = {"bfloat16": torch.bfloat16, "float32": torch.float32}


def available(device: str = "cpu") -> bool:
    """Whether this torch build has the int4 kernel for ``device`` (cpu, cuda or cuda:N; no other device)."""
    if _is_cuda(device):
        from teeny_core import packed_cuda

        return packed_cuda.available()
    return str(device) == "cpu" and hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu")


def _is_cuda(device) -> bool:
    return str(device).split(":")[0] == "cuda"


def _kernel_group(linear) -> tuple[int | None, Any, str]:
    """``(kernel group, column permutation or None, reason when unsupported)`` for one QuantizedLinear."""
    cols = linear.q.shape[1]
    g_idx = linear.g_idx.long()
    groups = linear.scale.shape[1]
    counts = torch.bincount(g_idx, minlength=groups)
    if int(counts.min()) != int(counts.max()):
        return None, None, f"groups of unequal width ({int(counts.min())}..{int(counts.max())} columns)"
    width = int(counts[0])
    perm = torch.argsort(g_idx, stable=True)
    if bool((g_idx[perm] != torch.arange(cols) // width).any()):
        return None, None, "g_idx does not map equal column runs to groups"
    if bool((perm == torch.arange(cols)).all()):
        perm = None
    group = next((g for g in KERNEL_GROUPS if width % g == 0), None)
    if group is None:
        return None, None, f"group width {width} is not a multiple of 32"
    return group, perm, ""


def _plane(codes, scale, factor, group: int, width: int, dtype, device="cpu"):
    """Pack one plane for ``device``: nibble codes [out, in] (already permuted), per-group scales and integer
    zero-point factors [out, groups] (factor None: offsets all zero) -> ``(codes, scale, factor)`` as
    :class:`PackedLinear` takes them, [groups, out] per kernel group."""
    repeat = width // group  # kernel groups per checkpoint group
    if _is_cuda(device):
        from teeny_core import packed_cuda

        packed = packed_cuda.convert(codes, device)
    else:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.to(torch.int32).contiguous(), 1)
    scale = scale.repeat_interleave(repeat, dim=1).t().to(dtype).contiguous().to(device)
    if factor is not None:
        factor = factor.repeat_interleave(repeat, dim=1).t().contiguous().to(device)
    return packed, scale, factor


def _factor(factor, dtype):
    """The integer zero-point factor as ``dtype`` (int8 holds ``8 - zero`` of 2..4-bit codes, int16 the 8-bit
    ``136 - zero``), or None where it is zero everywhere (the plane's offsets are all zero)."""
    return factor.to(dtype) if bool(factor.any()) else None


def pack_linear(linear, compute: str = "bfloat16", device: str = "cpu") -> tuple[PackedLinear | None, str]:
    """A :class:`PackedLinear` for a ``QuantizedLinear`` with its planes on ``device``, or ``(None, reason)`` when
    the kernel cannot express it."""
    dtype = COMPUTE_DTYPES[compute]
    out_features, in_features = linear.q.shape
    if linear.bits not in (2, 3, 4, 8):
        return None, f"{linear.bits}-bit codes"
    cls = PackedLinear
    if _is_cuda(device):
        from teeny_core import packed_cuda

        reason = packed_cuda.unsupported(out_features, in_features)
        if reason:
            return None, reason
        cls = packed_cuda.CudaPackedLinear
    group, perm, reason = _kernel_group(linear)
    if group is None:
        return None, reason
    width = in_features // linear.scale.shape[1]
    q = linear.q if perm is None else linear.q[:, perm]
    scale, zero = linear.scale.float(), linear.zero.float()
    if not torch.equal(zero, zero.round()):
        return None, "zero points that are not integers"
    if linear.bits <= 4:  # w = (q - 8) * s + s * (8 - zero)
        planes = [_plane(q, scale, _factor(8 - zero, torch.int8), group, width, dtype, device)]
    else:  # q = 16 * hi + lo: (hi - 8) * 16s + 0 plus (lo - 8) * s + s * (136 - zero)
        planes = [_plane(q >> 4, 16 * scale, None, group, width, dtype, device),
                  _plane(q & 15, scale, _factor(136 - zero, torch.int16), group, width, dtype, device)]
    # the bias as the checkpoint holds it (16 bits): only the kernel's inputs are converted
    bias = None if linear.bias is None else linear.bias.to(device)
    perm = None if perm is None else perm.to(device)
    return cls(planes, group, in_features, out_features, perm=perm, bias=bias), ""


def pack_linears(model, linears, compute: str = "bfloat16",
                 device: str = "cpu") -> tuple[list[str], dict[str, Any], dict[str, str]]:
    """Put a :class:`PackedLinear` (planes on ``device``) in place of each quantized linear of ``model`` that the
    kernel can express.

    ``linears`` yields ``(name, QuantizedLinear)`` pairs, consumed one at a time. Returns ``(packed names,
    fallback weights by tensor name, {linear name: why it stays float})``: the caller loads the fallback weights
    (and biases) like any other tensor.
    """
    packed_names: list[str] = []
    fallback: dict[str, Any] = {}
    reasons: dict[str, str] = {}
    for name, linear in linears:
        if not isinstance(_submodule(model, name), torch.nn.Linear):
            packed, reason = None, "not a linear in memory (routed experts are fused into one parameter)"
        else:
            packed, reason = (pack_linear(linear, compute, device) if available(device) else
                              (None, f"no int4 {'CUDA' if _is_cuda(device) else 'CPU'} kernel in this torch"))
        if packed is None:
            reasons[name] = reason
            fallback[f"{name}.weight"] = linear.dequantize()
            if linear.bias is not None:
                fallback[f"{name}.bias"] = linear.bias
            continue
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, leaf, packed)
        packed_names.append(name)
    return packed_names, fallback, reasons


def _submodule(model, name: str):
    """The module at ``name``, or None where there is none."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        return None


def tensor_bytes(model) -> int:
    """Bytes of every distinct parameter and buffer of ``model`` as held (packed codes count at their size)."""
    seen: set[int] = set()
    total = 0
    for t in [*model.parameters(), *model.buffers()]:
        if t.data_ptr() in seen:
            continue
        seen.add(t.data_ptr())
        total += t.numel() * t.element_size()
    return total
