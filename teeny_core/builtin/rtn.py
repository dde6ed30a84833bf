"""Built-in ``rtn`` quantizer: round-to-nearest weights (2..8 bits) or a plain fp16/bf16 cast."""

from __future__ import annotations

import dataclasses
import fnmatch
from pathlib import Path
from typing import Any, Literal

from teeny_core import hookimpl
from teeny_core.options import Options, option
from teeny_core.types import Artifact, CalibrationSet, ModelSource, Quantizer


@dataclasses.dataclass
class RTNOptions(Options):
    bits: int = option(4, "bits per weight: 2..8 quantize to integers; 16 only casts to `dtype`",
                       choices=(2, 3, 4, 5, 6, 7, 8, 16))
    scheme: Literal["sym", "asym"] = option("asym", "symmetric (zero fixed at the middle) or asymmetric")
    granularity: Literal["tensor", "channel", "group"] = option("group", "one scale per tensor, row or group")
    group_size: int = option(128, "input columns per group (granularity=group)", min=1)
    skip: list[str] = option(["lm_head"], "glob patterns of linear layers kept in full precision")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = option(
        "auto", "dtype the artifact stores (auto: the source's; bits=16 defaults to float16)")


def skipped(name: str, patterns: list[str]) -> bool:
    """Whether a module name matches one of the skip glob patterns (or equals one)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def packed_bytes(model, quantized: dict[str, tuple[int, int]], bits: int, scale_count: int) -> int:
    """Bytes a packed deployment needs: quantized weights at ``bits``, fp16 scales and zeros, the rest as stored."""
    total = 0
    for name, p in model.named_parameters():
        module = name.rsplit(".", 1)[0]
        if module in quantized and name.endswith("weight"):
            rows, cols = quantized[module]
            total += rows * cols * bits // 8
        else:
            total += p.numel() * p.element_size()
    return total + scale_count * 4  # fp16 scale + fp16 zero per group


class RTNQuantizer(Quantizer):
    """Round-to-nearest: integer weights per tensor, channel or group (stored dequantized), or a fp16/bf16 cast."""

    name = "rtn"
    Options = RTNOptions

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: Options,
                 out_dir: Path) -> Artifact:
        import torch

        from teeny_core.modeling import linear_layers, save_hf_model, torch_dtype
        from teeny_core.quant import dequantize_weight, quantize_weight

        assert isinstance(options, RTNOptions)
        dtype = options.dtype
        if options.bits == 16 and dtype == "auto":
            dtype = "float16"
        model, tokenizer = source.load(dtype="float32")
        quantized: dict[str, tuple[int, int]] = {}
        scale_count = 0
        if options.bits < 16:
            if getattr(model.config, "tie_word_embeddings", False) and not skipped("lm_head", options.skip):
                model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
                model.config.tie_word_embeddings = False
            with torch.no_grad():
                for name, linear in linear_layers(model).items():
                    if skipped(name, options.skip):
                        continue
                    q, scale, zero = quantize_weight(linear.weight, options.bits, options.scheme,
                                                     options.granularity, options.group_size)
                    linear.weight.copy_(dequantize_weight(q, scale, zero))
                    quantized[name] = tuple(linear.weight.shape)
                    scale_count += scale.numel()
        store_dtype = dtype if dtype != "auto" else _source_dtype(source)
        if store_dtype != "float32":
            model.to(torch_dtype(store_dtype))
        record = {"method": "rtn", **options.to_dict(), "stored_dtype": store_dtype,
                  "quantized_layers": sorted(quantized)}
        save_hf_model(model, tokenizer, out_dir, extra_config={"teeny_quantization": record})
        bits = options.bits if options.bits < 16 else 16
        n_params = sum(p.numel() for p in model.parameters())
        packed = packed_bytes(model, quantized, bits, scale_count) if quantized else n_params * 2
        meta: dict[str, Any] = {**record, "packed_bytes": packed, "bits_per_weight": 8 * packed / n_params}
        artifact = Artifact(format="hf", path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: Options) -> dict[str, Any]:
        assert isinstance(options, RTNOptions)
        if options.bits == 16:
            return {"bits": 16, "dtype": options.dtype if options.dtype != "auto" else "float16"}
        gran = f"g{options.group_size}" if options.granularity == "group" else options.granularity
        return {"bits": options.bits, "scheme": options.scheme, "granularity": gran}


def _source_dtype(source: ModelSource) -> str:
    import json

    if source.gguf_file:
        return "float32"
    cfg = Path(source.path) / "config.json"
    if cfg.exists():
        data = json.loads(cfg.read_text())
        found = data.get("dtype") or data.get("torch_dtype")
        if found in ("float32", "float16", "bfloat16"):
            return found
    return "float32"


@hookimpl
def teeny_register_quantizers(register):
    register(RTNQuantizer)
