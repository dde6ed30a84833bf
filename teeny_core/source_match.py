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

from pathlib import Path
from typing import TYPE_CHECKING, Any

from teeny_core.errors import TeenyError

if TYPE_CHECKING:
    from teeny_core.modeling import Artifact, ModelSource

FLOAT_TYPES = frozenset({"F32", "F16", "BF16", "F64"})
FLAG_SHARE = 0.5  # flagged from this share of the source's quantized tensors stored in the same type


def gguf_layout(path: str | Path) -> tuple[str | None, dict[str, tuple[str, int]]]:
    """A GGUF file's ``general.file_type`` name (e.g. ``MOSTLY_Q4_K_M``) and tensor name -> (type, elements),
    from its header only (:mod:`teeny_core.formats.gguf_header`)."""
    import gguf

    from teeny_core.formats.gguf_header import GGUFHeaderError, read_gguf_header

    try:
        header = read_gguf_header(path)
    except (GGUFHeaderError, OSError) as exc:
        raise TeenyError(f"{path}: unreadable GGUF header ({exc}); expected a complete GGUF file") from None
    value = header.metadata.get("general.file_type")
    file_type = None
    if isinstance(value, int) and "general.file_type" not in header.arrays:
        try:
            file_type = gguf.LlamaFileType(value).name
        except ValueError:
            file_type = str(value)
    return file_type, {t.name: (t.type_name, t.n_elements) for t in header.tensors}


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
    from teeny_core.modeling import Artifact

    if not isinstance(artifact, Artifact):
        artifact = Artifact.open(artifact)
    if not source.gguf_file or artifact.format != "gguf":
        return None
    return compare_layouts(gguf_layout(Path(source.path) / source.gguf_file), gguf_layout(artifact.location))


def _short(file_type: str | None) -> str:
    return (file_type or "unknown file type").removeprefix("MOSTLY_")
