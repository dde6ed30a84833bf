"""HF causal LM (Llama, Qwen2, Gemma3 text) -> GGUF file in F32, F16 or BF16, with tokenizer and chat template.

Our own converter, written against gguf-py's ``GGUFWriter`` and tensor-name maps. It applies the layout
changes llama.cpp expects: Llama q/k rows permuted for llama.cpp's interleaved ("normal") RoPE, Gemma3
RMSNorm weights stored as ``1 + w`` (llama.cpp multiplies by the weight as is), tied embeddings written
once (llama.cpp reuses ``token_embd`` for the output), Qwen2 q/k/v biases kept in float32.
Tensors are streamed one at a time, so converting needs about one tensor of extra memory, not the model.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Iterator

from teeny_core.errors import TeenyError
from teeny_core.modeling import ModelSource

OUT_TYPES = ("F32", "F16", "BF16")

# HF model_type -> (gguf architecture name, family)
ARCHITECTURES = {
    "llama": ("LLAMA", "llama"),
    "mistral": ("LLAMA", "llama"),
    "qwen2": ("QWEN2", "qwen2"),
    "gemma3": ("GEMMA3", "gemma3"),
    "gemma3_text": ("GEMMA3", "gemma3"),
}


@dataclasses.dataclass
class _Tensor:
    gguf_name: str
    shape: tuple[int, ...]
    load: Callable[[], Any]  # -> float32 torch tensor in GGUF layout (transforms applied)


def convert_to_gguf(source: ModelSource, out_file: str | Path, outtype: str = "F16", *, name: str | None = None) -> Path:
    """Write ``source`` as a GGUF file of type ``outtype`` (F32, F16 or BF16) and return its path.

    2-D weights get ``outtype``; norms, biases and other 1-D tensors stay F32, as llama.cpp's converter does.
    """
    import gguf

    outtype = outtype.upper()
    if outtype not in OUT_TYPES:
        raise TeenyError(f"GGUF output type {outtype!r} is not valid; expected one of {', '.join(OUT_TYPES)}")
    config = _load_config(source)
    text = config.get_text_config()
    model_type = getattr(text, "model_type", None)
    if model_type not in ARCHITECTURES:
        raise TeenyError(f"cannot convert model type {model_type!r} to GGUF; supported: {', '.join(sorted(ARCHITECTURES))}")
    arch_key, family = ARCHITECTURES[model_type]
    arch = getattr(gguf.MODEL_ARCH, arch_key)
    out_file = Path(out_file)
    writer = gguf.GGUFWriter(out_file, gguf.MODEL_ARCH_NAMES[arch])
    try:
        writer.add_name(name or Path(source.gguf_file or source.path).stem)
        _write_hparams(writer, text, family)
        ftype = {"F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
                 "BF16": gguf.LlamaFileType.MOSTLY_BF16}[outtype]
        writer.add_file_type(int(ftype))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        from teeny_gguf.vocab import write_tokenizer

        write_tokenizer(writer, source, text.vocab_size)
        tensors = list(_plan_tensors(source, text, family, arch))
        for t in tensors:
            qtype = _tensor_type(t, outtype)
            np_dtype, raw = _storage(qtype)
            writer.add_tensor_info(t.gguf_name, t.shape, np_dtype, _nbytes(t.shape, qtype), raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for t in tensors:
            writer.write_tensor_data(_to_numpy(t.load(), _tensor_type(t, outtype)))
    finally:
        writer.close()
    return out_file


# --- config and hyperparameters -------------------------------------------------------------------

def _load_config(source: ModelSource):
    from transformers import AutoConfig

    kwargs = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoConfig.from_pretrained(source.path, **kwargs)


def _rope(text) -> dict[str, Any]:
    params = getattr(text, "rope_parameters", None) or {}
    if "full_attention" in params:  # Gemma3: per layer type
        return params
    if not params:  # older transformers
        params = dict(getattr(text, "rope_scaling", None) or {})
        params.setdefault("rope_theta", getattr(text, "rope_theta", 10000.0))
    return params


def _head_dim(text) -> int:
    return getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads


def _write_hparams(writer, text, family: str) -> None:
    import gguf

    head_dim = _head_dim(text)
    writer.add_context_length(text.max_position_embeddings)
    writer.add_embedding_length(text.hidden_size)
    writer.add_block_count(text.num_hidden_layers)
    writer.add_feed_forward_length(text.intermediate_size)
    writer.add_head_count(text.num_attention_heads)
    writer.add_head_count_kv(getattr(text, "num_key_value_heads", None) or text.num_attention_heads)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_layer_norm_rms_eps(text.rms_norm_eps)
    writer.add_vocab_size(text.vocab_size)
    rope = _rope(text)
    if family == "gemma3":
        full = rope.get("full_attention", rope)
        writer.add_rope_freq_base(full.get("rope_theta", 1_000_000.0))
        if "sliding_attention" in rope:
            writer.add_rope_freq_base_swa(rope["sliding_attention"].get("rope_theta", 10_000.0))
        layer_types = getattr(text, "layer_types", None)
        if getattr(text, "sliding_window", None) and layer_types and "sliding_attention" in layer_types:
            writer.add_sliding_window(text.sliding_window)
            writer.add_sliding_window_pattern([t == "sliding_attention" for t in layer_types])
        if getattr(text, "final_logit_softcapping", None):
            writer.add_final_logit_softcapping(text.final_logit_softcapping)
        if getattr(text, "attn_logit_softcapping", None):
            raise TeenyError("Gemma3 with attn_logit_softcapping is not supported by llama.cpp")
        scaling = full
    else:
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(rope.get("rope_theta", 10000.0))
        scaling = rope
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(scaling["factor"])
    elif kind == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(scaling["factor"])
        writer.add_rope_scaling_orig_ctx_len(scaling["original_max_position_embeddings"])
    elif kind not in ("default", "llama3"):  # llama3 is written as the rope_freqs tensor
        raise TeenyError(f"RoPE scaling {kind!r} is not supported by the GGUF converter; supported: linear, yarn, llama3")


def _llama3_rope_factors(text) -> Any:
    """Per-frequency divisors for Llama 3 RoPE scaling, as llama.cpp reads them from ``rope_freqs``."""
    import torch

    rope = _rope(text)
    base, dim = rope.get("rope_theta", 10000.0), _head_dim(text)
    factor, low, high = rope["factor"], rope.get("low_freq_factor", 1.0), rope.get("high_freq_factor", 4.0)
    old_ctx = rope["original_max_position_embeddings"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    wavelen = 2 * math.pi / freqs
    low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
    smooth = (old_ctx / wavelen - low) / (high - low)
    factors = torch.where(wavelen < high_wavelen, torch.ones_like(freqs),
                          torch.where(wavelen > low_wavelen, torch.full_like(freqs, factor),
                                      1.0 / ((1 - smooth) / factor + smooth)))
    return factors.float()


# --- tensors ------------------------------------------------------------------------------------

def hf_tensor_loaders(source: ModelSource) -> dict[str, tuple[tuple[int, ...], Callable[[], Any]]]:
    """HF tensor name -> (shape, loader of a float32 torch tensor), names normalised to ``model.*`` / ``lm_head.*``.

    Safetensors directories are read lazily; anything else (a GGUF, a .bin checkpoint) is loaded through
    transformers once.
    """
    path = Path(source.path)
    files = sorted(path.glob("*.safetensors")) if path.is_dir() and not source.gguf_file else []
    out: dict[str, tuple[tuple[int, ...], Callable[[], Any]]] = {}
    if files:
        from safetensors import safe_open

        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    name = _normalise_name(key)
                    if name is not None:
                        shape = tuple(f.get_slice(key).get_shape())
                        out[name] = (shape, lambda file=file, key=key: _read_safetensor(file, key))
        return out
    model, _ = source.load(dtype="float32", device="cpu")
    for key, value in model.state_dict().items():
        name = _normalise_name(key)
        if name is not None:
            out[name] = (tuple(value.shape), lambda v=value: v.float())
    return out


def _read_safetensor(file: Path, key: str):
    from safetensors import safe_open

    with safe_open(str(file), "pt") as f:
        return f.get_tensor(key).float()


def _normalise_name(key: str) -> str | None:
    """Map multimodal wrappers' text tensors onto the plain causal-LM names; drop vision tensors."""
    for prefix, repl in (("model.language_model.", "model."), ("language_model.model.", "model."),
                         ("language_model.lm_head.", "lm_head.")):
        if key.startswith(prefix):
            return repl + key[len(prefix):]
    if key.startswith(("model.", "lm_head.")) and "vision" not in key and "multi_modal" not in key:
        return key
    return None


def _permute_for_rope(w, n_head: int):
    """HF rotate-half q/k rows -> llama.cpp's interleaved pairs (per head: [x0..x(d/2-1), y...] -> [x0,y0,...])."""
    rows = w.shape[0]
    head_dim = rows // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _plan_tensors(source: ModelSource, text, family: str, arch) -> Iterator[_Tensor]:
    import gguf

    name_map = gguf.get_tensor_name_map(arch, text.num_hidden_layers)
    loaders = hf_tensor_loaders(source)
    tied = bool(getattr(text, "tie_word_embeddings", False)) or "lm_head.weight" not in loaders
    n_head = text.num_attention_heads
    n_kv = getattr(text, "num_key_value_heads", None) or n_head
    if family == "llama" and _rope(text).get("rope_type") == "llama3":
        factors = _llama3_rope_factors(text)
        yield _Tensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", tuple(factors.shape), lambda: factors)
    for hf_name, (shape, load) in loaders.items():
        if hf_name == "lm_head.weight" and tied:
            continue
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gguf_name = name_map.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise TeenyError(f"no GGUF name for tensor {hf_name!r} of a {family} model")
        transform: Callable[[Any], Any] | None = None
        if family == "llama" and (".self_attn.q_proj." in hf_name or ".self_attn.k_proj." in hf_name):
            heads = n_head if ".q_proj." in hf_name else n_kv
            transform = lambda w, h=heads: _permute_for_rope(w, h)  # noqa: E731
        elif family == "gemma3" and hf_name.endswith("norm.weight"):
            transform = lambda w: w + 1.0  # noqa: E731  (Gemma3RMSNorm scales by 1 + weight)
        yield _Tensor(gguf_name, shape, load if transform is None else (lambda ld=load, tf=transform: tf(ld())))


def _tensor_type(t: _Tensor, outtype: str) -> str:
    return outtype if len(t.shape) >= 2 else "F32"


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    return math.prod(shape) * (4 if qtype == "F32" else 2)


def _storage(qtype: str):
    """(numpy dtype handed to the writer, raw GGML type or None) for an output type."""
    import gguf
    import numpy as np

    return {"F32": (np.float32, None), "F16": (np.float16, None),
            "BF16": (np.int16, gguf.GGMLQuantizationType.BF16)}[qtype]


def _to_numpy(tensor, qtype: str):
    import torch

    tensor = tensor.detach().contiguous()
    if qtype == "F32":
        return tensor.float().numpy()
    if qtype == "F16":
        return tensor.to(torch.float16).numpy()
    return tensor.to(torch.bfloat16).view(torch.int16).numpy()

