"""The ``gptq`` quantizer: native torch GPTQ (or GPTQModel where installed), written as an hf-gptq checkpoint."""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any, Callable, Literal

from teeny_core import Artifact, CalibrationSet, ModelSource, Options, Quantizer, TeenyError, option

CHECKPOINT_FORMAT = "gptq"
log = logging.getLogger("teeny_gptq")


@dataclasses.dataclass
class GPTQOptions(Options):
    bits: int = option(4, "bits per weight", choices=(2, 3, 4, 8))
    group_size: int = option(128, "input columns sharing a scale and zero; -1 or 0 = one per output channel",
                             min=-1)
    sym: bool = option(True, "symmetric grid (zero fixed at the middle) instead of a per-group zero point")
    desc_act: bool = option(False, "act-order: quantize columns by decreasing Hessian diagonal")
    static_groups: bool = option(False, "fix every group's scale/zero from the original weights before the sweep "
                                        "(with desc_act: keeps g_idx contiguous, faster kernels)")
    true_sequential: bool = option(True, "inside a block quantize q/k/v, then o, then gate/up, then down, "
                                         "each with inputs from the already quantized part")
    damp_percent: float = option(0.01, "Hessian damping as a fraction of its mean diagonal", min=0.0, max=1.0)
    damp_auto_increment: float = option(0.0025, "damping added per retry when Cholesky fails", min=0.0, max=1.0)
    block_size: int = option(128, "columns per lazy-update block", min=1)
    mse: bool = option(False, "search a clipping ratio per group that minimizes the weight error")
    mse_grid: int = option(100, "clipping candidates 1 - i/grid", min=1)
    mse_max_shrink: float = option(0.8, "largest fraction the range may shrink by", min=0.0, max=1.0)
    mse_norm: float = option(2.4, "exponent of the clipping search's error", min=1.0)
    skip: list[str] = option(["lm_head"], "glob patterns of linear layers kept in full precision (GPTQ solves "
                                          "the decoder blocks' linears; lm_head, unless skipped, is rounded to "
                                          "nearest on the same grid)")
    batch_size: int = option(8, "calibration sequences per forward pass", min=1)
    device: str = option("auto", "where blocks are quantized: auto (cuda when available), cpu, cuda, cuda:N")
    backend: Literal["native", "gptqmodel"] = option("native", "native torch GPTQ, or the gptqmodel package")
    target_bits: float | None = option(None, "mixed precision: average stored bits per quantized weight (scales and "
                                             "zero points included), each linear's bits from allowed_bits")
    allowed_bits: list[int] = option([2, 3, 4, 8], "bit-widths target_bits chooses from")
    sensitivity: str = option("", "target_bits: a `teeny sensitivity` JSON of this model (default: measured on "
                                  "the calibration data, method gptq)")


def settings_from(options: GPTQOptions):
    from teeny_gptq.gptq import MSESearch
    from teeny_gptq.solver import GPTQSettings

    mse = MSESearch(options.mse_grid, options.mse_max_shrink, options.mse_norm) if options.mse else None
    return GPTQSettings(bits=options.bits, group_size=options.group_size if options.group_size > 0 else -1,
                        sym=options.sym, act_order=options.desc_act, static_groups=options.static_groups,
                        true_sequential=options.true_sequential, block_size=options.block_size,
                        damp_percent=options.damp_percent, damp_increment=options.damp_auto_increment,
                        mse=mse, skip=tuple(options.skip), batch_size=options.batch_size)


def quantization_config(options: GPTQOptions, skipped_inside: list[str],
                        plan: dict[str, int] | None = None, lm_head: bool = False) -> dict[str, Any]:
    """The ``quantization_config`` transformers, GPTQModel and vLLM read (per-module bits of ``plan`` as
    ``dynamic`` rules over the most common bit-width)."""
    from teeny_core.formats.gptq import dynamic_exclusions
    from teeny_core.sensitivity import dynamic_rules, most_common
    from teeny_gptq import __version__

    bits = most_common(plan) if plan else options.bits
    cfg: dict[str, Any] = {
        "quant_method": "gptq",
        "bits": bits,
        "group_size": options.group_size if options.group_size > 0 else -1,
        "desc_act": options.desc_act,
        "sym": options.sym,
        "static_groups": options.static_groups,
        "true_sequential": options.true_sequential,
        "damp_percent": options.damp_percent,
        "damp_auto_increment": options.damp_auto_increment,
        "checkpoint_format": CHECKPOINT_FORMAT,
        "pack_dtype": "int32",
        "lm_head": lm_head,
        "meta": {"quantizer": [f"teeny-gptq:{__version__}"], "mse": options.mse},
    }
    if skipped_inside or plan:
        cfg["dynamic"] = {**dynamic_exclusions(skipped_inside), **dynamic_rules(plan or {}, bits)}
    return cfg


def check_shapes(linears: dict[str, tuple[int, int]], options: GPTQOptions, bits_list=None) -> None:
    """Fail before any work when a linear (name -> (out, in) features) cannot be grouped or packed (at every
    bit-width of ``bits_list``, default ``options.bits``)."""
    from teeny_core.formats.gptq import misfit

    for name, (out_features, in_features) in linears.items():
        why = next((w for b in (bits_list or [options.bits])
                    if (w := misfit(out_features, in_features, b, options.group_size))), "")
        if why:
            raise TeenyError(f"gptq: {name} has {why}; choose another group_size or add {name!r} to skip")


class GPTQQuantizer(Quantizer[GPTQOptions]):
    """GPTQ: second-order error-compensated rounding, layer by layer; writes a standard GPTQ checkpoint."""

    name = "gptq"
    Options = GPTQOptions
    @classmethod
    def needs_calibration(cls, options: Options) -> bool:
        return True  # every setting solves against calibration activations

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: GPTQOptions,
                 out_dir: Path) -> Artifact:
        if not calibration or not calibration.samples:
            raise TeenyError("gptq needs calibration data: pass a CalibrationSet (teeny run and teeny quantize "
                             "build one from the experiment's [calibration] table)")
        if options.backend == "gptqmodel":
            if options.target_bits is not None:
                raise TeenyError("gptq: target_bits needs backend='native' (the gptqmodel backend writes one bits)")
            from teeny_gptq.gptqmodel_backend import quantize_with_gptqmodel

            return quantize_with_gptqmodel(source, calibration, options, Path(out_dir))
        return quantize_native(source, calibration, options, Path(out_dir))

    def describe(self, options: GPTQOptions) -> dict[str, Any]:
        bits: dict[str, Any] = {"bits": options.bits} if options.target_bits is None else \
            {"target_bits": options.target_bits, "allowed_bits": options.allowed_bits}
        facts: dict[str, Any] = {**bits,
                                 "group_size": options.group_size if options.group_size > 0 else "channel",
                                 "sym": options.sym, "desc_act": options.desc_act}
        if options.backend != "native":
            facts["backend"] = options.backend
        return facts


def quantize_native(source: ModelSource, calibration: CalibrationSet, options: GPTQOptions, out_dir: Path,
                    on_linear: Callable[[str, Any], None] | None = None) -> Artifact:
    """Native GPTQ into an hf-gptq artifact, streamed one layer at a time by the core's walker (the source must
    be a safetensors directory). ``on_linear(name, outcome)`` sees every linear's GPTQ outcome as it finishes.
    Linears calibration never reaches (an expert its router never picks) are rounded to nearest on the same
    grid, listed in ``meta["rtn_fallback"]`` and reported in one warning."""
    import torch

    from teeny_core import lm_head_outside, skipped, stored_dtype, write_checkpoint_config
    from teeny_core.arch import spec_for
    from teeny_core.formats.gptq import pack_linear
    from teeny_core.modeling import peak_rss_bytes, resolve_device, torch_dtype
    from teeny_core.walker import ShardWriter, copy_side_files, layer_matrices, safetensors_dir, walk
    from teeny_gptq.gptq import gptq_quantize
    from teeny_gptq.solver import QuantizedLinear, gptq_solver

    start = time.perf_counter()
    device = resolve_device(options.device)
    path = safetensors_dir(source)
    store_dtype = stored_dtype(path)
    compute_dtype = "float32" if device == "cpu" else store_dtype
    inside, kept = layer_matrices(path)
    targets = {n: shape for n, shape in inside.items() if not skipped(n, options.skip)}
    if not targets:
        raise TeenyError(f"gptq: skip={options.skip} leaves no linear layer to quantize")
    mixed = options.target_bits is not None
    if mixed and not skipped("lm_head", options.skip):
        raise TeenyError("gptq: target_bits plans the linears inside the decoder layers; keep lm_head in skip")
    group = options.group_size if options.group_size > 0 else -1
    if mixed:
        from teeny_core.formats.gptq import BITS
        from teeny_core.sensitivity import check_target, mixed_precision

        check_target(targets, options.allowed_bits, options.target_bits, group, BITS, "gptq")
    check_shapes(targets, options, options.allowed_bits if mixed else None)
    tokens = sum(len(sample) for sample in calibration.samples)
    widest = max(targets, key=lambda n: targets[n][1])
    short_of = widest if tokens < targets[widest][1] else None
    cautions = []
    if short_of:
        cautions.append(f"{tokens:,} calibration tokens are fewer than the {targets[widest][1]:,} inputs of {widest}: "
                        "its Hessian is rank-deficient and GPTQ fits the calibration text (Qwen2.5-Coder-0.5B w4: KL "
                        "0.155 from 2,048 tokens, 0.094 from 16,384, docs/findings.md); give samples x seq_len of "
                        f"at least {targets[widest][1]:,}")
        log.warning("gptq: %s", cautions[-1])
    plan, used = None, None
    if mixed:
        plan, used = mixed_precision(source, calibration, method="gptq", shapes=targets,
                                     allowed=options.allowed_bits, target=options.target_bits, group_size=group,
                                     sym=options.sym, sensitivity=options.sensitivity, writable=BITS, where="gptq")

    stats: dict[str, dict[str, Any]] = {}
    fallback: dict[str, str] = {}
    packed_bits = 0

    def keep(name: str, outcome) -> dict[str, Any]:
        nonlocal packed_bits
        r = outcome.result
        packed = pack_linear(r.q, r.scale, r.zero, r.g_idx, (plan or {}).get(name, options.bits), CHECKPOINT_FORMAT)
        packed_bits += sum(t.numel() * t.element_size() * 8 for t in packed.values())
        stats[name] = {"loss": r.loss, "damp": r.damp, "escalations": r.escalations,
                       "seconds": round(outcome.seconds, 3)}
        if outcome.fallback:
            fallback[name] = outcome.fallback
        if on_linear:
            on_linear(name, outcome)
        return {k: v.contiguous() for k, v in packed.items()}

    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    out_dir = Path(out_dir)
    writer = ShardWriter(out_dir)
    copy_side_files(path, out_dir)  # first: a source without a tokenizer fails before any work
    settings = settings_from(options)
    settings.module_bits = plan or {}
    config = json.loads((path / "config.json").read_text())
    spec = spec_for(config.get("model_type"))
    head = not skipped("lm_head", options.skip)
    untie = head and config.get("tie_word_embeddings", False)

    def round_head(weight):
        """lm_head rounded to nearest on GPTQ's grid: an identity Hessian, as for a linear calibration never
        reaches, since the walker ends at the last decoder layer (as RTN and AWQ)."""
        result = gptq_quantize(weight, torch.eye(weight.shape[1]), bits=options.bits, group_size=group,
                               sym=options.sym, block_size=options.block_size, name="lm_head")
        return {f"{spec.lm_head}.{k}": v for k, v in keep(spec.lm_head, QuantizedLinear(result, None, 0.0)).items()}

    outside = lm_head_outside(spec, config, round_head, torch_dtype(store_dtype)) if head else None

    facts = walk(path, gptq_solver(settings, keep), writer, calibration_ids=calibration.tensor(),
                 batch_size=settings.batch_size, device=device, compute_dtype=compute_dtype, store_dtype=store_dtype,
                 outside=outside)
    files = writer.close()
    if untie:
        facts["config"].tie_word_embeddings = False
    quantize_seconds = time.perf_counter() - start
    skipped_inside = sorted(set(inside) - set(targets))
    write_checkpoint_config(facts["config"], None, out_dir,
                            quantization_config(options, skipped_inside + sorted(kept), plan, lm_head=head),
                            store_dtype)
    if fallback:
        log.warning("gptq: calibration never reached %d linear(s), rounded to nearest on the same grid: %s",
                    len(fallback), ", ".join(sorted(fallback)))
    if head:
        fallback[spec.lm_head] = "rounded to nearest on the same grid: GPTQ solves the decoder layers' linears"

    n_params = facts["params"] + (config["vocab_size"] * config["hidden_size"] if untie else 0)
    quant_params = sum(rows * cols for rows, cols in targets.values()) + (
        config["vocab_size"] * config["hidden_size"] if head else 0)
    escalated = {n: s["damp"] for n, s in stats.items() if s["escalations"]}
    other_bits = (n_params - quant_params) * {"float32": 32, "float16": 16, "bfloat16": 16}[store_dtype]
    meta: dict[str, Any] = {
        "method": "gptq", "backend": "native", **options.to_dict(), "device": device,
        "checkpoint_format": CHECKPOINT_FORMAT, "stored_dtype": store_dtype, "files": files,
        "quantized_layers": sorted(stats), "skipped_layers": skipped_inside, "kept_full_precision": kept,
        "rtn_fallback": fallback,
        "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint(),
                        "samples": len(calibration.samples), "seq_len": len(calibration.samples[0]),
                        "tokens": tokens, "fewer_than_inputs_of": short_of},
        "quantized_params": quant_params, "total_params": n_params,
        "bits_per_weight": round((packed_bits + other_bits) / n_params, 3),
        "layer_stats": stats, "damp_escalated": escalated, "spilled_batches": facts["spilled_batches"],
        "quantize_seconds": round(quantize_seconds, 2), "seconds": round(time.perf_counter() - start, 2),
        "peak_rss_bytes": peak_rss_bytes(), "cautions": cautions,
    }
    if device.startswith("cuda"):
        meta["peak_cuda_bytes"] = torch.cuda.max_memory_allocated()
    if plan:
        from teeny_core.sensitivity import mixed_facts

        meta.update(mixed_facts(out_dir, plan, targets, used, settings.group_size))
    artifact = Artifact(format="hf-gptq", path=out_dir, meta=meta)
    artifact.save()
    return artifact
