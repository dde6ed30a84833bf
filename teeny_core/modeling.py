"""Models on disk: where a model comes from (:class:`ModelSource`) and a quantized one (:class:`Artifact`), resolving
and checking their files, and loading models and tokenizers through transformers (imported lazily; only runs that
need a model pay for it)."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import re
from pathlib import Path
from typing import Any

from teeny_core.errors import BadFileError, TeenyError
from teeny_core.jsonfile import read_json

DTYPES = ("auto", "float32", "float16", "bfloat16")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")  # used with fullmatch
BASELINE_DTYPES = ("bfloat16", "float16", "float32")
"""Dtypes of the float copy of a GGUF source (bfloat16 by default: what real checkpoints keep unquantized)."""


ARTIFACT_MANIFEST = "teeny-artifact.json"


@dataclasses.dataclass
class ModelSource:
    """Where a model comes from: a local HF directory, a hub id, or a GGUF file (optionally inside a directory).

    ``load()`` returns a fresh float ``(model, tokenizer)`` through transformers every time it is called.
    """

    path: str
    gguf_file: str | None = None
    dtype: str = "auto"
    device: str = "cpu"

    def load(self, dtype: str | None = None, device: str | None = None):
        return load_hf_model(self, dtype=dtype or self.dtype, device=device or self.device)

    def load_tokenizer(self):
        return load_tokenizer(self)

    def identity(self) -> str:
        """A string that changes when the model's files change (used in cache keys)."""
        return source_identity(self)


@dataclasses.dataclass
class Artifact:
    """A quantized (or original) model on disk, in a named format that a runtime can load.

    Formats: ``hf`` (safetensors), ``hf-gptq``, ``hf-awq``, ``gguf``. ``path`` is a directory
    (``gguf``: the directory holding ``file``). ``meta`` records method, options, bits and calibration.
    """

    format: str
    path: Path
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    file: str | None = None

    @property
    def location(self) -> Path:
        """The file a runtime opens (gguf) or the directory (hf*)."""
        return self.path / self.file if self.file else self.path

    def save(self) -> None:
        """Write the artifact manifest into its directory."""
        data = {"format": self.format, "file": self.file, "meta": self.meta}
        (self.path / ARTIFACT_MANIFEST).write_text(json.dumps(data, indent=2, sort_keys=True, default=str))

    @classmethod
    def open(cls, path: str | Path) -> "Artifact":
        """Read an artifact directory written by :meth:`save`."""
        path = Path(path)
        data = read_json(path / ARTIFACT_MANIFEST, expect=dict)
        if data is None:
            raise BadFileError(path, f"not an artifact directory (no {ARTIFACT_MANIFEST})")
        if not isinstance(data.get("format"), str) or not isinstance(data.get("meta", {}), dict):
            raise BadFileError(path / ARTIFACT_MANIFEST, "expected an object with a 'format' string and a 'meta' "
                                                         "object; fix or delete it")
        check_model_files(path, data.get("file"))
        return cls(format=data["format"], path=path, meta=data.get("meta", {}), file=data.get("file"))

    def size_bytes(self) -> int:
        target = self.location
        if target.is_file():
            return target.stat().st_size
        return sum(p.stat().st_size for p in target.rglob("*") if p.is_file() and p.name != ARTIFACT_MANIFEST)



def resolve_source(model: str, dtype: str = "auto", device: str = "cpu") -> "ModelSource":
    """Interpret a MODEL argument: an HF directory, a ``.gguf`` file, a directory with one ``.gguf``, or a hub id.

    The model's files are checked (:func:`check_model_files`, :func:`check_tokenizer_files`) and a hub id must
    resolve (from the hub's cache under ``HF_HUB_OFFLINE=1``), so a bad model fails here, before a run changes
    anything on disk.
    """
    source = _interpret(model, dtype, device)
    if Path(source.path).is_dir():
        check_model_files(Path(source.path), source.gguf_file)
        if not source.gguf_file:
            check_tokenizer_files(Path(source.path))
    else:
        _resolve_hub_config(model)
    return source


def _interpret(model: str, dtype: str, device: str) -> "ModelSource":
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

def _resolve_hub_config(model: str) -> None:
    from huggingface_hub import hf_hub_download

    try:
        config = hf_hub_download(model, "config.json")
    except Exception as exc:  # offline, unknown repo, gated, network: all mean "cannot use this id"
        raise TeenyError(f"model {model!r} cannot be resolved as a hub id ({_one_line(exc)}); expected a local "
                         "model directory, a .gguf file or a hub id that is cached or reachable") from None
    check_model_files(Path(config).parent)


def check_model_files(path: Path, gguf_file: str | None = None) -> None:
    """Raise :class:`BadFileError` naming the file when a model directory cannot be loaded: a ``config.json``
    that is not a JSON object, names a ``model_type`` transformers does not know or gives a size out of
    :data:`CONFIG_SIZES`, a tokenizer or generation JSON file that is not a JSON object, a shard index without
    a ``weight_map`` or listing a missing shard, a ``.safetensors`` file whose header is broken or that is cut
    short, or a GGUF file that is not a complete GGUF."""
    if gguf_file:
        check_gguf(path / gguf_file)
        return
    config = read_json(path / "config.json", expect=dict)
    if config is not None:
        from transformers import CONFIG_MAPPING

        model_type = config.get("model_type")
        if model_type not in CONFIG_MAPPING:
            raise BadFileError(path / "config.json", f"model_type {model_type!r} is not one transformers knows; "
                                                     "expected e.g. llama, qwen2, gemma3")
        for where in (config, config.get("text_config")):
            for key, most in CONFIG_SIZES.items():
                value = where.get(key) if isinstance(where, dict) else None
                if value is not None and (not isinstance(value, int) or isinstance(value, bool)
                                          or not 1 <= value <= most):
                    raise BadFileError(path / "config.json", f"{key}={str(value)[:30]} is not valid; expected an "
                                                             f"int in 1..{most}")
    for name in ("tokenizer.json", "tokenizer_config.json", "generation_config.json"):
        read_json(path / name, expect=dict)  # a garbled one would otherwise be copied into every artifact
    index = read_json(path / "model.safetensors.index.json", expect=dict)
    if index is not None:
        weight_map = index.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise BadFileError(path / "model.safetensors.index.json", "no 'weight_map' object of tensor name to "
                                                                      "shard file name")
        for shard in sorted(set(weight_map.values())):
            if not (path / shard).is_file():
                raise BadFileError(path / "model.safetensors.index.json", f"lists shard {shard!r}, which is "
                                                                          "missing beside it")
    for file in sorted(path.glob("*.safetensors")):
        from safetensors import safe_open

        try:
            with safe_open(str(file), framework="numpy"):
                pass
        except Exception as exc:  # safetensors raises its own error type for every kind of damage
            raise BadFileError(file, f"not a readable safetensors file ({_one_line(exc)})") from None


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json", "spiece.model")
CONFIG_SIZES = {"vocab_size": 2**24, "hidden_size": 2**20, "num_hidden_layers": 2**12, "num_attention_heads": 2**12}
"""Sizes a config.json may give, each an int from 1 to this (far above any real model: a typo, not a model)."""


def check_tokenizer_files(path: Path) -> None:
    """Raise :class:`BadFileError` unless the HF directory ``path`` has tokenizer files, and its
    ``tokenizer.json`` (if any) is one the tokenizers library loads."""
    if not any((path / name).is_file() for name in TOKENIZER_FILES):
        raise BadFileError(path, f"has no tokenizer; expected one of {', '.join(TOKENIZER_FILES)} beside "
                                 "config.json")
    if (path / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        try:
            Tokenizer.from_file(str(path / "tokenizer.json"))
        except Exception as exc:  # the tokenizers library raises its own error type for any bad content
            raise BadFileError(path / "tokenizer.json", f"not a tokenizer the tokenizers library loads "
                                                        f"({_one_line(exc)})") from None


def check_gguf(path: Path) -> None:
    """Raise :class:`BadFileError` unless ``path`` is a complete GGUF file (header, metadata and all tensor data)."""
    from teeny_core.formats.gguf_header import GGUFHeaderError, read_gguf_header

    try:
        read_gguf_header(path)
    except (GGUFHeaderError, OSError, ValueError) as exc:
        raise BadFileError(path, f"not a complete GGUF file ({_one_line(exc)})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200] or type(exc).__name__


def torch_dtype(name: str):
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def resolve_device(device: str) -> str:
    """``device`` checked against this machine ("auto": cuda when there is a GPU, else cpu)."""
    if not DEVICE_RE.fullmatch(device):
        raise TeenyError(f"device={device!r} is not valid; expected auto, cpu, cuda or cuda:N")
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise TeenyError(f"device {device!r} asked for, but CUDA is not available; use device='cpu'")
    index = int(device.partition(":")[2] or 0)
    if device.startswith("cuda") and index >= torch.cuda.device_count():
        raise TeenyError(f"device {device!r} asked for, but this machine has {torch.cuda.device_count()} CUDA "
                         f"device(s): cuda:0..cuda:{torch.cuda.device_count() - 1}")
    return device


def load_tokenizer(source: "ModelSource"):
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"gguf_file": source.gguf_file} if source.gguf_file else {}
    try:
        return AutoTokenizer.from_pretrained(source.path, **kwargs)
    except (OSError, ValueError, TypeError, KeyError) as exc:  # transformers' words for "no usable tokenizer"
        raise TeenyError(f"{source.path}: its tokenizer does not load ({_one_line(exc)}); expected "
                         "tokenizer.json or tokenizer.model beside config.json") from None


def load_hf_model(source: "ModelSource", dtype: str = "auto", device: str = "cpu"):
    """A fresh ``(model, tokenizer)``, in eval mode, on ``device``. GGUF weights are dequantized to ``dtype``
    (``auto``: bfloat16)."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
        if dtype == "auto":
            dtype = "bfloat16"
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


def check_baseline_dtype(dtype: str, where: str = "baseline_dtype") -> str:
    """``dtype`` if it is one of :data:`BASELINE_DTYPES`, else a one-line :class:`TeenyError`."""
    if dtype not in BASELINE_DTYPES:
        raise TeenyError(f"{where}={dtype!r} is not valid; expected one of {', '.join(BASELINE_DTYPES)}")
    return dtype


def dequantize_gguf(source, out_dir: Path, dtype: str = "bfloat16") -> None:
    """Write the HF copy of a GGUF ``source`` (weights in ``dtype``, config, tokenizer) into ``out_dir``."""
    model, tokenizer = source.load(dtype=check_baseline_dtype(dtype), device="cpu")
    save_hf_model(model, tokenizer, out_dir)


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


M_MMAP_THRESHOLD = -3
RETURNED_BLOCK = 1 << 20  # blocks this large and up are mapped on their own and unmapped when freed
REUSED_BLOCK = 32 << 20  # glibc's own ceiling for its dynamic threshold


def _glibc(function: str, *args: int) -> None:
    """Call one of glibc's malloc tunings; nothing where the C library is not glibc."""
    import ctypes

    try:
        getattr(ctypes.CDLL("libc.so.6"), function)(*args)
    except (OSError, AttributeError):
        pass


def return_freed_memory() -> None:
    """Make glibc give freed blocks of 1 MiB or more back to the system at once (a fixed mmap threshold).

    By default glibc raises its mmap threshold each time a large block is freed, so the per-layer buffers of a
    load (unpacked codes, dequantized copies) end up in a heap it keeps: a packed Qwen2.5-0.5B then sits about
    900 MiB above the weights it holds, varying run to run. Called at the start of a worker, so that its RSS is
    what the model holds. A no-op where the C library is not glibc."""
    _glibc("mallopt", M_MMAP_THRESHOLD, RETURNED_BLOCK)  # fixed: also turns off the dynamic adjustment


@contextlib.contextmanager
def temporaries_on_the_heap():
    """Inside, blocks under 32 MiB come from glibc's heap again, then :func:`return_freed_memory` is restored
    and the heap's free pages go back to the system (``malloc_trim``).

    For a loop that allocates and frees the same large temporaries many times (GPTQ's layer replays): a fresh
    mapping per block costs a page fault per page (measured: 25% of GPTQ's time on Gemma 3 270M)."""
    _glibc("mallopt", M_MMAP_THRESHOLD, REUSED_BLOCK)
    try:
        yield
    finally:
        return_freed_memory()
        _glibc("malloc_trim", 0)


def peak_rss_bytes() -> int:
    """This process's peak RSS: Linux's ``VmHWM``, the high-water mark of its own address space.

    Not ``getrusage``'s ``ru_maxrss``: a child started by fork and exec keeps the larger of its parent's RSS at
    the fork and its own (measured: a child of a 1.5 GiB parent reports 1.5 GiB, its VmHWM 13 MiB), so every
    process started by a big one would report at least the parent's size. ``ru_maxrss`` only where there is no
    ``/proc`` (macOS: bytes; elsewhere KiB)."""
    import resource
    import sys

    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def cache_dir() -> Path:
    """Teeny's cache (demo models, float copies of GGUF sources): ``$TEENY_CACHE`` or ``~/.cache/teeny``."""
    return Path(os.environ.get("TEENY_CACHE") or Path.home() / ".cache" / "teeny")


def num_threads() -> int:
    """Threads to use for CPU work: ``TEENY_THREADS`` or the number of cores."""
    return int(os.environ.get("TEENY_THREADS") or os.cpu_count() or 1)
