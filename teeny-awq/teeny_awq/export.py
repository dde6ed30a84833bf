"""Writing AWQ results: an ``hf-awq`` checkpoint (AutoAWQ GEMM packing) or a dequantized ``hf`` checkpoint."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def quantization_config(bits: int, group_size: int, zero_point: bool, not_converted: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` that transformers, AutoAWQ, GPTQModel and vLLM read for AWQ GEMM checkpoints."""
    return {"quant_method": "awq", "version": "gemm", "bits": bits, "group_size": group_size,
            "zero_point": zero_point, "modules_to_not_convert": not_converted}


def write_hf_awq(model, tokenizer, weights: dict, qconfig: dict[str, Any], dtype: str, out_dir: Path) -> None:
    """Save packed ``qweight``/``qzeros``/``scales`` for each quantized linear and every other tensor as ``dtype``.

    ``weights`` maps a linear's qualified name to its :class:`~teeny_awq.algorithm.QuantizedWeight`.
    """
    from safetensors.torch import save_file

    from teeny_core.formats.awq import pack_awq, pack_scales, pack_zeros
    from teeny_core.modeling import torch_dtype

    bits = qconfig["bits"]
    store = torch_dtype(dtype)
    tensors: dict[str, Any] = {}
    seen: dict[int, str] = {}
    tied = getattr(model.config, "tie_word_embeddings", False)
    for key, value in model.state_dict().items():
        if key.rsplit(".", 1)[0] in weights and key.endswith(".weight"):
            continue
        if tied and key == "lm_head.weight":
            continue
        if value.data_ptr() in seen:  # another shared tensor; safetensors stores each storage once
            continue
        seen[value.data_ptr()] = key
        tensors[key] = value.detach().to(store if value.is_floating_point() else value.dtype).contiguous()
    for name, qw in weights.items():
        tensors[f"{name}.qweight"] = pack_awq(qw.q, bits)
        tensors[f"{name}.qzeros"] = pack_zeros(qw.zero, bits)
        tensors[f"{name}.scales"] = pack_scales(qw.scale)
    out_dir = Path(out_dir)
    save_file(tensors, str(out_dir / "model.safetensors"), metadata={"format": "pt"})
    config = model.config.to_dict()
    config["dtype"] = dtype
    config.pop("torch_dtype", None)
    config["quantization_config"] = qconfig
    (out_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        generation.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


def packed_bytes(model, weights: dict, bits: int, dtype_bytes: int) -> int:
    """Bytes of the packed checkpoint's tensors: codes at ``bits``, fp16 scales, packed zeros, the rest as stored."""
    total = 0
    counted: set[int] = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        module = name.rsplit(".", 1)[0]
        if module in weights and name.endswith("weight"):
            continue
        if p.data_ptr() in counted:
            continue
        counted.add(p.data_ptr())
        total += p.numel() * dtype_bytes
    for qw in weights.values():
        total += qw.q.numel() * bits // 8 + qw.scale.numel() * 2 + qw.zero.numel() * bits // 8
    return total
