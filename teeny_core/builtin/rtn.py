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


class RTNQuantizer(Quantizer):
    """Round-to-nearest: integer weights per tensor, channel or group (stored dequantized), or a fp16/bf16 cast."""

    name = "rtn"
    Options = RTNOptions

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: Options,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker: one decoder layer in memory at a time."""
        import json

        from teeny_core.modeling import linear_layers, torch_dtype
        from teeny_core.quant import dequantize_weight, quantize_weight
        from teeny_core.walker import ShardWriter, Solved, copy_generation_config, safetensors_dir, walk

        assert isinstance(options, RTNOptions)
        dtype = options.dtype
        if options.bits == 16 and dtype == "auto":
            dtype = "float16"
        store_dtype = dtype if dtype != "auto" else _source_dtype(source)
        store = torch_dtype(store_dtype)
        path = safetensors_dir(source)
        config = json.loads((path / "config.json").read_text())
        untie = options.bits < 16 and config.get("tie_word_embeddings", False) and not skipped("lm_head", options.skip)
        quantized: dict[str, tuple[int, int]] = {}
        scale_count = 0

        def rounded(name: str, weight):
            nonlocal scale_count
            q, scale, zero = quantize_weight(weight, options.bits, options.scheme, options.granularity,
                                             options.group_size)
            quantized[name] = tuple(weight.shape)
            scale_count += scale.numel()
            return dequantize_weight(q, scale, zero)

        def solve(work) -> Solved:
            if options.bits < 16:
                for name, linear in linear_layers(work.layer, f"{work.prefix}.").items():
                    if not skipped(name, options.skip):
                        linear.weight.data.copy_(rounded(name, linear.weight.data))
            return Solved()

        def outside(key: str, tensor):
            if options.bits == 16 or not key.endswith(".weight"):
                return None
            if untie and key == "model.embed_tokens.weight":
                return {key: tensor.to(store), "lm_head.weight": rounded("lm_head", tensor.float()).to(store)}
            if key == "lm_head.weight" and not skipped("lm_head", options.skip):
                return {key: rounded("lm_head", tensor.float()).to(store)}
            return None

        out_dir = Path(out_dir)
        writer = ShardWriter(out_dir)
        facts = walk(path, solve, writer, store_dtype=store_dtype, outside=outside)
        writer.close()
        record = {"method": "rtn", **options.to_dict(), "stored_dtype": store_dtype,
                  "quantized_layers": sorted(quantized)}
        cfg = facts["config"]
        if untie:
            cfg.tie_word_embeddings = False
        cfg.save_pretrained(out_dir)
        cfg_path = out_dir / "config.json"
        saved = json.loads(cfg_path.read_text())
        saved.update({"dtype": store_dtype, "teeny_quantization": record})
        cfg_path.write_text(json.dumps(saved, indent=2, sort_keys=True))
        copy_generation_config(path, out_dir)
        source.load_tokenizer().save_pretrained(out_dir)
        n_params = facts["params"] + (facts["config"].hidden_size * facts["config"].vocab_size if untie else 0)
        if quantized:
            element = torch_dtype(store_dtype).itemsize
            packed = (writer.total + scale_count * 4
                      - sum(r * c * element - r * c * options.bits // 8 for r, c in quantized.values()))
        else:
            packed = n_params * 2
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
