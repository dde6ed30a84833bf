"""The ``awq`` quantizer component (light at import: torch loads only when ``quantize`` runs)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from teeny_core import Artifact, CalibrationSet, ModelSource, Options, Quantizer, TeenyError, option


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
    @classmethod
    def needs_calibration(cls, options: Options) -> bool:
        return True  # every setting solves against calibration activations

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: Options,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker: one decoder layer (float32) on the device at a time."""
        import json

        import torch

        from teeny_awq.algorithm import AwqSettings, awq_solver, quantize_grouped
        from teeny_awq.export import hf_awq_tensors, packed_bytes, packed_linear_bytes, quantization_config
        from teeny_core.modeling import resolve_device, torch_dtype
        from teeny_core import skipped, stored_dtype
        from teeny_core.walker import ShardWriter, copy_side_files, safetensors_dir, walk

        assert isinstance(options, AwqOptions)
        if options.format == "hf-awq" and options.bits != 4:
            raise TeenyError(f"awq: bits={options.bits} cannot be written as hf-awq (the AutoAWQ GEMM layout is "
                             "4-bit only); use bits=4 or format=hf")
        if calibration is None or not calibration.samples:
            raise TeenyError("awq needs calibration data: pass a CalibrationSet (teeny run and teeny quantize "
                             "build one from the experiment's [calibration] table)")
        if len({len(s) for s in calibration.samples}) != 1:
            raise TeenyError("awq: calibration samples must all have the same length")
        device = resolve_device(options.device)
        settings = AwqSettings(bits=options.bits, group_size=options.group_size, zero_point=options.zero_point,
                               grid=options.grid, duo_scaling=options.duo_scaling, max_shrink=options.max_shrink,
                               clip=options.clip, skip=tuple(options.skip), batch_size=options.batch_size)
        path = safetensors_dir(source)
        shapes, others = linear_shapes(path)
        targets = {n: shape for n, shape in shapes.items() if not skipped(n, settings.skip)}
        _check_shapes(targets, settings, packed=options.format == "hf-awq")
        store_dtype = stored_dtype(path)
        store = torch_dtype(store_dtype)
        packed = options.format == "hf-awq"
        weights: dict[str, int] = {}  # quantized linear -> its packed bytes (the codes themselves are written)

        def keep(name: str, qw) -> dict[str, Any]:
            weights[name] = packed_linear_bytes(qw, options.bits)
            return hf_awq_tensors(qw, options.bits) if packed else {}

        config = json.loads((path / "config.json").read_text())
        tied = bool(config.get("tie_word_embeddings", False))
        head = "lm_head" in targets

        def outside(key: str, tensor):
            if not head or key != ("model.embed_tokens.weight" if tied else "lm_head.weight"):
                return None
            qw = quantize_grouped(tensor.float(), settings.bits, settings.group_size, settings.zero_point)
            tensors = {f"lm_head.{k}": v for k, v in keep("lm_head", qw).items()} or \
                {"lm_head.weight": qw.weight().to(store)}
            return {key: tensor.to(store), **tensors} if tied else tensors

        out_dir = Path(out_dir)
        writer = ShardWriter(out_dir)
        copy_side_files(path, out_dir)  # first: a source without a tokenizer fails before any work
        facts = walk(path, awq_solver(settings, keep), writer, calibration_ids=calibration.tensor(),
                     batch_size=settings.batch_size, device=device, compute_dtype="float32",
                     store_dtype=store_dtype, outside=outside)
        writer.close()
        quantized = sorted(weights)
        record: dict[str, Any] = {"method": "awq", **options.to_dict(), "device": device,
                                  "stored_dtype": store_dtype, "quantized_layers": quantized,
                                  "calibration": calibration.fingerprint()}
        cfg = facts["config"].to_dict()
        cfg.pop("torch_dtype", None)
        cfg["dtype"] = store_dtype
        if head and tied:
            cfg["tie_word_embeddings"] = False
        if packed:
            not_converted = sorted((set(shapes) - set(weights)) | others)
            cfg["quantization_config"] = quantization_config(options.bits, options.group_size, options.zero_point,
                                                             not_converted, lm_head=head)
        else:
            cfg["teeny_quantization"] = record
        (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        n_params = facts["params"] + (shapes["lm_head"][0] * shapes["lm_head"][1] if head and tied else 0)
        size = packed_bytes(n_params, {n: shapes[n] for n in weights}, sum(weights.values()),
                            torch.finfo(store).bits // 8)
        meta = {**record, "packed_bytes": size, "bits_per_weight": 8 * size / n_params}
        artifact = Artifact(format=options.format, path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: Options) -> dict[str, Any]:
        assert isinstance(options, AwqOptions)
        return {"bits": options.bits, "granularity": f"g{options.group_size}",
                "scheme": "asym" if options.zero_point else "sym", "clip": options.clip}


def linear_shapes(path) -> tuple[dict[str, tuple[int, int]], set[str]]:
    """From the shard headers: qualified name -> (out, in) of every linear AWQ may quantize (the spec's dense
    linears of each decoder layer, and ``lm_head``), and the other matrices inside the layers, which stay in
    full precision (a mixture-of-experts router, shared-expert gate, and routed experts by their module)."""
    import json

    from teeny_core.arch import spec_for
    from teeny_core.walker import ShardReader

    config = json.loads((Path(path) / "config.json").read_text())
    spec = spec_for(config.get("model_type"))
    reader = ShardReader(path)
    out, others = {}, set()
    for index in range(config["num_hidden_layers"]):
        prefix = spec.layer_prefix(index)
        for name in spec.linears():
            key = f"{prefix}.{name}.weight"
            if key in reader.files:
                out[key[:-len(".weight")]] = tuple(reader.shape(key))
        for key in reader.keys(f"{prefix}."):
            module = key[:-len(".weight")]
            if key.endswith(".weight") and module not in out and len(reader.shape(key)) == 2:
                experts = f"{prefix}.{spec.experts.module}." if spec.experts else None
                others.add(f"{experts[:-1]}" if experts and key.startswith(experts) else module)
    head = f"{spec.lm_head}.weight" if f"{spec.lm_head}.weight" in reader.files else f"{spec.embed}.weight"
    out[spec.lm_head] = tuple(reader.shape(head))
    return out, others


def _check_shapes(linears: dict[str, tuple[int, int]], settings, packed: bool) -> None:
    """Refuse, before any work, a linear the group size does not divide or (hf-awq) that cannot be packed."""
    for name, (out_features, in_features) in linears.items():
        if in_features % settings.group_size:
            raise TeenyError(f"group_size={settings.group_size} does not divide the input width {in_features} of "
                             f"{name}; use a group size that divides every quantized layer's width")
    if packed:  # hf-awq packs eight output channels per int32
        for name, (out_features, _) in linears.items():
            if out_features % 8:
                raise TeenyError(f"awq: {name} has {out_features} output features, not a multiple of 8, so it "
                                 "cannot be packed as hf-awq; add it to skip or use format=hf")
