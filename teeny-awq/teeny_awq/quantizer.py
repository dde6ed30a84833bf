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
    format: Literal["hf-awq", "hf", "hf-gptq"] = option(
        "hf-awq", "hf-awq: packed AutoAWQ GEMM checkpoint (4-bit); hf: dequantized safetensors (any bits); "
                  "hf-gptq: a GPTQ checkpoint (2, 3, 4 or 8 bits, per-module bits as dynamic rules)")
    target_bits: float | None = option(None, "mixed precision (format=hf-gptq): average stored bits per quantized "
                                             "weight (scales and zero points included), each linear's bits from "
                                             "allowed_bits", added=True)
    allowed_bits: list[int] = option([2, 3, 4, 8], "bit-widths target_bits chooses from", added=True)
    sensitivity: str = option("", "target_bits: a `teeny sensitivity` JSON of this model (default: measured on "
                                  "the calibration data, method rtn on AWQ's grid)", added=True)


class AwqQuantizer(Quantizer[AwqOptions]):
    """Activation-aware weight quantization: scales salient input channels, clips, rounds (AutoAWQ GEMM export)."""

    name = "awq"
    Options = AwqOptions
    @classmethod
    def needs_calibration(cls, options: Options) -> bool:
        return True  # every setting solves against calibration activations

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: AwqOptions,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker: one decoder layer (float32) on the device at a time."""
        import json

        import torch

        from teeny_awq.algorithm import AwqSettings, awq_solver, quantize_grouped
        from teeny_awq.export import hf_awq_tensors, packed_bytes, packed_linear_bytes, quantization_config
        from teeny_core.formats.gptq import default_g_idx, pack_linear
        from teeny_core.modeling import resolve_device, torch_dtype
        from teeny_core import lm_head_outside, skipped, stored_dtype, write_checkpoint_config
        from teeny_core.arch import spec_for
        from teeny_core.sensitivity import gptq_quantization_config, mixed_facts
        from teeny_core.walker import ShardWriter, copy_side_files, safetensors_dir, walk

        if options.format == "hf-awq" and options.bits != 4:
            raise TeenyError(f"awq: bits={options.bits} cannot be written as hf-awq (the AutoAWQ GEMM layout is "
                             "4-bit only); use bits=4 or format=hf")
        if options.target_bits is not None and options.format != "hf-gptq":
            raise TeenyError(f"awq: target_bits gives linears different bit-widths, written as a GPTQ checkpoint "
                             f"(format={options.format!r} holds one); add -o format=hf-gptq")
        if calibration is None or not calibration.samples:
            raise TeenyError("awq needs calibration data: pass a CalibrationSet (teeny run and teeny quantize "
                             "build one from the experiment's [calibration] table)")
        if len({len(s) for s in calibration.samples}) != 1:
            raise TeenyError("awq: calibration samples must all have the same length")
        device = resolve_device(options.device)
        gptq = options.format == "hf-gptq"
        settings = AwqSettings(bits=options.bits, group_size=options.group_size, zero_point=options.zero_point,
                               grid=options.grid, duo_scaling=options.duo_scaling, max_shrink=options.max_shrink,
                               clip=options.clip, skip=tuple(options.skip), batch_size=options.batch_size,
                               lowest_zero=1 if gptq else 0)
        path = safetensors_dir(source)
        shapes, others = linear_shapes(path)
        targets = {n: shape for n, shape in shapes.items() if not skipped(n, settings.skip)}
        _check_shapes(targets, settings, packed=options.format == "hf-awq")
        if gptq:
            _check_gptq_shapes(targets, options)
        plan, used = _mixed_plan(source, calibration, options, targets) if options.target_bits is not None else \
            (None, None)
        settings.module_bits = plan or {}
        store_dtype = stored_dtype(path)
        store = torch_dtype(store_dtype)
        packed = options.format != "hf"
        weights: dict[str, int] = {}  # quantized linear -> its packed bytes (the codes themselves are written)

        def keep(name: str, qw) -> dict[str, Any]:
            bits = settings.bits_of(name)
            weights[name] = packed_linear_bytes(qw, bits)
            if gptq:
                return pack_linear(qw.q, qw.scale, qw.zero, default_g_idx(qw.q.shape[1], options.group_size), bits)
            return hf_awq_tensors(qw, bits) if packed else {}

        config = json.loads((path / "config.json").read_text())
        tied = bool(config.get("tie_word_embeddings", False))
        head = "lm_head" in targets

        def round_head(weight):
            qw = quantize_grouped(weight, settings.bits, settings.group_size, settings.zero_point,
                                  lowest_zero=settings.lowest_zero)
            return {f"lm_head.{k}": v for k, v in keep("lm_head", qw).items()} or \
                {"lm_head.weight": qw.weight().to(store)}

        outside = lm_head_outside(spec_for(config.get("model_type")), config, round_head, store) if head else None

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
        if head and tied:
            facts["config"].tie_word_embeddings = False
        if gptq:
            quant_config = gptq_quantization_config(
                options.bits, options.group_size, not options.zero_point, "teeny-awq", lm_head=head,
                unquantized=(set(shapes) - set(weights) - {"lm_head"}) | others, plan=plan)
            write_checkpoint_config(facts["config"], None, out_dir, quant_config, store_dtype,
                                    extra_config={"teeny_quantization": record})
        else:
            cfg = facts["config"].to_dict()
            cfg.pop("torch_dtype", None)
            cfg["dtype"] = store_dtype
            if packed:
                not_converted = sorted((set(shapes) - set(weights)) | others)
                cfg["quantization_config"] = quantization_config(options.bits, options.group_size,
                                                                 options.zero_point, not_converted, lm_head=head)
            else:
                cfg["teeny_quantization"] = record
            (out_dir / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str))
        n_params = facts["params"] + (shapes["lm_head"][0] * shapes["lm_head"][1] if head and tied else 0)
        size = packed_bytes(n_params, {n: shapes[n] for n in weights}, sum(weights.values()),
                            torch.finfo(store).bits // 8)
        meta = {**record, "packed_bytes": size, "bits_per_weight": 8 * size / n_params}
        if plan:
            meta.update(mixed_facts(out_dir, plan, targets, used, options.group_size))
        artifact = Artifact(format=options.format, path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: AwqOptions) -> dict[str, Any]:
        bits: dict[str, Any] = {"bits": options.bits} if options.target_bits is None else \
            {"target_bits": options.target_bits, "allowed_bits": options.allowed_bits}
        return {**bits, "granularity": f"g{options.group_size}",
                "scheme": "asym" if options.zero_point else "sym", "clip": options.clip}


def _mixed_plan(source: ModelSource, calibration: CalibrationSet | None, options: AwqOptions,
                targets: dict[str, tuple[int, int]]):
    """Per-linear bits for ``target_bits`` (see :func:`teeny_core.sensitivity.mixed_precision`); measured on the
    fly with round-to-nearest on AWQ's grid (AWQ's scale search is per group of linears, not per linear)."""
    from teeny_core.formats.gptq import BITS
    from teeny_core.sensitivity import mixed_precision

    return mixed_precision(source, calibration, method="rtn", shapes=targets, allowed=options.allowed_bits,
                           target=options.target_bits, group_size=options.group_size, sym=not options.zero_point,
                           sensitivity=options.sensitivity, writable=BITS, where="awq")


def _check_gptq_shapes(targets: dict[str, tuple[int, int]], options: AwqOptions) -> None:
    """Refuse, before any work, a linear that a GPTQ checkpoint cannot hold at ``bits`` (with ``target_bits``: at
    every allowed bit-width)."""
    from teeny_core.formats.gptq import BITS, misfit
    from teeny_core.sensitivity import check_target

    widths = [options.bits]
    if options.target_bits is not None:
        if "lm_head" in targets:
            raise TeenyError("awq: target_bits plans the linears inside the decoder layers; keep lm_head in skip")
        check_target(targets, options.allowed_bits, options.target_bits, options.group_size, BITS, "awq")
        widths = options.allowed_bits
    for name, (rows, cols) in targets.items():
        why = next((w for b in widths if (w := misfit(rows, cols, b, options.group_size))), "")
        if why:
            raise TeenyError(f"awq: format=hf-gptq cannot hold {name}: it has {why}; add it to skip or use format=hf")


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
