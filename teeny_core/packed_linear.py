"""The packed linear module: ``y = x @ w.T + b`` from planes of 4-bit codes, multiplied by torch's int4 kernel
(CPU here; :class:`teeny_core.packed_cuda.CudaPackedLinear` swaps in the CUDA one). :mod:`teeny_core.packed`
builds the planes. Imports torch at import time: only runtimes import it, inside ``load``."""

from __future__ import annotations

from typing import Any

import torch


class PackedLinear(torch.nn.Module):
    """``y = x @ w.T + b`` from one or two planes of 4-bit codes (see the module docstring).

    Each plane is ``(codes, scale, factor)``: the kernel's packed codes, the scales ``[groups, out]`` in the
    compute dtype, and the integer zero-point factor ``[groups, out]`` (``8 - zero``; ``136 - zero`` on the low
    plane of 8-bit codes) or None where every offset is zero (a symmetric grid, the high plane of 8-bit codes).
    The kernel takes ``[groups, out, 2]`` scales and offsets, ``offset = scale * factor``, built by
    :meth:`scale_offset`: the product is exact in float32 and rounded once to the compute dtype, so the offset
    is the float64 ``scale * factor`` correctly rounded, whether held or rebuilt (bit for bit the same).

    Rule (issue 21; benchmarks/packed_rebuild.py, one row, bfloat16, group 128, one thread, under load): a
    plane of at least ``compact_from`` groups x outputs holds only its scales and factor (int8; int16 for 8-bit
    codes) and rebuilds the input for each product, freed after it; a smaller plane holds the input. A rebuild
    costs a few microseconds of op overhead plus a share of the product that is smallest for the largest planes:
    symmetric 5% of lm_head's (151936x896) product, 7% of a 4864x896 one, 41% of a 128x896 one; asymmetric
    11-21%, 18% and 95%. 2**18 (a 1 MiB input) compacts only lm_head in Qwen2.5-0.5B: AWQ w4 then holds
    509.0 MiB, 1.0995x the Q4_K_M original, for 1-2 ms per token (4-8% of its 28 ms of products; a decode A/B
    under heavy load gave 1.13x per token); compacting every plane would save 2.7 MiB more for ~6 ms (21%;
    1.25x). RTN w4 (symmetric) holds 508.0 MiB, 1.097x, for 0.5 ms.
    """

    compact_from = 1 << 18

    def __init__(self, planes: list[tuple[Any, Any, Any]], group: int, in_features: int, out_features: int,
                 perm=None, bias=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.n_planes = len(planes)
        for i, (codes, scale, factor) in enumerate(planes):
            self.register_buffer(f"codes{i}", codes)
            if scale.numel() >= self.compact_from:
                self.register_buffer(f"scale{i}", scale)
                self.register_buffer(f"factor{i}", factor)
            else:
                self.register_buffer(f"scale_offset{i}", build_scale_offset(scale, factor))
        self.compute = scale.dtype
        self.register_buffer("perm", perm)
        self.register_buffer("bias", bias)

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, self.in_features)
        flat = flat.to(self.compute)
        if self.perm is not None:
            flat = flat.index_select(1, self.perm)
        flat = flat.contiguous()
        y = None
        for i in range(self.n_planes):
            part = self.int4_mm(flat, getattr(self, f"codes{i}"), self.scale_offset(i))
            y = part if y is None else y + part
        y = y.to(x.dtype)
        if self.bias is not None:
            y = y + self.bias.to(x.dtype)
        return y.reshape(*shape[:-1], self.out_features)

    def scale_offset(self, plane: int):
        """The kernel's ``[groups, out, 2]`` scales and offsets of one plane: held, or rebuilt from the held
        scales and factor."""
        held = getattr(self, f"scale_offset{plane}", None)
        if held is not None:
            return held
        return build_scale_offset(getattr(self, f"scale{plane}"), getattr(self, f"factor{plane}"))

    def int4_mm(self, x, codes, scale_offset):
        """One plane's product ``x @ w.T`` by torch's CPU int4 kernel."""
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, codes, self.group, scale_offset)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, "
                f"planes={self.n_planes}, act_order={self.perm is not None}")


def build_scale_offset(scale, factor):
    """``[groups, out, 2]`` of ``scale`` and ``scale * factor`` (zeros where ``factor`` is None), contiguous.

    The fewest and cheapest ops measured (benchmarks/packed_rebuild.py): a zero-filled or empty pair tensor and
    two copies into its strided halves; ``torch.stack`` or a multiplication written straight into the strided
    half are 1.5-5x slower."""
    if factor is None:
        built = scale.new_zeros(*scale.shape, 2)
        built[..., 0] = scale
        return built
    built = scale.new_empty(*scale.shape, 2)
    built[..., 0] = scale
    built[..., 1] = scale * factor
    return built
