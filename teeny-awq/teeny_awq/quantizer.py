"""The ``awq`` quantizer component (light at import: torch loads only when ``quantize`` runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from teeny_core.errors import TeenyError
from teeny_core.options import Options, option
from teeny_core.types import Artifact, CalibrationSet, ModelSource, Quantizer


@dataclasses.dataclass
class AwqOptions(Options):
    bits: int = option(4, "bits per weight (hf-awq checkpoints hold 4 only; other widths need format=hf)",
                       min=2, max=8)
    group_size: int = option(128, "input columns sharing one scale and zero; must divide every layer's width", min=1)
    zero_point: bool = option(True, "asymmetric with a per-group zero point (false: symmetric, zero at 2**(bits-1))")
    grid: int = option(20, "points of the scale-exponent grid (and clipping step 1/grid)", min=1, max=1000)
    duo_scaling: bool = option(True, "scales x_mean**a / w_mean**(1-a) (false: x_mean**a alone)")
    max_shrink: float = option(0.5, "largest fraction of a group's range the clipping search may cut", min=0.0, max=0.95)
    clip: bool = option(True, "search a clipping ratio per output channel and group")
    skip: list[str] = option(["lm_head"], "glob patterns of linear layers kept in full precision")
    device: str = option("auto", "where layers are processed: auto (cuda when available), cpu, cuda, cuda:N")
    batch_size: int = option(8, "calibration samples per forward pass (lower it to save memory)", min=1)
    format: Literal["hf-awq", "hf"] = option(
        "hf-awq", "hf-awq: packed AutoAWQ GEMM checkpoint (4-bit); hf: dequantized safetensors (any bits)")


class AwqQuantizer(Quantizer):
    """Activation-aware weight quantization: scales salient input channels, clips, rounds (AutoAWQ GEMM export)."""

    name = "awq"
    Options = AwqOptions
    needs_calibration = True

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: Options,
                 out_dir: Path) -> Artifact:
        import torch

        from teeny_awq.algorithm import AwqSettings, quantize_model
        from teeny_awq.export import packed_bytes, quantization_config, write_hf_awq
        from teeny_core.builtin.rtn import _source_dtype
        from teeny_core.modeling import resolve_device, save_hf_model, torch_dtype

        assert isinstance(options, AwqOptions)
        if options.format == "hf-awq" and options.bits != 4:
            raise TeenyError(f"awq: bits={options.bits} cannot be written as hf-awq (the AutoAWQ GEMM layout is "
                             "4-bit only); use bits=4 or format=hf")
        if calibration is None or not calibration.samples:
            raise TeenyError("awq needs calibration data; give the variant a calibrator (e.g. calibrator = \"code\")")
        if len({len(s) for s in calibration.samples}) != 1:
            raise TeenyError("awq: calibration samples must all have the same length")
        device = resolve_device(options.device)
        settings = AwqSettings(bits=options.bits, group_size=options.group_size, zero_point=options.zero_point,
                               grid=options.grid, duo_scaling=options.duo_scaling, max_shrink=options.max_shrink,
                               clip=options.clip, skip=tuple(options.skip), batch_size=options.batch_size)
        model, tokenizer = source.load(dtype="float32", device="cpu")
        if source.gguf_file:  # dequantized GGUF weights are plain floats now; let transformers save them
            model.hf_quantizer = None
            model.config.__dict__.pop("quantization_config", None)
        if options.format == "hf-awq":
            _check_packable(model, settings)
        weights = quantize_model(model, calibration.tensor(), settings, device)
        store_dtype = _source_dtype(source)
        quantized = sorted(weights)
        not_converted = sorted(n for n, m in model.named_modules()
                               if isinstance(m, torch.nn.Linear) and n not in weights)
        record: dict[str, Any] = {"method": "awq", **options.to_dict(), "device": device,
                                  "stored_dtype": store_dtype, "quantized_layers": quantized,
                                  "calibration": calibration.fingerprint()}
        out_dir = Path(out_dir)
        if options.format == "hf-awq":
            qconfig = quantization_config(options.bits, options.group_size, options.zero_point, not_converted)
            write_hf_awq(model, tokenizer, weights, qconfig, store_dtype, out_dir)
        else:
            if store_dtype != "float32":
                model.to(torch_dtype(store_dtype))
            save_hf_model(model, tokenizer, out_dir, extra_config={"teeny_quantization": record})
        n_params = sum(p.numel() for p in model.parameters())
        packed = packed_bytes(model, weights, options.bits, torch.finfo(torch_dtype(store_dtype)).bits // 8)
        meta = {**record, "packed_bytes": packed, "bits_per_weight": 8 * packed / n_params}
        artifact = Artifact(format=options.format, path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: Options) -> dict[str, Any]:
        assert isinstance(options, AwqOptions)
        return {"bits": options.bits, "granularity": f"g{options.group_size}",
                "scheme": "asym" if options.zero_point else "sym", "clip": options.clip}


def _check_packable(model, settings) -> None:
    """hf-awq packs eight output channels per int32: refuse, before any work, a layer that cannot be packed."""
    from teeny_awq.algorithm import is_skipped
    from teeny_core.modeling import linear_layers

    for name, linear in linear_layers(model).items():
        if not is_skipped(name, settings.skip) and linear.out_features % 8:
            raise TeenyError(f"awq: {name} has {linear.out_features} output features, not a multiple of 8, so it "
                             "cannot be packed as hf-awq; add it to skip or use format=hf")
