"""Packed low-bit linears on CUDA: the codes of :mod:`teeny_core.packed` on the GPU, multiplied by torch's CUDA
int4 kernel (``torch.ops.aten._weight_int4pack_mm``, the "tinygemm" kernel torchao's int4 weight-only layout uses).

The kernel computes the same ``x @ w.T`` with ``w = (q - 8) * scale + offset`` per group of 32/64/128/256 input
columns as the CPU one, so :func:`teeny_core.packed.pack_linear` builds the same planes (8-bit codes as two
nibble planes, act-order as a column permutation) and only the code layout differs:

- ``_convert_weight_to_int4pack`` takes ``uint8 [out, in / 2]`` with column ``2i`` in the high nibble and
  ``2i + 1`` in the low one (the CPU converter takes ``int32 [out, in]``), and returns int32 tiles
  ``[out / 8, in / (16 * inner_k_tiles), 32, inner_k_tiles / 2]``;
- ``inner_k_tiles`` is 2, 4 or 8 and must divide ``in / 16``; ``out`` must be a multiple of 8;
- activations, scales and offsets are bfloat16 (the kernel has no float32 path).

This module imports torch at import time: only :mod:`teeny_core.packed` imports it, when the weights' device is
CUDA.
"""

from __future__ import annotations

import torch

from teeny_core.packed_linear import PackedLinear

INNER_K_TILES = (8, 4, 2)


def available() -> bool:
    """Whether this torch has the CUDA int4 kernel and a CUDA device to run it on."""
    return hasattr(torch.ops.aten, "_weight_int4pack_mm") and torch.cuda.is_available()


def inner_k_tiles(in_features: int) -> int | None:
    """The largest inner-k-tiles count the kernel accepts for ``in_features`` columns, or None."""
    return next((t for t in INNER_K_TILES if in_features % (16 * t) == 0), None)


def unsupported(out_features: int, in_features: int) -> str:
    """Why the CUDA kernel cannot hold an ``out x in`` weight, or "" when it can."""
    if out_features % 8:
        return f"{out_features} output features (the CUDA int4 kernel needs a multiple of 8)"
    if inner_k_tiles(in_features) is None:
        return f"{in_features} input features (the CUDA int4 kernel needs a multiple of 32)"
    return ""


def nibble_pairs(codes):
    """4-bit codes ``[out, in]`` -> ``uint8 [out, in / 2]``, column ``2i`` in the high nibble: the converter's input."""
    codes = codes.to(torch.uint8)
    return (codes[:, 0::2] << 4 | codes[:, 1::2]).contiguous()


def convert(codes, device):
    """Pack 4-bit codes ``[out, in]`` into the CUDA kernel's tiles on ``device``."""
    pairs = nibble_pairs(codes).to(device)
    return torch.ops.aten._convert_weight_to_int4pack(pairs, inner_k_tiles(codes.shape[1]))


class CudaPackedLinear(PackedLinear):
    """A :class:`~teeny_core.packed.PackedLinear` whose planes live on a CUDA device."""

    def int4_mm(self, x, codes, scale_offset):
        return torch.ops.aten._weight_int4pack_mm(x, codes, self.group, scale_offset)
