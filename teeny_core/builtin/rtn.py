"""Built-in ``rtn`` quantizer: round-to-nearest weights (2..8 bits) or a plain fp16/bf16 cast.

Integer grids that a GPTQ checkpoint can hold (2, 3, 4 or 8 bits per channel or group) are written as
``hf-gptq`` (``format="auto"``), so runtimes execute them packed (an asymmetric zero point of 0, which GPTQ v1
cannot store, lifts its group's grid one step); other grids are stored dequantized (``hf``).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import re
from pathlib import Path
from typing import Any, Literal

from teeny_core import hookimpl
from teeny_core.errors import TeenyError
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
    format: Literal["auto", "hf-gptq", "hf"] = option(
        "auto", "auto: hf-gptq (packed codes) when the grid fits a GPTQ checkpoint, else hf (dequantized floats)")


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
        from teeny_core.formats.gptq import BITS as GPTQ_BITS
        from teeny_core.quant import dequantize_weight, quantize_weight, quantize_with

        assert isinstance(options, RTNOptions)
        dtype = options.dtype
        if options.bits == 16 and dtype == "auto":
            dtype = "float16"
        model, tokenizer = source.load(dtype="float32")
        quantized: dict[str, tuple[int, int]] = {}
        codes: dict[str, tuple[Any, Any, Any]] = {}
        scale_count = clamped = 0
        gptq_grid = options.format != "hf" and options.bits in GPTQ_BITS and options.granularity != "tensor"
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
                    if gptq_grid and int(zero.min()) < 1:  # GPTQ v1 stores zero - 1: lift the grid one step
                        clamped += int((zero < 1).sum())
                        zero = zero.clamp(min=1)
                        q = quantize_with(linear.weight, scale, zero, options.bits)
                    linear.weight.copy_(dequantize_weight(q, scale, zero))
                    quantized[name] = tuple(linear.weight.shape)
                    codes[name] = (q, scale, zero)
                    scale_count += scale.numel()
        store_dtype = dtype if dtype != "auto" else _source_dtype(source)
        record = {"method": "rtn", **options.to_dict(), "stored_dtype": store_dtype,
                  "quantized_layers": sorted(quantized), "zero_points_lifted": clamped}
        why_not = gptq_misfit(options, codes)
        if options.format == "hf-gptq" and why_not:
            raise TeenyError(f"rtn: format='hf-gptq' cannot hold this grid: {why_not}; use format='hf' or 'auto'")
        fmt = "hf-gptq" if options.format != "hf" and not why_not else "hf"
        if fmt == "hf-gptq":
            write_gptq(model, tokenizer, codes, options, out_dir, store_dtype, record)
        else:
            if store_dtype != "float32":
                model.to(torch_dtype(store_dtype))
            save_hf_model(model, tokenizer, out_dir, extra_config={"teeny_quantization": record})
        if codes and why_not:
            record["hf_gptq_misfit"] = why_not
        bits = options.bits if options.bits < 16 else 16
        n_params = sum(p.numel() for p in model.parameters())
        packed = packed_bytes(model, quantized, bits, scale_count) if quantized else n_params * 2
        meta: dict[str, Any] = {**record, "packed_bytes": packed, "bits_per_weight": 8 * packed / n_params}
        artifact = Artifact(format=fmt, path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: Options) -> dict[str, Any]:
        assert isinstance(options, RTNOptions)
        if options.bits == 16:
            return {"bits": 16, "dtype": options.dtype if options.dtype != "auto" else "float16"}
        gran = f"g{options.group_size}" if options.granularity == "group" else options.granularity
        return {"bits": options.bits, "scheme": options.scheme, "granularity": gran}


def gptq_misfit(options: RTNOptions, codes: dict[str, tuple[Any, Any, Any]]) -> str:
    """Why these codes cannot be an hf-gptq checkpoint (v1 zero points), or "" when they can."""
    from teeny_core.formats.gptq import BITS

    if not codes:
        return "no layer was quantized"
    if options.bits not in BITS:
        return f"bits={options.bits} is not one of {BITS}"
    if options.granularity == "tensor":
        return "granularity='tensor' (GPTQ checkpoints hold per-channel or per-group scales)"
    need = 32 if options.bits == 3 else 32 // options.bits
    for name, (q, _, zero) in codes.items():
        if q.shape[1] % need or (q.shape[0] * options.bits) % 32:
            return f"{name} has shape {list(q.shape)}, not packable at {options.bits} bits"
        if int(zero.min()) < 1:
            return f"{name} has a zero point of 0 (GPTQ v1 stores zero - 1)"
    return ""


def write_gptq(model, tokenizer, codes: dict[str, tuple[Any, Any, Any]], options: RTNOptions, out_dir: Path,
               store_dtype: str, record: dict[str, Any]) -> None:
    """Write the RTN codes as a GPTQ (v1) checkpoint: what GPTQ runtimes (and transformers, vLLM) load."""
    from teeny_core.formats.checkpoint import write_checkpoint
    from teeny_core.formats.gptq import default_g_idx, pack_linear
    from teeny_core.modeling import linear_layers

    group = options.group_size if options.granularity == "group" else -1
    packed = {name: pack_linear(q, scale, zero, default_g_idx(q.shape[1], group), options.bits)
              for name, (q, scale, zero) in codes.items()}
    config = {"quant_method": "gptq", "bits": options.bits, "group_size": group, "desc_act": False,
              "sym": options.scheme == "sym", "checkpoint_format": "gptq", "pack_dtype": "int32", "lm_head": False,
              "meta": {"quantizer": ["teeny-rtn"]}}
    inner = [name for name in linear_layers(model) if name not in codes and name != "lm_head"]
    if inner:  # GPTQModel / vLLM "dynamic" rules: a leading "-:" leaves matching modules unquantized
        config["dynamic"] = {f"-:^{re.escape(name)}$": {} for name in inner}
    write_checkpoint(model, tokenizer, packed, out_dir, config, store_dtype)
    cfg_path = out_dir / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["teeny_quantization"] = record
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True))


def _source_dtype(source: ModelSource) -> str:
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
