"""The packed linear module: ``y = x @ w.T + b`` from planes of 4-bit codes, multiplied by torch's int4 kernel
(CPU here; :class:`teeny_core.packed_cuda.CudaPackedLinear` swaps in the CUDA one). :mod:`teeny_core.packed`
builds the planes. Imports torch at import time: only runtimes import it, inside ``load``."""

from __future__ import annotations

from typing import Any

import torch


class PackedLinear(torch.nn.Module):
    """``y = x @ w.T + b`` from one or two planes of 4-bit codes (see the module docstring).

    A plane whose offsets are all zero (a symmetric 4-bit grid, the low plane of 8-bit codes) holds only its
    scales; the kernel's ``[groups, out, 2]`` input is built from them for each product and freed after it.
    """

    def __init__(self, planes: list[tuple[Any, Any]], group: int, in_features: int, out_features: int,
                 perm=None, bias=None) -> None:
        super().__init__()
        self.in_features, self.out_features, self.group = in_features, out_features, group
        self.n_planes = len(planes)
        for i, (codes, scale_offset) in enumerate(planes):
            self.register_buffer(f"codes{i}", codes)
            if bool((scale_offset[..., 1] == 0).all()):
                self.register_buffer(f"scale{i}", scale_offset[..., 0].contiguous())
            else:
                self.register_buffer(f"scale_offset{i}", scale_offset)
        self.compute = scale_offset.dtype
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
        """The kernel's ``[groups, out, 2]`` scales and offsets of one plane: held, or built from held scales."""
        scale = getattr(self, f"scale{plane}", None)
        if scale is None:
            return getattr(self, f"scale_offset{plane}")
        return torch.stack([scale, torch.zeros_like(scale)], dim=-1)

    def int4_mm(self, x, codes, scale_offset):
        """One plane's product ``x @ w.T`` by torch's CPU int4 kernel."""
        return torch.ops.aten._weight_int4pack_mm_for_cpu(x, codes, self.group, scale_offset)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, "
                f"planes={self.n_planes}, act_order={self.perm is not None}")
