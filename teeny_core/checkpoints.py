"""Checkpoints made elsewhere (a vendor's GPTQ/AWQ release, a GPTQModel or AutoAWQ output, a ``.gguf`` file):
their artifact format, detected from the checkpoint's own metadata.

- a ``.gguf`` file (or a directory holding exactly one, and no config.json): ``gguf``, checked by its header;
- a directory with a Teeny manifest: that artifact;
- a directory with config.json: ``quantization_config.quant_method`` (or AutoGPTQ/GPTQModel's
  ``quantize_config.json``) ``gptq`` -> ``hf-gptq``, ``awq`` -> ``hf-awq``, ``compressed-tensors`` ->
  ``compressed-tensors`` (see :mod:`teeny_core.formats.compressed_tensors`), none -> ``hf``;
- a hub id (``org/name``): downloaded into the hub cache, then as a directory.

Layouts no runtime here reads (GPTQ marlin/bitblas checkpoint formats, non-int32 packing, AWQ gemv,
compressed-tensors schemes without a kernel, bitsandbytes) are refused with one line naming the value and what is
supported.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.modeling import ARTIFACT_MANIFEST, Artifact, ModelSource

GGUF_MAGIC = b"GGUF"
SUPPORTED = ("gptq (checkpoint_format gptq or gptq_v2, int32 packing), awq (version gemm), compressed-tensors, "
             "or none (float)")


def is_hub_id(location: str) -> bool:
    """``org/name`` that is not an existing path."""
    return location.count("/") == 1 and not location.startswith((".", "/", "~")) and not Path(location).exists()


def check_location(location: str) -> None:
    """Fail early (without downloading) when ``location`` is neither an existing path nor a hub id."""
    if not Path(location).expanduser().exists() and not is_hub_id(location):
        raise TeenyError(f"checkpoint {location!r} not found; expected a checkpoint directory, a .gguf file "
                         "or a hub id like org/name")


def quantization_config(directory: Path) -> tuple[dict[str, Any] | None, str]:
    """The checkpoint's quantization config and the file it came from (``(None, "")`` for a float model)."""
    config = json.loads((directory / "config.json").read_text())
    if config.get("quantization_config"):
        return config["quantization_config"], "config.json"
    legacy = directory / "quantize_config.json"  # AutoGPTQ and older GPTQModel write only this file
    if legacy.exists():
        return {"quant_method": "gptq", **json.loads(legacy.read_text())}, "quantize_config.json"
    return None, ""


def detect_format(directory: Path) -> tuple[str, dict[str, Any]]:
    """``(artifact format, facts)`` of an HF-style checkpoint directory; refuses layouts no runtime here reads."""
    qcfg, origin = quantization_config(directory)
    if qcfg is None:
        return "hf", {}
    method = str(qcfg.get("quant_method", "gptq")).lower()
    where = f"{directory / origin}: quantization_config"
    if method == "compressed-tensors":
        from teeny_core.formats.compressed_tensors import FORMAT, describe

        return FORMAT, {**describe(qcfg, where), "detected_from": origin}
    if method == "gptq":
        layout = str(qcfg.get("checkpoint_format") or qcfg.get("format") or "gptq").lower()
        if layout not in ("gptq", "gptq_v2"):
            raise TeenyError(f"{where}.checkpoint_format={layout!r} is not supported; expected {SUPPORTED}")
        pack = str(qcfg.get("pack_dtype", "int32")).replace("torch.", "")
        if pack != "int32":
            raise TeenyError(f"{where}.pack_dtype={pack!r} is not supported; expected {SUPPORTED}")
        from teeny_core.formats.gptq import header_names, module_layouts, safetensors_files

        module_layouts(qcfg, header_names(safetensors_files(directory)), where)  # per-module bits, checked now
        fmt = "hf-gptq"
    elif method == "awq":
        version = str(qcfg.get("version", "gemm")).lower()
        if version != "gemm":
            raise TeenyError(f"{where}.version={version!r} is not supported; expected {SUPPORTED}")
        fmt = "hf-awq"
    else:
        raise TeenyError(f"{where}.quant_method={method!r} is not supported; expected {SUPPORTED}")
    facts = {k: qcfg[k] for k in ("bits", "group_size", "sym", "desc_act", "zero_point", "checkpoint_format")
             if k in qcfg}
    producer = (qcfg.get("meta") or {}).get("quantizer")
    if producer:
        facts["quantizer"] = producer
    return fmt, {**facts, "detected_from": origin}


def _gguf(path: Path, location: str) -> Artifact:
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        raise TeenyError(f"{location!r} is not a GGUF file (header {magic!r}, expected {GGUF_MAGIC!r})")
    return Artifact("gguf", path.parent.resolve(), {"source": location, "detected_from": "GGUF header"},
                    file=path.name)


def open_checkpoint(location: str) -> Artifact:
    """The artifact for a checkpoint directory, ``.gguf`` file or hub id, its format read from its metadata."""
    path = Path(location).expanduser()
    if not path.exists() and is_hub_id(location):
        try:
            from huggingface_hub import snapshot_download

            path = Path(snapshot_download(location))
        except Exception as exc:  # offline, unknown repo, no access: one line
            raise TeenyError(f"cannot download checkpoint {location!r} from the hub: {type(exc).__name__}") from None
    check_location(str(path))
    if path.is_file():
        if path.suffix != ".gguf":
            raise TeenyError(f"checkpoint file {location!r} is not a .gguf file; pass a directory or a .gguf file")
        return _gguf(path, location)
    if (path / ARTIFACT_MANIFEST).exists():
        return Artifact.open(path)
    if not (path / "config.json").exists():
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return _gguf(ggufs[0], location)
        raise TeenyError(f"checkpoint directory {location!r} has no config.json (and not exactly one .gguf file)")
    fmt, facts = detect_format(path)
    return Artifact(fmt, path.resolve(), {"source": location, **facts})


def checkpoint_key(parts: list[Any], location: str) -> str:
    """A variant key that changes when the checkpoint's files change (a hub id: when the id changes)."""
    import hashlib

    path = Path(location).expanduser()
    identity = ModelSource(str(path.parent), gguf_file=path.name).identity() if path.is_file() else \
        ModelSource(str(path) if path.exists() else location).identity()
    return hashlib.sha256(json.dumps([*parts, location, identity], sort_keys=True).encode()).hexdigest()[:16]
