"""The ``w8a8`` quantizer component (light at import: torch loads only when ``quantize`` runs)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from teeny_core import Artifact, CalibrationSet, ModelSource, Options, Quantizer, TeenyError, option


@dataclasses.dataclass
class W8A8Options(Options):
    weights: Literal["rtn", "gptq"] = option("rtn", "int8 weights per output channel: rounded, or solved with GPTQ "
                                             "(needs teeny-gptq)")
    activations: Literal["dynamic", "static"] = option(
        "dynamic", "int8 input activations: per token at run time, or one calibrated scale per tensor")
    smooth: bool = option(True, "SmoothQuant: migrate activation outliers into the weights before rounding")
    alpha: str = option("0.5", "SmoothQuant migration strength in [0, 1], or auto (searched per layer group)")
    format: Literal["int8", "fp8"] = option("int8", "int8 (int-quantized) or fp8 E4M3 (float-quantized, needs a "
                                            "GPU with FP8 kernels)")
    device: str = option("auto", "where layers are processed: auto (cuda when available), cpu, cuda, cuda:N")
    batch_size: int = option(8, "calibration samples per forward pass", min=1)


def parse_alpha(text: str) -> float | str:
    """``alpha`` as a float in [0, 1] or ``"auto"``; a one-line error otherwise."""
    if str(text).strip().lower() == "auto":
        return "auto"
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 <= value <= 1.0:
        raise TeenyError(f"w8a8: alpha={text!r} is not a number in [0, 1] or 'auto'")
    return value


def compressed_tensors_scheme(options: W8A8Options):
    """The compressed-tensors QuantizationScheme these options write (targets every Linear)."""
    from compressed_tensors.quantization import QuantizationArgs, QuantizationScheme

    kind = "float" if options.format == "fp8" else "int"
    dynamic = options.activations == "dynamic"
    return QuantizationScheme(
        targets=["Linear"],
        weights=QuantizationArgs(num_bits=8, type=kind, strategy="channel", symmetric=True, dynamic=False),
        input_activations=QuantizationArgs(num_bits=8, type=kind, strategy="token" if dynamic else "tensor",
                                           symmetric=True, dynamic=dynamic))


class W8A8Quantizer(Quantizer[W8A8Options]):
    """int8 weights (per channel) and int8 activations (per token or per tensor), SmoothQuant, written as
    compressed-tensors and executed with int8 matrix products."""

    name = "w8a8"
    Options = W8A8Options
    @classmethod
    def needs_calibration(cls, options: Options) -> bool:
        return True  # every setting solves against calibration activations

    def check(self, options: W8A8Options, device: str) -> float | str | None:
        """Every refusal before any work: the alpha, FP8 without a kernel, GPTQ without teeny-gptq."""
        alpha = parse_alpha(options.alpha) if options.smooth else None
        if options.format == "fp8":
            from teeny_core.int8 import fp8_device_problem

            problem = fp8_device_problem(device)
            if problem:
                raise TeenyError(f"w8a8: format=fp8 refused: {problem} (FP8 is never simulated); use format=int8")
            if options.weights == "gptq":
                raise TeenyError("w8a8: weights=gptq solves an int8 grid; use weights=rtn with format=fp8")
        if options.weights == "gptq":
            try:
                import teeny_gptq.solver  # noqa: F401
            except ImportError:
                raise TeenyError("w8a8: weights=gptq needs the teeny-gptq plugin installed "
                                 "(pip install teeny-w8a8[gptq]); use weights=rtn") from None
        return alpha

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: W8A8Options,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker: one decoder layer (float32) in memory at a time."""
        from compressed_tensors.compressors import BaseCompressor
        from compressed_tensors.quantization import QuantizationConfig

        from teeny_core.arch import spec_for
        from teeny_core import stored_dtype, write_checkpoint_config
        from teeny_core.modeling import resolve_device
        from teeny_core.walker import ShardWriter, copy_side_files, safetensors_dir, walk
        from teeny_w8a8.smooth import SmoothSettings, w8a8_solver

        device = resolve_device(options.device)
        alpha = self.check(options, device)
        if calibration is None or not calibration.samples:
            raise TeenyError("w8a8 needs calibration data: pass a CalibrationSet (teeny run and teeny quantize "
                             "build one from the experiment's [calibration] table)")
        path = safetensors_dir(source)
        config = json.loads((path / "config.json").read_text())
        spec = spec_for(config.get("model_type"))
        if spec.experts:
            raise TeenyError(f"w8a8: mixture-of-experts layers ({config.get('model_type')}) are not supported; "
                             "use a dense model")
        store_dtype = stored_dtype(path)
        scheme = compressed_tensors_scheme(options)
        compression = "float-quantized" if options.format == "fp8" else "int-quantized"
        compressor = BaseCompressor.get_value_from_registry(compression)
        written: dict[str, int] = {}

        def on_linear(name: str, codes, scale, input_scale) -> dict[str, Any]:
            import torch

            if options.format == "fp8":  # E4M3 weights, one scale per channel (448: the largest finite value)
                weight = codes.float() * scale
                scale = weight.abs().amax(1, keepdim=True).clamp_min(1e-12) / 448.0
            state = {"weight": codes.float() * scale, "weight_scale": scale.float()}
            if input_scale is not None:
                state["input_scale"] = torch.tensor([input_scale], dtype=torch.float32)
            tensors = compressor.compress(state, scheme)
            written[name] = sum(t.numel() * t.element_size() for t in tensors.values())
            return tensors

        gptq_settings = None
        if options.weights == "gptq":
            from teeny_gptq.solver import GPTQSettings

            gptq_settings = GPTQSettings(bits=8, group_size=-1, sym=True, batch_size=options.batch_size)
        report: dict[str, Any] = {}
        settings = SmoothSettings(alpha=alpha, static=options.activations == "static")
        out_dir = Path(out_dir)
        writer = ShardWriter(out_dir)
        copy_side_files(path, out_dir)  # first: a source without a tokenizer fails before any work
        facts = walk(path, w8a8_solver(settings, options.weights, on_linear, report, gptq_settings), writer,
                     calibration_ids=calibration.tensor(), batch_size=options.batch_size, device=device,
                     compute_dtype="float32", store_dtype=store_dtype)
        writer.close()
        quant_config = QuantizationConfig(config_groups={"group_0": scheme}, format=compression,
                                          ignore=[spec.lm_head], quantization_status="compressed")
        record = {"method": "w8a8", **options.to_dict(), "stored_dtype": store_dtype, "device": device,
                  "quantized_layers": sorted(written), "calibration": calibration.fingerprint(),
                  "smoothing": report}
        write_checkpoint_config(facts["config"], None, out_dir, quant_config.model_dump(mode="json"), store_dtype,
                                extra_config={"teeny_quantization": record})
        (out_dir / "quantize_config.json").unlink()  # GPTQ's side file: not part of a compressed-tensors checkpoint
        packed = writer.total
        meta = {**record, "scheme": "fp8" if options.format == "fp8" else "int8", "activations": options.activations,
                "packed_bytes": packed, "bits_per_weight": 8 * packed / facts["params"]}
        artifact = Artifact(format="compressed-tensors", path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: W8A8Options) -> dict[str, Any]:
        return {"bits": 8, "activations": options.activations, "weights": options.weights,
                "alpha": options.alpha if options.smooth else "off", "format": options.format}
