"""Flag variants stored in the same quantization as a quantized source.

A GGUF source (e.g. a Q4_K_M file) is dequantized to a float baseline; its weights then lie on the source's
grid, so re-quantizing them to the same GGUF types is close to an identity and the variant's fidelity
flatters it against methods that use another grid. This compares the source's ``general.file_type`` and
per-tensor types with a GGUF variant's: a variant is flagged when its file type equals the source's or when
at least half of the source's quantized tensors keep their type in it. Tensors are counted, not weights:
in a small model the embedding alone outweighs all blocks (Gemma 3 270M: 168M of 268M parameters, kept in
Q8_0 by every llama.cpp type), and repeating its type says nothing about the blocks.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

from teeny_core.errors import TeenyError

if TYPE_CHECKING:
    from teeny_core.types import Artifact, ModelSource

FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})
FLAG_SHARE = 0.5  # flagged from this share of the source's quantized tensors stored in the same type


def gguf_layout(path: str | Path) -> tuple[str | None, dict[str, tuple[str, int]]]:
    """A GGUF file's ``general.file_type`` name (e.g. ``MOSTLY_Q4_K_M``) and tensor name -> (type, elements).

    Reads only the header: ``gguf.GGUFReader`` decodes every metadata array (262k vocabulary strings for
    Gemma, about 25 s), which this skips."""
    with open(path, "rb") as f:
        data = memoryview(f.read(_header_size(path)))
    pos = 0

    def take(fmt: str):
        nonlocal pos
        values = struct.unpack_from("<" + fmt, data, pos)
        pos += struct.calcsize("<" + fmt)
        return values[0] if len(values) == 1 else values

    def string() -> str:
        nonlocal pos
        n = take("Q")
        pos += n
        return bytes(data[pos - n:pos]).decode("utf-8", errors="replace")

    def skip(vtype: int) -> None:
        nonlocal pos
        if vtype == _STRING:
            string()
        elif vtype == _ARRAY:
            etype, count = take("IQ")
            if etype in _SCALAR:
                pos += count * struct.calcsize(_SCALAR[etype])
            else:
                for _ in range(count):
                    skip(etype)
        else:
            pos += struct.calcsize(_SCALAR[vtype])

    try:
        return _parse(data, take, string, skip)
    except (struct.error, ValueError) as exc:
        raise TeenyError(f"{path}: unreadable GGUF header ({exc}); expected a complete GGUF file") from None


def _parse(data, take, string, skip) -> tuple[str | None, dict[str, tuple[str, int]]]:
    import gguf

    magic, _version, n_tensors, n_kv = take("4sIQQ")
    if magic != b"GGUF":
        raise ValueError(f"magic {magic!r} is not GGUF")
    file_type = None
    for _ in range(n_kv):
        key, vtype = string(), take("I")
        if key == "general.file_type" and vtype in _SCALAR and vtype not in (_STRING, _ARRAY):
            value = int(take(_SCALAR[vtype]))
            try:
                file_type = gguf.LlamaFileType(value).name
            except ValueError:
                file_type = str(value)
        else:
            skip(vtype)
    tensors = {}
    for _ in range(n_tensors):
        name = string()
        dims = [take("Q") for _ in range(take("I"))]
        ttype, _offset = take("IQ")
        tensors[name] = (gguf.GGMLQuantizationType(ttype).name, math.prod(dims))
    return file_type, tensors


_STRING, _ARRAY = 8, 9
_SCALAR = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}


def _header_size(path: str | Path) -> int:
    """Bytes to read for the header: the whole file when small, else up to 64 MiB (a vocabulary's worth)."""
    return min(Path(path).stat().st_size, 64 * 2**20)


def compare_layouts(source: tuple[str | None, dict[str, tuple[str, int]]],
                    variant: tuple[str | None, dict[str, tuple[str, int]]]) -> dict[str, Any] | None:
    """How much of the source's quantization the variant repeats, and whether that biases it (None: the source
    holds no quantized tensors, so there is nothing to repeat)."""
    source_type, source_tensors = source
    variant_type, variant_tensors = variant
    quantized = {name: te for name, te in source_tensors.items() if te[0] not in FLOAT_TYPES}
    if not quantized:
        return None
    same = [name for name, (qtype, _) in quantized.items() if variant_tensors.get(name, ("",))[0] == qtype]
    weight_share = sum(quantized[name][1] for name in same) / sum(n for _, n in quantized.values())
    same_file_type = source_type is not None and source_type == variant_type
    flagged = same_file_type or len(same) >= FLAG_SHARE * len(quantized)
    reason = None
    if flagged:
        reason = (f"same quantization as the source ({_short(source_type)}): {len(same)} of the source's "
                  f"{len(quantized)} quantized tensors keep their type, so re-quantizing is close to an identity "
                  "and its fidelity is not comparable with other methods")
    return {"flagged": flagged, "reason": reason, "source_file_type": source_type,
            "variant_file_type": variant_type, "same_type_tensors": len(same),
            "source_quantized_tensors": len(quantized), "same_type_weight_share": round(weight_share, 4)}


def source_match(source: ModelSource, artifact: Artifact | str | Path) -> dict[str, Any] | None:
    """:func:`compare_layouts` for ``artifact`` (or the artifact directory) when it and ``source`` are GGUF, else
    None."""
    from teeny_core.types import Artifact

    if not isinstance(artifact, Artifact):
        artifact = Artifact.open(artifact)
    if not source.gguf_file or artifact.format != "gguf":
        return None
    return compare_layouts(gguf_layout(Path(source.path) / source.gguf_file), gguf_layout(artifact.location))


def _short(file_type: str | None) -> str:
    return (file_type or "unknown file type").removeprefix("MOSTLY_")
