"""Loading models and tokenizers through transformers (imported lazily; only runs that need a model pay for it)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teeny_core.errors import TeenyError

if TYPE_CHECKING:
    from teeny_core.types import ModelSource

DTYPES = ("auto", "float32", "float16", "bfloat16")


def resolve_source(model: str, dtype: str = "auto", device: str = "cpu") -> "ModelSource":
    """Interpret a MODEL argument: an HF directory, a ``.gguf`` file, a directory with one ``.gguf``, or a hub id."""
    from teeny_core.types import ModelSource

    if dtype not in DTYPES:
        raise TeenyError(f"dtype {dtype!r} is not valid; expected one of {', '.join(DTYPES)}")
    path = Path(model).expanduser()
    if path.is_file():
        if path.suffix != ".gguf":
            raise TeenyError(f"model file {model!r} is not a .gguf file; pass an HF model directory, a hub id or a .gguf file")
        return ModelSource(str(path.parent.resolve()), gguf_file=path.name, dtype=dtype, device=device)
    if path.is_dir():
        if not (path / "config.json").exists():
            ggufs = sorted(p.name for p in path.glob("*.gguf"))
            if len(ggufs) == 1:
                return ModelSource(str(path.resolve()), gguf_file=ggufs[0], dtype=dtype, device=device)
            raise TeenyError(f"model directory {model!r} has no config.json (and not exactly one .gguf file)")
        return ModelSource(str(path.resolve()), dtype=dtype, device=device)
    if model.count("/") == 1 and not model.startswith((".", "/")):
        return ModelSource(model, dtype=dtype, device=device)  # a hub id, fetched with the hub's cache
    raise TeenyError(f"model {model!r} not found; expected an HF model directory, a .gguf file or a hub id like org/name")


def quiet_libraries() -> None:
    """No progress bars or advisory warnings from transformers (imported only if it already is)."""
    import sys

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    transformers = sys.modules.get("transformers")
    if transformers is not None:
        transformers.logging.set_verbosity_error()
        transformers.logging.disable_progress_bar()


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TeenyError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    return device


def load_tokenizer(source: "ModelSource"):
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    return AutoTokenizer.from_pretrained(source.path, **kwargs)


def load_hf_model(source: "ModelSource", dtype: str = "auto", device: str = "cpu"):
    """A fresh ``(model, tokenizer)``, in eval mode, on ``device``. GGUF weights are dequantized to float32."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
        if dtype == "auto":
            dtype = "float32"
    if dtype != "auto":
        kwargs["dtype"] = torch_dtype(dtype)
    else:
        kwargs["dtype"] = "auto"
    model = AutoModelForCausalLM.from_pretrained(source.path, **kwargs)
    if source.gguf_file:  # the weights are plain floats now: drop transformers' "quantized with gguf" marks
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
    model.to(resolve_device(device)).eval()
    return model, load_tokenizer(source)


def source_identity(source: "ModelSource") -> str:
    """Hash of the model's file names, sizes and mtimes (or the hub id), for cache keys."""
    h = hashlib.sha256()
    path = Path(source.path)
    if path.is_dir():
        files = [path / source.gguf_file] if source.gguf_file else sorted(p for p in path.rglob("*") if p.is_file())
        for p in files:
            st = p.stat()
            h.update(f"{p.relative_to(path)}:{st.st_size}:{int(st.st_mtime)}".encode())
    else:
        h.update(source.path.encode())
    h.update(f"{source.gguf_file}:{source.dtype}".encode())
    return h.hexdigest()[:16]


def decoder_layers(model) -> list:
    """The list of decoder blocks of a causal LM (Llama, Qwen2, Gemma3, Mistral and friends)."""
    inner = getattr(model, "model", model)
    for attr in ("layers", "h", "blocks"):
        layers = getattr(inner, attr, None) or getattr(getattr(inner, "language_model", None), attr, None)
        if layers is not None:
            return list(layers)
    raise TeenyError(f"cannot find the decoder layers of {type(model).__name__}")


def linear_layers(module, prefix: str = "") -> dict[str, Any]:
    """Every ``nn.Linear`` under ``module`` by its qualified name."""
    import torch

    return {f"{prefix}{name}": m for name, m in module.named_modules() if isinstance(m, torch.nn.Linear)}


def save_hf_model(model, tokenizer, out_dir: Path, extra_config: dict[str, Any] | None = None) -> None:
    """Save model (safetensors) and tokenizer; ``extra_config`` keys are merged into config.json."""
    import json

    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    if extra_config:
        cfg_path = out_dir / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.update(extra_config)
        cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def num_threads() -> int:
    """Threads to use for CPU work: ``TEENY_THREADS`` or the number of cores."""
    return int(os.environ.get("TEENY_THREADS") or os.cpu_count() or 1)
