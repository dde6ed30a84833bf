"""The ``gguf`` quantizer: HF -> GGUF (float intermediate) -> llama.cpp quantization, with a teeny importance matrix."""

from __future__ import annotations

import dataclasses
import re
import tempfile
from pathlib import Path
from typing import Any, Literal

from teeny_core import Artifact, CalibrationSet, ModelSource, Options, Quantizer, TeenyError, option
from teeny_gguf.llama_quant import FILE_TYPES, FLOAT_TYPES, REQUIRES_IMATRIX, TENSOR_TYPES

# types for which imatrix="auto" computes an importance matrix: every i-quant and the 2-3 bit k-quants
IMATRIX_AUTO_TYPES = tuple(t for t in FILE_TYPES if t.startswith(("IQ", "Q2_K", "Q3_K", "TQ")))


@dataclasses.dataclass
class GGUFOptions(Options):
    type: str = option("Q4_K_M", "llama.cpp file type (llama-quantize's names)", choices=FILE_TYPES)
    imatrix: Literal["auto", "on", "off"] = option(
        "auto", "importance matrix from the calibration set (auto: on for IQ*, Q2_K*, Q3_K*, TQ* types)")
    imatrix_file: str | None = option(None, "a llama.cpp imatrix file (.gguf or legacy .dat) to use instead")
    output_tensor_type: str = option("auto", "ggml type of output.weight (auto: llama.cpp's choice)",
                                     choices=("auto",) + TENSOR_TYPES)
    token_embedding_type: str = option("auto", "ggml type of token_embd.weight (auto: llama.cpp's choice)",
                                       choices=("auto",) + TENSOR_TYPES)
    leave_output_tensor: bool = option(False, "keep output.weight unquantized")
    pure: bool = option(False, "use the type for every tensor (no k-quant mixtures)")
    intermediate: Literal["F32", "F16", "BF16"] = option("F16", "float type of the converted file llama.cpp quantizes")
    nthread: int = option(0, "quantization threads (0: all cores)", min=0)
    target_bits: float | None = option(None, "mixed precision: average bits per weight (scales included) of the "
                                             "decoder layers' linears, each one's ggml type from allowed_types",
                                       added=True)
    allowed_types: list[str] = option(["Q2_K", "Q3_K", "Q4_K", "IQ4_NL", "Q5_K", "Q5_0", "Q6_K", "Q8_0"],
                                      "ggml types target_bits chooses from (first wins a tie)", added=True)
    sensitivity: str = option("", "target_bits: a `teeny sensitivity` JSON of this model (default: measured on "
                                  "the calibration data, round-to-nearest)", added=True)


class GGUFQuantizer(Quantizer[GGUFOptions]):
    """llama.cpp GGUF quantization (k-quants, i-quants, legacy) with an importance matrix from teeny calibrators."""

    name = "gguf"
    Options = GGUFOptions

    @classmethod
    def needs_calibration(cls, options: GGUFOptions) -> bool:  # type: ignore[override]
        """Only an importance matrix computed here calibrates (not a float type, an imatrix file, or imatrix off)."""
        return options.type not in FLOAT_TYPES and not options.imatrix_file and wants_imatrix(options)

    def describe(self, options: GGUFOptions) -> dict[str, Any]:
        facts: dict[str, Any] = {"type": options.type}
        if options.target_bits is not None:
            facts.update(target_bits=options.target_bits, allowed_types=options.allowed_types)
        if options.type not in FLOAT_TYPES:
            facts["imatrix"] = "file" if options.imatrix_file else options.imatrix
        return facts

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: GGUFOptions,
                 out_dir: Path) -> Artifact:
        from teeny_gguf.convert import convert_to_gguf
        from teeny_gguf.imatrix import read_imatrix, write_imatrix
        from teeny_gguf.llama_quant import quantize_file
        from teeny_gguf.reader import gguf_stats

        out_dir = Path(out_dir)
        file = f"model-{options.type}.gguf"
        meta: dict[str, Any] = {"method": "gguf", "options": options.to_dict(), "source": source.path,
                                "source_gguf_file": source.gguf_file}
        mode = resolve_imatrix(options, calibration)
        plan, tensor_types = None, None
        if options.target_bits is not None:
            plan, used, tensor_types = mixed_types(source, calibration, options)
        if options.type in FLOAT_TYPES:
            convert_to_gguf(source, out_dir / file, options.type)
            meta["imatrix"] = None
        else:
            with tempfile.TemporaryDirectory(dir=out_dir, prefix=".convert-") as tmp:
                intermediate = float_gguf(source) or convert_to_gguf(
                    source, Path(tmp) / f"model-{options.intermediate}.gguf", options.intermediate)
                imatrix, extra = None, {}
                if mode == "file":
                    imatrix = read_imatrix(options.imatrix_file)  # type: ignore[arg-type]
                    extra["quantize.imatrix.file"] = Path(options.imatrix_file).name  # type: ignore[arg-type]
                elif mode == "computed":
                    assert calibration is not None
                    imatrix = imatrix_for(source, calibration)
                    write_imatrix(imatrix, out_dir / "imatrix.gguf")
                    extra["quantize.imatrix.file"] = "imatrix.gguf"
                if imatrix is not None:
                    if imatrix.datasets:
                        extra["quantize.imatrix.dataset"] = imatrix.datasets[0]
                    extra["quantize.imatrix.entries_count"] = len(imatrix)
                    if imatrix.chunk_count:
                        extra["quantize.imatrix.chunks_count"] = int(imatrix.chunk_count)
                log_lines = quantize_file(
                    intermediate, out_dir / file, options.type, nthread=options.nthread,
                    output_tensor_type=options.output_tensor_type, token_embedding_type=options.token_embedding_type,
                    imatrix_means=imatrix.means() if imatrix is not None else None, pure=options.pure,
                    leave_output_tensor=options.leave_output_tensor, metadata=extra, tensor_types=tensor_types)
                meta["fallback_tensors"] = fallback_count(log_lines)
                meta["imatrix"] = None if imatrix is None else {
                    "from": mode, "entries": len(imatrix), "chunks": imatrix.chunk_count,
                    "chunk_size": imatrix.chunk_size, "datasets": imatrix.datasets,
                    "calibration": calibration.fingerprint() if mode == "computed" and calibration else None}
        if not source.gguf_file:  # a GGUF source's own tokenizer (in the file) is the reference one
            save_tokenizer_beside(source, out_dir)
        meta.update(gguf_stats(out_dir / file))
        meta["bits"] = meta["bits_per_weight"]
        if plan:
            meta.update(mixed_gguf_facts(out_dir, file, plan, tensor_types, used))
        artifact = Artifact(format="gguf", path=out_dir, file=file, meta=meta)
        artifact.save()
        return artifact


def mixed_types(source: ModelSource, calibration: CalibrationSet | None, options: GGUFOptions):
    """``(type per linear (HF names), the sensitivity used, type per GGUF tensor)`` for ``target_bits``."""
    import json

    from teeny_core.arch import spec_for
    from teeny_core.walker import layer_matrices, safetensors_dir
    from teeny_gguf.mixed import plan_types

    if options.type in FLOAT_TYPES:
        raise TeenyError(f"gguf: target_bits needs a quantized type (the tensors it does not plan get that type's "
                         f"choice), not {options.type}")
    path = safetensors_dir(source)
    spec = spec_for(json.loads((path / "config.json").read_text()).get("model_type"))
    shapes, _ = layer_matrices(path)
    plan, used = plan_types(source, calibration, allowed=options.allowed_types, target=options.target_bits,
                            sensitivity=options.sensitivity, shapes=shapes)
    return plan, used, {spec.gguf_name(f"{name}.weight"): t for name, t in plan.items()}


def mixed_gguf_facts(out_dir: Path, file: str, plan: dict[str, str], tensor_types: dict[str, str],
                     used: dict[str, Any]) -> dict[str, Any]:
    """Keep the sensitivity with the artifact; the planned tensors' types and bits per weight as written."""
    from teeny_core.store import write_json
    from teeny_gguf.mixed import layer_linear_bits, type_bits

    write_json(out_dir / "sensitivity.json", used)
    achieved, written = layer_linear_bits(out_dir / file, sorted(tensor_types))
    differ = sorted(n for n, t in tensor_types.items() if written[n] != t)
    if differ:
        raise TeenyError(f"gguf: llama.cpp wrote {differ[0]} as {written[differ[0]]}, not the planned "
                         f"{tensor_types[differ[0]]} ({len(differ)} tensors differ)")
    counts: dict[str, int] = {}
    for t in plan.values():
        counts[t] = counts.get(t, 0) + 1
    return {"bits_plan": dict(sorted(plan.items())), "modules_per_type": counts, "achieved_bits": round(achieved, 4),
            "module_bits": {n: round(type_bits(t), 4) for n, t in sorted(plan.items())},
            "sensitivity_score": used.get("score"), "sensitivity_file": "sensitivity.json"}


def fallback_count(log_lines: list[str]) -> int:
    """Tensors llama.cpp stored in a fallback type (rows not a multiple of the type's block, e.g. 256 for k-quants)."""
    match = re.search(r"(\d+) of \d+ tensor\(s\) required fallback quantization", "".join(log_lines))
    return int(match.group(1)) if match else 0


def float_gguf(source: ModelSource) -> Path | None:
    """The source's GGUF file when it is unquantized (F32/F16/BF16 tensors only): llama.cpp quantizes it as is."""
    from teeny_gguf.reader import gguf_stats

    if not source.gguf_file:
        return None
    path = Path(source.path) / source.gguf_file
    return path if set(gguf_stats(path)["tensor_types"]) <= set(FLOAT_TYPES) else None


def resolve_imatrix(options: GGUFOptions, calibration: CalibrationSet | None) -> str:
    """``"file"``, ``"computed"`` or ``"none"``; a one-line error when the options contradict each other."""
    if options.type in FLOAT_TYPES:
        return "none"
    if options.imatrix_file:
        if options.imatrix == "off":
            raise TeenyError("gguf: imatrix=off contradicts imatrix_file; drop one of them")
        return "file"
    wanted = wants_imatrix(options)
    if wanted and calibration is None:
        if options.imatrix == "on" or options.type in REQUIRES_IMATRIX:
            raise TeenyError(f"gguf: type {options.type} with imatrix={options.imatrix} needs a calibration set "
                             "(choose a calibrator) or -o imatrix_file=PATH")
        return "none"
    return "computed" if wanted else "none"


def wants_imatrix(options: GGUFOptions) -> bool:
    """Whether the options ask for an importance matrix: ``on``, or ``auto`` for a type in IMATRIX_AUTO_TYPES."""
    return options.imatrix == "on" or (options.imatrix == "auto" and options.type in IMATRIX_AUTO_TYPES)


def imatrix_for(source: ModelSource, calibration: CalibrationSet):
    """Compute the importance matrix of ``source`` on ``calibration``, streamed one layer at a time by the core's
    layer walker (the source must be a safetensors model)."""
    from teeny_core.walker import safetensors_dir
    from teeny_gguf.imatrix import compute_imatrix

    return compute_imatrix(safetensors_dir(source), calibration, dataset=calibration.name)


def save_tokenizer_beside(source: ModelSource, out_dir: Path) -> None:
    """Save the HF tokenizer into the artifact directory so the runtime tokenizes exactly like transformers."""
    source.load_tokenizer().save_pretrained(out_dir)
