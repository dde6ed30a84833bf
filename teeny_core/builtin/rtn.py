"""Built-in ``rtn`` quantizer: round-to-nearest weights (2..8 bits) or a plain fp16/bf16 cast.

Integer grids that a GPTQ checkpoint can hold (2, 3, 4 or 8 bits per channel or group) are written as
``hf-gptq`` (``format="auto"``), so runtimes execute them packed (an asymmetric zero point of 0, which GPTQ v1
cannot store, lifts its group's grid one step); other grids are stored dequantized (``hf``). Either way the
model streams through the core's layer walker, one decoder layer in memory at a time.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

from teeny_core import hookimpl
from teeny_core.errors import TeenyError
from teeny_core.modeling import Artifact, ModelSource
from teeny_core.options import Options, option
from teeny_core.quant import lm_head_outside, skipped
from teeny_core.types import CalibrationSet, Quantizer


@dataclasses.dataclass
class RTNOptions(Options):
    bits: int = option(4, "bits per weight: 2..8 quantize to integers; 16 only casts to `dtype`",
                       choices=(2, 3, 4, 5, 6, 7, 8, 16))
    scheme: Literal["sym", "asym"] = option(
        "sym", "symmetric (zero fixed at the middle: the GPTQ checkpoint every loader reads) or asymmetric "
               "(a GPTQ v1 checkpoint that GPTQModel refuses, see docs/formats.md)")
    granularity: Literal["tensor", "channel", "group"] = option("group", "one scale per tensor, row or group")
    group_size: int = option(128, "input columns per group (granularity=group)", min=1)
    skip: list[str] = option(["lm_head"], "glob patterns of linear layers kept in full precision")
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = option(
        "auto", "dtype the artifact stores (auto: the source's; bits=16 defaults to float16)")
    format: Literal["auto", "hf-gptq", "hf"] = option(
        "auto", "auto: hf-gptq (packed codes) when the grid fits a GPTQ checkpoint, else hf (dequantized floats)")
    target_bits: float | None = option(None, "mixed precision: average stored bits per quantized weight (scales and "
                                             "zero points included), each linear's bits from allowed_bits")
    allowed_bits: list[int] = option([2, 3, 4, 8], "bit-widths target_bits chooses from")
    sensitivity: str = option("", "target_bits: a `teeny sensitivity` JSON of this model (default: measured on "
                                  "the calibration data, method rtn)")


class RTNQuantizer(Quantizer[RTNOptions]):
    """Round-to-nearest: integer weights per tensor, channel or group (packed as hf-gptq where the grid fits,
    else stored dequantized), or a fp16/bf16 cast."""

    name = "rtn"
    Options = RTNOptions

    @classmethod
    def needs_calibration(cls, options: RTNOptions) -> bool:
        """Only ``target_bits`` without a sensitivity file calibrates (to measure the sensitivity)."""
        return options.target_bits is not None and not options.sensitivity

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: RTNOptions,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker: one decoder layer in memory at a time. Rounds the architecture
        spec's linears (routed experts included) and ``lm_head`` unless skipped; a router or a 1-output gate
        stays in full precision, with the reason in ``meta["kept_full_precision"]``."""
        from teeny_core.arch import spec_for
        from teeny_core.formats.checkpoint import write_checkpoint_config
        from teeny_core.modeling import torch_dtype
        from teeny_core.sensitivity import gptq_quantization_config, mixed_facts
        from teeny_core.walker import (ShardWriter, copy_side_files, layer_matrices, safetensors_dir, stored_dtype,
                                       walk)

        dtype = options.dtype
        if options.bits == 16 and dtype == "auto":
            dtype = "float16"
        path = safetensors_dir(source)
        store_dtype = dtype if dtype != "auto" else stored_dtype(path)
        store = torch_dtype(store_dtype)
        config = json.loads((path / "config.json").read_text())
        spec = spec_for(config.get("model_type"))
        linears, kept = layer_matrices(path)
        rounding = options.bits < 16
        targets = {n: shape for n, shape in linears.items() if rounding and not skipped(n, options.skip)}
        head = rounding and not skipped("lm_head", options.skip)
        untie = head and config.get("tie_word_embeddings", False)
        if head:
            targets[spec.lm_head] = (config["vocab_size"], config["hidden_size"])
        plan, measured = None, None
        if options.target_bits is not None:
            plan, measured = _mixed_plan(source, calibration, options, targets, head)
        why_not = gptq_misfit(options, targets, plan)
        if options.format == "hf-gptq" and why_not:
            raise TeenyError(f"rtn: format='hf-gptq' cannot hold this grid: {why_not}; use format='hf' or 'auto'")
        fmt = "hf-gptq" if rounding and options.format != "hf" and not why_not else "hf"
        rounder = _Rounder(options, fmt == "hf-gptq", store, plan)

        outside = lm_head_outside(spec, config, lambda w: rounder.round(spec.lm_head, w), store) if head else None
        out_dir = Path(out_dir)
        writer = ShardWriter(out_dir)
        copy_side_files(path, out_dir)  # first: a source without a tokenizer fails before any work
        facts = walk(path, rounder.solve(targets), writer, store_dtype=store_dtype, outside=outside)
        writer.close()
        cfg = facts["config"]
        if untie:
            cfg.tie_word_embeddings = False
        record = {"method": "rtn", **options.to_dict(), "stored_dtype": store_dtype,
                  "quantized_layers": sorted(rounder.shapes), "zero_points_lifted": rounder.lifted}
        if rounding:
            record["kept_full_precision"] = kept
        quant_config = None
        if fmt == "hf-gptq":
            group = options.group_size if options.granularity == "group" else -1
            quant_config = gptq_quantization_config(options.bits, group, options.scheme == "sym", "teeny-rtn",
                                                    lm_head=head, plan=plan,
                                                    unquantized=(set(linears) - set(targets)) | set(kept))
        write_checkpoint_config(cfg, None, out_dir, quant_config, store_dtype,
                                extra_config={"teeny_quantization": record})
        if rounder.shapes and why_not:
            record["hf_gptq_misfit"] = why_not
        n_params = facts["params"] + (cfg.hidden_size * cfg.vocab_size if untie else 0)
        if rounder.shapes:  # quantized weights at `bits` plus a fp16 scale and zero per group; the rest as stored
            packed = (writer.total - rounder.written + rounder.scale_count * 4
                      + sum(r * c * rounder.bits(n) // 8 for n, (r, c) in rounder.shapes.items()))
        else:
            packed = n_params * 2
        meta: dict[str, Any] = {**record, "packed_bytes": packed, "bits_per_weight": 8 * packed / n_params}
        if plan:
            meta.update(mixed_facts(out_dir, plan, targets, measured, quant_config["group_size"]))
        artifact = Artifact(format=fmt, path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: RTNOptions) -> dict[str, Any]:
        if options.bits == 16:
            return {"bits": 16, "dtype": options.dtype if options.dtype != "auto" else "float16"}
        gran = f"g{options.group_size}" if options.granularity == "group" else options.granularity
        if options.target_bits is not None:
            return {"target_bits": options.target_bits, "allowed_bits": options.allowed_bits,
                    "scheme": options.scheme, "granularity": gran}
        return {"bits": options.bits, "scheme": options.scheme, "granularity": gran}


class _Rounder:
    """Rounds linears for one RTN run and tallies what it wrote: packed hf-gptq tensors (``packed``) or the
    dequantized weight in the store dtype."""

    def __init__(self, options: RTNOptions, packed: bool, store, plan: dict[str, int] | None = None):
        self.options, self.packed, self.store, self.plan = options, packed, store, plan or {}
        self.shapes: dict[str, tuple[int, int]] = {}
        self.scale_count = self.lifted = 0
        self.written = 0
        """Bytes written for the rounded weights (packed tensors, or dequantized floats)."""

    def bits(self, name: str) -> int:
        """The bit-width of linear ``name``: its planned one under target_bits, else ``bits``."""
        return self.plan.get(name, self.options.bits)

    def codes(self, name: str, weight):
        """Codes, scale and zero of ``weight`` (float32); a zero point of 0, which GPTQ v1 cannot store, lifts
        its group's grid one step when packing."""
        from teeny_core.quant import quantize_weight, quantize_with

        o, bits = self.options, self.bits(name)
        q, scale, zero = quantize_weight(weight, bits, o.scheme, o.granularity, o.group_size)
        if self.packed and int(zero.min()) < 1:
            self.lifted += int((zero < 1).sum())
            zero = zero.clamp(min=1)
            q = quantize_with(weight, scale, zero, bits)
        self.shapes[name] = tuple(weight.shape)
        self.scale_count += scale.numel()
        return q, scale, zero

    def round(self, name: str, weight, module: str | None = None) -> dict[str, Any]:
        """The tensors to write for linear ``name`` (under the disk name ``module``, default ``name``); the
        dequantized weight is copied back into ``weight``."""
        from teeny_core.formats.gptq import default_g_idx, pack_linear
        from teeny_core.quant import dequantize_weight

        q, scale, zero = self.codes(name, weight.float())
        weight.copy_(dequantize_weight(q, scale, zero).to(weight.dtype))
        module = module or name
        if self.packed:
            group = self.options.group_size if self.options.granularity == "group" else -1
            out = {f"{module}.{k}": v.contiguous() for k, v in
                   pack_linear(q, scale, zero, default_g_idx(q.shape[1], group), self.bits(name)).items()}
        else:
            out = {f"{module}.weight": weight.to(self.store)}
        self.written += sum(t.numel() * t.element_size() for t in out.values())
        return out

    def solve(self, targets: dict[str, tuple[int, int]]):
        """A walker solver rounding the layer's ``targets`` (qualified names), routed experts included."""
        import torch

        from teeny_core.walker import Solved

        def solve(work) -> Solved:
            solved = Solved()
            names = [n for n in work.spec.linears() if f"{work.prefix}.{n}" in targets]
            views = {n: work.layer.get_submodule(n).weight for n in names}
            if work.spec.experts:  # fused in memory; one disk linear per expert and projection
                ex = work.spec.experts
                experts = work.layer.get_submodule(ex.module)
                inter = experts.gate_up_proj.shape[1] // 2
                for e in range(experts.gate_up_proj.shape[0]):
                    for part, view in (("gate_proj", experts.gate_up_proj[e, :inter]),
                                       ("up_proj", experts.gate_up_proj[e, inter:]),
                                       ("down_proj", experts.down_proj[e])):
                        if f"{work.prefix}.{ex.module}.{e}.{part}" in targets:
                            views[f"{ex.module}.{e}.{part}"] = view
            with torch.no_grad():
                for name, weight in views.items():
                    tensors = self.round(f"{work.prefix}.{name}", weight, name)
                    if self.packed:  # else the walker writes the layer's (dequantized) weights itself
                        solved.tensors.update(tensors)
                        solved.replaced.add(name)
            return solved

        return solve


def gptq_misfit(options: RTNOptions, shapes: dict[str, tuple[int, int]], plan: dict[str, int] | None = None) -> str:
    """Why linears of these shapes (name -> (out, in)) cannot be an hf-gptq checkpoint at these options (and
    per-module bits ``plan``), or ""."""
    from teeny_core.formats.gptq import BITS, misfit

    if not shapes:
        return "no layer was quantized"
    if options.bits not in BITS and not plan:
        return f"bits={options.bits} is not one of {BITS}"
    if options.granularity == "tensor":
        return "granularity='tensor' (GPTQ checkpoints hold per-channel or per-group scales)"
    group = options.group_size if options.granularity == "group" else -1
    for name, (rows, cols) in shapes.items():
        why = misfit(rows, cols, (plan or {}).get(name, options.bits), group)
        if why:
            return f"{name} has {why}"
    return ""


def _mixed_plan(source: ModelSource, calibration: CalibrationSet | None, options: RTNOptions,
                targets: dict[str, tuple[int, int]], head: bool):
    """Per-linear bits for ``target_bits`` (see :func:`teeny_core.sensitivity.mixed_precision`)."""
    from teeny_core.formats.gptq import BITS
    from teeny_core.sensitivity import mixed_precision

    if options.format == "hf" or options.granularity == "tensor" or options.bits == 16:
        raise TeenyError("rtn: target_bits writes an hf-gptq checkpoint with per-module bits; it needs "
                         "format='auto' or 'hf-gptq' and granularity 'group' or 'channel'")
    if head:
        raise TeenyError("rtn: target_bits plans the linears inside the decoder layers; keep lm_head in skip")
    group = options.group_size if options.granularity == "group" else -1
    return mixed_precision(source, calibration, method="rtn", shapes=targets, allowed=options.allowed_bits,
                           target=options.target_bits, group_size=group, sym=options.scheme == "sym",
                           sensitivity=options.sensitivity, writable=BITS, where="rtn")


@hookimpl
def teeny_register_quantizers(register):
    register(RTNQuantizer)
