"""Writing AWQ results: the ``hf-awq`` tensors of one linear (AutoAWQ GEMM packing), its quantization config,
and the artifact's packed size. The layer walker writes every other tensor."""

from __future__ import annotations

from typing import Any


def quantization_config(bits: int, group_size: int, zero_point: bool, not_converted: list[str],
                        lm_head: bool = False) -> dict[str, Any]:
    """The ``quantization_config`` that transformers, AutoAWQ, GPTQModel and vLLM read for AWQ GEMM checkpoints;
    ``lm_head`` says lm_head is quantized too (the flag GPTQModel and vLLM's AWQ-Marlin read, as for GPTQ)."""
    return {"quant_method": "awq", "version": "gemm", "bits": bits, "group_size": group_size,
            "zero_point": zero_point, "modules_to_not_convert": not_converted, "lm_head": lm_head}


def hf_awq_tensors(qw, bits: int) -> dict[str, Any]:
    """Packed ``qweight``/``qzeros``/``scales`` of one :class:`~teeny_awq.algorithm.QuantizedWeight`."""
    from teeny_core.formats.awq import pack_awq, pack_scales, pack_zeros

    return {"qweight": pack_awq(qw.q, bits), "qzeros": pack_zeros(qw.zero, bits), "scales": pack_scales(qw.scale)}


def packed_linear_bytes(qw, bits: int) -> int:
    """Bytes of one linear's packed tensors: codes at ``bits``, fp16 scales, zeros at ``bits``."""
    return qw.q.numel() * bits // 8 + qw.scale.numel() * 2 + qw.zero.numel() * bits // 8


def packed_bytes(n_params: int, shapes: dict[str, tuple[int, int]], linear_bytes: int, dtype_bytes: int) -> int:
    """Bytes of the packed checkpoint: ``linear_bytes`` for the quantized linears (``shapes``: name -> (out, in))
    and the other of the ``n_params`` parameters as stored."""
    quantized = sum(rows * cols for rows, cols in shapes.values())
    return (n_params - quantized) * dtype_bytes + linear_bytes
