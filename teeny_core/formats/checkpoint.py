"""Writing a packed checkpoint (hf-gptq layout): packed linears, the rest of the state dict, config and tokenizer.

The one writer of packed checkpoints: :func:`write_checkpoint` for a model held whole in memory,
:func:`write_checkpoint_config` for the files around weights the layer walker streamed to disk; and what every
loader of such checkpoints shares (:func:`config_without_quantization`, :func:`load_state`)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError

SHARD_BYTES = 4 * 2**30


def checkpoint_tensors(model, packed: dict[str, dict[str, Any]], store_dtype) -> dict[str, Any]:
    """The tensors to save: each packed linear's qweight/qzeros/scales/g_idx in place of its weight, every
    other tensor cast to ``store_dtype`` (floating ones only); tied tensors are saved once."""
    out: dict[str, Any] = {}
    seen: set[tuple] = set()
    for key, tensor in model.state_dict().items():
        module, _, leaf = key.rpartition(".")
        if module in packed and leaf == "weight":
            for suffix, value in packed[module].items():
                out[f"{module}.{suffix}"] = value.contiguous()
            continue
        identity = (tensor.data_ptr(), tensor.dtype, tuple(tensor.shape))
        if tensor.numel() and identity in seen:  # tied weights (lm_head = embed_tokens): saved once
            continue
        seen.add(identity)
        if tensor.is_floating_point():
            tensor = tensor.to(store_dtype)
        out[key] = tensor.detach().cpu().contiguous().clone()
    return out


SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "BOOL": "bool",
                      "F8_E4M3": "float8_e4m3fn"}


def read_safetensors(path: Path) -> dict[str, Any]:
    """Every tensor of a safetensors file, read into memory tensor by tensor without mapping the file.

    ``safetensors.torch.load_file`` maps the file and copies each tensor out of the mapping, so a process's peak
    RSS counts the weights twice; this reads each tensor's bytes straight into its own buffer."""
    import torch

    out: dict[str, Any] = {}
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(size))
        header.pop("__metadata__", None)
        for name, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = info["data_offsets"]
            f.seek(8 + size + start)
            dtype = getattr(torch, SAFETENSORS_DTYPES[info["dtype"]])
            data = bytearray(end - start)
            f.readinto(data)
            tensor = torch.frombuffer(data, dtype=dtype) if data else torch.empty(0, dtype=dtype)
            out[name] = tensor.reshape(info["shape"])
    return out


def save_safetensors(tensors: dict[str, Any], out_dir: Path, shard_bytes: int = SHARD_BYTES) -> list[str]:
    """Save as ``model.safetensors`` or, past ``shard_bytes``, as shards with ``model.safetensors.index.json``."""
    from safetensors.torch import save_file

    shards: list[dict[str, Any]] = [{}]
    size = 0
    for key, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append({})
            size = 0
        shards[-1][key] = tensor
        size += nbytes
    if len(shards) == 1:
        save_file(shards[0], str(out_dir / "model.safetensors"), metadata={"format": "pt"})
        return ["model.safetensors"]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out_dir / name), metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (out_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True))
    return names


def write_checkpoint(model, tokenizer, packed: dict[str, dict[str, Any]], out_dir: Path,
                     quantization_config: dict[str, Any], store_dtype: str,
                     extra_config: dict[str, Any] | None = None) -> list[str]:
    """Write safetensors and, with :func:`write_checkpoint_config`, the config, generation config and tokenizer
    of a whole model held in memory into ``out_dir``; return the weight files."""
    from teeny_core.modeling import torch_dtype

    out_dir = Path(out_dir)
    files = save_safetensors(checkpoint_tensors(model, packed, torch_dtype(store_dtype)), out_dir)
    write_checkpoint_config(model.config, tokenizer, out_dir, quantization_config, store_dtype,
                            generation_config=getattr(model, "generation_config", None), extra_config=extra_config)
    return files


def write_checkpoint_config(config, tokenizer, out_dir: Path, quantization_config: dict[str, Any] | None,
                            store_dtype: str, generation_config=None,
                            extra_config: dict[str, Any] | None = None) -> None:
    """Everything of a checkpoint but its weights (written whole or streamed by the layer walker): config.json
    with ``quantization_config`` and ``extra_config``'s keys, quantize_config.json (read by AutoGPTQ/GPTQModel;
    neither where ``quantization_config`` is None: a plain float checkpoint), the generation config and the
    tokenizer when given (streamed artifacts copy the source's files instead: ``walker.copy_side_files``)."""
    out_dir = Path(out_dir)
    config.save_pretrained(out_dir)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    if quantization_config is not None:
        cfg["quantization_config"] = quantization_config
        (out_dir / "quantize_config.json").write_text(json.dumps(quantization_config, indent=2, sort_keys=True))
    cfg["dtype"] = store_dtype
    cfg.update(extra_config or {})
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))
    if generation_config is not None:
        generation_config.save_pretrained(out_dir)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)


def config_without_quantization(artifact):
    """The artifact's model config without its ``quantization_config`` (so transformers builds float linears)."""
    from transformers import AutoConfig

    config_dict = json.loads((artifact.path / "config.json").read_text())
    config_dict.pop("quantization_config", None)
    return AutoConfig.for_model(**config_dict)


def load_state(model, state: dict[str, Any], artifact, owned: set[str], assign: bool) -> None:
    """Load ``state`` into ``model``; every key must be used, and every parameter not in ``owned`` set."""
    config = model.config
    missing, unexpected = model.load_state_dict(state, strict=False, assign=assign)
    tied = {"lm_head.weight"} if getattr(config, "tie_word_embeddings", False) else set()
    missing = [k for k in missing if k not in tied and k.rpartition(".")[0] not in owned]
    if missing or unexpected:
        raise TeenyError(f"{artifact.path}: checkpoint does not match its config "
                         f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    if tied:
        model.tie_weights()
