"""W8A8 linears executed as deployed: int8 weights times int8 activations with int32 accumulation, and FP8.

:class:`Int8Linear` computes ``y = (sx * sw) * (qx @ qw.T) + b`` where ``qw`` are the checkpoint's int8 weight
codes with one scale per output channel (or one per tensor) and ``qx`` are the activations quantized on the fly:
per token, ``sx = max|x_row| / 127`` (dynamic, what vLLM's int8 kernels do), or with the checkpoint's static
per-tensor ``input_scale``; ``qx = clamp(round(x / sx), -128, 127)``. The product runs in ``torch._int_mm``
(int8 x int8 -> int32, exact) on CPU and CUDA; CUDA's kernel needs more than 16 rows and widths that are
multiples of 8, so fewer rows are padded with zeros there. :class:`Fp8Linear` is the FP8 E4M3 path through
``torch._scaled_mm`` (CUDA compute capability 8.9 or later only: nowhere else is it run, never simulated).
This module imports torch at import time: only runtimes import it, inside ``load``.
"""

from __future__ import annotations

import torch

INT8_KERNEL = "torch._int_mm"
FP8_KERNEL = "torch._scaled_mm"
FP8_MAX = 448.0
"""Largest finite float8_e4m3fn value."""
_TINY = 1e-12


def int8_available() -> bool:
    """Whether this torch build has the int8 x int8 -> int32 matrix product."""
    return hasattr(torch, "_int_mm")


def fp8_device_problem(device: str) -> str:
    """Why FP8 linears cannot run on ``device`` ("" when they can): they need torch._scaled_mm on a CUDA GPU of
    compute capability 8.9 or later (Ada, Hopper)."""
    if not str(device).startswith("cuda") or not torch.cuda.is_available():
        return f"FP8 needs a CUDA GPU with FP8 tensor cores (compute capability 8.9+); the device is {device}"
    major, minor = torch.cuda.get_device_capability(torch.device(device))
    if (major, minor) < (8, 9) or not hasattr(torch, "_scaled_mm"):
        return (f"FP8 needs compute capability 8.9+ and torch._scaled_mm; {torch.cuda.get_device_name(device)} "
                f"has {major}.{minor}")
    return ""


def quantize_tokens(x, input_scale=None):
    """int8 codes ``[rows, in]`` and float32 scales ``[rows, 1]`` of float ``x [rows, in]``: per token from its
    absolute maximum (``input_scale`` None) or with one static scale. One float32 copy of ``x``, divided and
    rounded in place (per token ``|x / scale| <= 127`` already, so only a static scale needs the clamp)."""
    xf = x.to(torch.float32, copy=True)
    if input_scale is None:
        scale = xf.abs().amax(dim=1, keepdim=True).clamp_min_(_TINY).div_(127.0)
        xf.div_(scale).round_()
    else:
        scale = input_scale.float().reshape(1, 1).expand(x.shape[0], 1)
        xf.div_(scale).round_().clamp_(-128, 127)
    return xf.to(torch.int8), scale


def _int_mm(codes, weight_t):
    """``codes @ weight_t`` in int32 through torch._int_mm (rows padded to 17 on CUDA, which needs > 16)."""
    rows = codes.shape[0]
    if codes.is_cuda and rows <= 16:
        codes = torch.nn.functional.pad(codes, (0, 0, 0, 17 - rows))
        return torch._int_mm(codes, weight_t)[:rows]
    return torch._int_mm(codes, weight_t)


class _ScaledLinear(torch.nn.Module):
    """A linear of 8-bit weight codes with a float scale per output channel (or one for the tensor), and one
    static activation scale or none (dynamic per token)."""

    def __init__(self, weight, weight_scale, input_scale=None, bias=None) -> None:
        super().__init__()
        self.out_features, self.in_features = weight.shape
        self.register_buffer("weight", weight.contiguous())
        self.register_buffer("weight_scale", weight_scale.float().reshape(1, -1).expand(1, self.out_features)
                             .contiguous())
        self.register_buffer("input_scale", None if input_scale is None else input_scale.float().reshape(1))
        self.register_buffer("bias", bias)

    def extra_repr(self) -> str:
        mode = "dynamic per-token" if self.input_scale is None else "static per-tensor"
        return f"in_features={self.in_features}, out_features={self.out_features}, activations={mode}"


class Int8Linear(_ScaledLinear):
    """``y = x @ w.T + b`` with int8 weight codes and activations quantized per token (or statically)."""

    kernel = INT8_KERNEL

    def __init__(self, weight, weight_scale, input_scale=None, bias=None) -> None:
        if weight.dtype != torch.int8 or weight.dim() != 2:
            raise ValueError(f"Int8Linear needs an int8 weight [out, in], got {weight.dtype} {tuple(weight.shape)}")
        super().__init__(weight, weight_scale, input_scale, bias)

    def forward(self, x):
        shape = x.shape
        codes, scale = quantize_tokens(x.reshape(-1, self.in_features), self.input_scale)
        y = _int_mm(codes, self.weight.t()).float().mul_(scale).mul_(self.weight_scale)  # in place: no copies
        if self.bias is not None:
            y.add_(self.bias)
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)


class Fp8Linear(_ScaledLinear):
    """``y = x @ w.T + b`` with FP8 E4M3 weights (scale per output channel or tensor) and activations quantized
    to FP8 per token (or statically), multiplied by torch._scaled_mm on CUDA (compute capability 8.9+)."""

    kernel = FP8_KERNEL

    def __init__(self, weight, weight_scale, input_scale=None, bias=None) -> None:
        super().__init__(weight.to(torch.float8_e4m3fn), weight_scale, input_scale, bias)

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, self.in_features).float()
        if self.input_scale is None:
            scale = flat.abs().amax(dim=1, keepdim=True).clamp_min(_TINY) / FP8_MAX
        else:
            scale = self.input_scale.reshape(1, 1).expand(flat.shape[0], 1).contiguous()
        codes = (flat / scale).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
        y = torch._scaled_mm(codes, self.weight.t(), scale_a=scale, scale_b=self.weight_scale,
                             out_dtype=torch.bfloat16).float()
        if self.bias is not None:
            y = y + self.bias.float()
        return y.to(x.dtype).reshape(*shape[:-1], self.out_features)
