"""Reading GGUF files: size facts (bits per weight, tensor types) and dequantizing back to an HF model."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError


def gguf_stats(path: str | Path) -> dict[str, Any]:
    """Parameters, tensor bytes, bits per weight (tensor data only, as llama.cpp reports it) and tensor type counts."""
    from teeny_core.formats.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    n_params = sum(t.n_elements for t in header.tensors)
    n_bytes = sum(t.n_bytes for t in header.tensors)
    types = collections.Counter(t.type_name for t in header.tensors)
    return {
        "parameters": n_params,
        "tensor_bytes": n_bytes,
        "file_bytes": header.file_size,
        "bits_per_weight": round(8.0 * n_bytes / n_params, 4) if n_params else 0.0,
        "tensor_types": dict(sorted(types.items())),
    }


def gguf_metadata(path: str | Path, prefix: str = "") -> dict[str, Any]:
    """Scalar and string metadata of a GGUF file whose keys start with ``prefix`` (arrays are summarised)."""
    from teeny_core.formats.gguf_header import read_gguf_header

    header = read_gguf_header(path)
    return {key: f"<array of {value}>" if key in header.arrays else value
            for key, value in header.metadata.items() if key.startswith(prefix)}


def gguf_to_hf(gguf_path: str | Path, out_dir: str | Path, dtype: str = "float16") -> Path:
    """Dequantize a GGUF file into an HF model directory (safetensors + tokenizer) through transformers'
    GGUF loader, so it can serve as a float baseline for the transformers runtime or be re-converted."""
    from teeny_core.modeling import ModelSource, save_hf_model

    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise TeenyError(f"GGUF file {str(gguf_path)!r} not found")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    source = ModelSource(str(gguf_path.parent), gguf_file=gguf_path.name)
    try:
        model, tokenizer = source.load(dtype=dtype)
    except (ValueError, KeyError) as exc:
        raise TeenyError(f"transformers cannot dequantize {gguf_path.name}: {str(exc).splitlines()[0]}") from None
    save_hf_model(_plain_copy(model), tokenizer, out_dir)
    return out_dir


def _plain_copy(model):
    """The same weights in a model transformers does not mark as GGUF-quantized (those refuse to save)."""
    import torch
    from transformers import AutoModelForCausalLM

    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    if getattr(config, "model_type", "") in ("gemma3", "gemma3_text"):
        # GGUF has no query_pre_attn_scalar; llama.cpp scales queries by 1/sqrt(head_dim) (27B: hidden/heads)
        config.query_pre_attn_scalar = (config.hidden_size // config.num_attention_heads
                                        if config.num_hidden_layers == 62 else config.head_dim)
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=next(model.parameters()).dtype)
    plain.load_state_dict(model.state_dict(), assign=True, strict=False)
    plain.tie_weights()
    return plain.eval()
