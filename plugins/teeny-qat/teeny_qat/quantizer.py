"""The ``qat`` quantizer: block-wise quantization-aware training (then, optionally, end-to-end training of the
scales and norms), written as a standard hf-gptq checkpoint. Light at import: torch loads inside ``quantize``."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any, Literal

from teeny_core import Artifact, CalibrationSet, ModelSource, Options, Quantizer, TeenyError, option

CHECKPOINT_FORMAT = "gptq"


@dataclasses.dataclass
class QatOptions(Options):
    bits: int = option(2, "bits per weight", choices=(2, 3, 4))
    group_size: int = option(64, "input columns sharing a scale and zero; -1 = one per output channel", min=-1)
    sym: bool = option(False, "symmetric grid (zero fixed at the middle) instead of a learned zero point")
    init: Literal["rtn", "gptq"] = option("rtn", "starting grid: round-to-nearest, or GPTQ (needs teeny-gptq)")
    epochs: int = option(4, "passes over the calibration batches per block", min=1)
    lr_scale: float | None = option(None, "Adam learning rate of the scales and zero points (default: 1e-3 at 2 bits, "
                                          "x0.3 for each bit more)", min=0.0)
    lr_weight: float | None = option(None, "Adam learning rate of the weights, with train_weights (default: 1e-4 at "
                                           "2 bits, x0.3 for each bit more)", min=0.0)
    train_weights: bool = option(True, "learn the latent weights too (false: only scales and zero points)")
    batch_size: int = option(4, "calibration sequences per training step (and per forward pass)", min=1)
    seed: int = option(0, "seed of the batch order (each block's is seed + its index)")
    e2e_steps: int = option(0, "end-to-end steps training only scales and norms on the KL to the original's "
                               "logits (0: off); holds the original and the quantized model in memory", min=0)
    e2e_lr: float = option(1e-5, "Adam learning rate of the end-to-end phase", min=0.0)
    skip: list[str] = option(["lm_head"], "glob patterns of linear layers kept in full precision "
                                          "(only linears inside decoder blocks are quantized)")
    device: str = option("cpu", "where blocks are trained: cpu (deterministic), auto, cuda, cuda:N")


def learning_rates(options: QatOptions) -> tuple[float, float]:
    """``lr_scale`` and ``lr_weight``, the unset ones by bits: Adam moves a parameter by about its learning rate a
    step whatever its size, while each bit more shrinks the grid's step (3/7 from 2 to 3 bits), so the rates that
    train a 2-bit grid overshoot a 3-bit one (measured on Qwen2.5-Coder-0.5B: benchmarks/results/qat.md)."""
    factor = 0.3 ** (options.bits - 2)
    return (options.lr_scale if options.lr_scale is not None else 1e-3 * factor,
            options.lr_weight if options.lr_weight is not None else 1e-4 * factor)


def settings_from(options: QatOptions):
    from teeny_qat.training import QatSettings

    lr_scale, lr_weight = learning_rates(options)
    return QatSettings(bits=options.bits, group_size=options.group_size, sym=options.sym, epochs=options.epochs,
                       lr_scale=lr_scale, lr_weight=lr_weight, train_weights=options.train_weights,
                       seed=options.seed, skip=tuple(options.skip))


def quantization_config(options: QatOptions, excluded: list[str]) -> dict[str, Any]:
    """The ``quantization_config`` transformers, GPTQModel and vLLM read (contiguous groups, no act-order)."""
    from teeny_core.formats.gptq import dynamic_exclusions
    from teeny_qat import __version__

    cfg: dict[str, Any] = {
        "quant_method": "gptq", "bits": options.bits,
        "group_size": options.group_size if options.group_size > 0 else -1,
        "desc_act": False, "sym": options.sym, "checkpoint_format": CHECKPOINT_FORMAT, "pack_dtype": "int32",
        "lm_head": False, "meta": {"quantizer": [f"teeny-qat:{__version__}"], "init": options.init},
    }
    if excluded:
        cfg["dynamic"] = dynamic_exclusions(excluded)
    return cfg


def check_inputs(options: QatOptions, calibration: CalibrationSet | None, targets: dict[str, tuple[int, int]]):
    """Refuse, before any work, what the hf-gptq layout or the training cannot take."""
    from teeny_core.formats.gptq import misfit

    if not calibration or not calibration.samples:
        raise TeenyError("qat needs calibration data: pass a CalibrationSet (teeny run and teeny quantize build "
                         "one from the experiment's [calibration] table)")
    if len({len(s) for s in calibration.samples}) != 1:
        raise TeenyError("qat: calibration samples must all have the same length")
    if len(calibration.samples) < options.batch_size:
        raise TeenyError(f"qat: the calibration set has {len(calibration.samples)} sample(s), fewer than one batch "
                         f"(batch_size={options.batch_size}); add samples or lower batch_size")
    if options.group_size == 0:
        raise TeenyError("qat: group_size=0 is not a group size; use a positive divisor of the layers' input "
                         "width, or -1 for one group per output channel")
    if not targets:
        raise TeenyError(f"qat: skip={options.skip} leaves no linear layer to quantize")
    for name, (out_features, in_features) in targets.items():
        why = misfit(out_features, in_features, options.bits, options.group_size)
        if why:
            raise TeenyError(f"qat: {name} has {why}, which an hf-gptq checkpoint cannot hold; choose another "
                             f"group_size or add {name!r} to skip")
    if options.init == "gptq" and importlib.util.find_spec("teeny_gptq") is None:
        raise TeenyError("qat: init='gptq' needs the teeny-gptq plugin (pip install -e ./teeny-gptq); or use "
                         "init='rtn'")


def resume_dir(source: ModelSource, calibration: CalibrationSet, options: QatOptions) -> Path:
    """Where finished blocks are kept until the artifact is complete: keyed by the source, the calibration and
    every option, so only a rerun of the very same quantization resumes from it."""
    from teeny_core.modeling import cache_dir
    from teeny_qat import __version__

    key = json.dumps([source.identity(), calibration.fingerprint(), options.to_dict(), __version__], sort_keys=True)
    return cache_dir() / "qat-blocks" / hashlib.sha256(key.encode()).hexdigest()[:16]


@contextlib.contextmanager
def held(blocks: Path):
    """Inside: this process alone uses the resume directory ``blocks`` (an flock on ``blocks.lock`` beside it,
    released by the kernel if the process dies, the file removed after); a second quantization with the same key
    is one error line."""
    import fcntl

    blocks.parent.mkdir(parents=True, exist_ok=True)
    path = blocks.with_name(blocks.name + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if not path.exists() or path.stat().st_ino != os.fstat(fd).st_ino:
                raise BlockingIOError  # its holder finished and removed it between our open and our lock
        except BlockingIOError:
            raise TeenyError(f"qat: another process is running this very quantization (same model, calibration "
                             f"and options; its finished blocks are in {blocks}); wait for it to finish, then run "
                             "again") from None
        try:
            yield
        finally:
            path.unlink(missing_ok=True)  # while still locked: a newcomer then opens a fresh file
    finally:
        os.close(fd)


def gptq_init(options: QatOptions):
    """An ``init`` for :func:`~teeny_qat.training.qat_solver`: teeny-gptq's solver run on the block (it writes
    the GPTQ weights in place), its grids and weights the starting point."""
    from teeny_gptq.solver import GPTQSettings, gptq_solver

    settings = GPTQSettings(bits=options.bits, group_size=options.group_size if options.group_size > 0 else -1,
                            sym=options.sym, act_order=False, skip=tuple(options.skip), batch_size=options.batch_size)

    def init(work) -> dict[str, tuple[Any, Any, Any]]:
        found: dict[str, Any] = {}

        def keep(name: str, outcome) -> dict[str, Any]:
            found[name[len(work.prefix) + 1:]] = outcome.result
            return {}

        gptq_solver(settings, keep)(work)
        return {name: (r.w_hat.to(work.device), r.scale.to(work.device), r.zero.to(work.device))
                for name, r in found.items()}

    return init


class QatQuantizer(Quantizer[QatOptions]):
    """Quantization-aware training, block by block on the layer walker; writes a standard GPTQ checkpoint."""

    name = "qat"
    Options = QatOptions
    @classmethod
    def needs_calibration(cls, options: Options) -> bool:
        return True  # every setting solves against calibration activations

    def quantize(self, source: ModelSource, calibration: CalibrationSet | None, options: QatOptions,
                 out_dir: Path) -> Artifact:
        """Streamed by the core's layer walker (one block, its optimizer state and the activations in memory);
        each finished block is kept in Teeny's cache so a killed run resumes at the next block."""
        import torch

        from teeny_core.arch import spec_for
        from teeny_core import skipped, stored_dtype, write_checkpoint_config
        from teeny_core.formats.gptq import default_g_idx, pack_linear
        from teeny_core.modeling import peak_rss_bytes, resolve_device, torch_dtype
        from teeny_core.walker import ShardWriter, copy_side_files, layer_matrices, safetensors_dir, walk
        from teeny_qat.training import qat_solver

        start = time.perf_counter()
        path = safetensors_dir(source)
        inside, kept = layer_matrices(path)
        spec = spec_for(json.loads((path / "config.json").read_text()).get("model_type"))
        if spec.experts:  # trained are the dense linears; routed experts are written as they are
            pattern = f"*.{spec.experts.module}.*"
            options = dataclasses.replace(options, skip=[*options.skip, pattern])
            kept.update({n: "a routed expert: qat trains the dense linears only, so it stays in full precision"
                         for n in inside if skipped(n, [pattern])})
        targets = {n: shape for n, shape in inside.items() if not skipped(n, options.skip)}
        check_inputs(options, calibration, targets)
        assert calibration is not None
        device = resolve_device(options.device)
        store_dtype = stored_dtype(path)

        def on_linear(name: str, frozen) -> dict[str, Any]:
            group = options.group_size if options.group_size > 0 else -1
            tensors = pack_linear(frozen.q, frozen.scale, frozen.zero, default_g_idx(frozen.q.shape[1], group),
                                  options.bits, CHECKPOINT_FORMAT)
            return {k: v.cpu().contiguous() for k, v in tensors.items()}

        curves: dict[int, dict[str, Any]] = {}
        init = gptq_init(options) if options.init == "gptq" else None
        blocks = resume_dir(source, calibration, options)
        out_dir = Path(out_dir)
        with held(blocks):  # one quantization per resume directory at a time
            writer = ShardWriter(out_dir)
            copy_side_files(path, out_dir)  # first: a source without a tokenizer fails before any work
            e2e = None
            try:
                facts = walk(path, qat_solver(settings_from(options), on_linear, init, curves), writer,
                             calibration_ids=calibration.tensor(), batch_size=options.batch_size, device=device,
                             compute_dtype="float32", store_dtype=store_dtype, keep=blocks)
                files = writer.close()
                excluded = sorted(set(inside) - set(targets) | set(kept))
                write_checkpoint_config(facts["config"], None, out_dir, quantization_config(options, excluded),
                                        store_dtype)
                if options.e2e_steps:
                    from teeny_qat.end_to_end import train_end_to_end

                    e2e = train_end_to_end(source, out_dir, calibration, options)
            except TeenyError:
                shutil.rmtree(blocks, ignore_errors=True)  # a refused run leaves nothing behind
                raise
            shutil.rmtree(blocks, ignore_errors=True)
        n_params = facts["params"]
        quant_params = sum(rows * cols for rows, cols in targets.values())
        other_bits = (n_params - quant_params) * torch.finfo(torch_dtype(store_dtype)).bits
        packed_bits = sum(packed_linear_bits(shape, options) for shape in targets.values())
        meta: dict[str, Any] = {
            "method": "qat", **options.to_dict(), **dict(zip(("lr_scale", "lr_weight"), learning_rates(options))),
            "device": device, "checkpoint_format": CHECKPOINT_FORMAT,
            "stored_dtype": store_dtype, "files": files, "quantized_layers": sorted(targets),
            "skipped_layers": sorted(set(inside) - set(targets) - set(kept)), "kept_full_precision": kept,
            "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint(),
                            "samples": len(calibration.samples), "seq_len": len(calibration.samples[0])},
            "quantized_params": quant_params, "total_params": n_params,
            "bits_per_weight": round((packed_bits + other_bits) / n_params, 3),
            "block_losses": {str(k): v for k, v in sorted(curves.items())},
            "resumed_blocks": len(facts["layer_errors"]) - len(curves),
            "end_to_end": e2e,
            "seconds": round(time.perf_counter() - start, 2), "peak_rss_bytes": peak_rss_bytes(),
        }
        artifact = Artifact(format="hf-gptq", path=out_dir, meta=meta)
        artifact.save()
        return artifact

    def describe(self, options: QatOptions) -> dict[str, Any]:
        facts: dict[str, Any] = {"bits": options.bits,
                                 "group_size": options.group_size if options.group_size > 0 else "channel",
                                 "sym": options.sym, "init": options.init, "epochs": options.epochs}
        if options.e2e_steps:
            facts["e2e_steps"] = options.e2e_steps
        return facts


def packed_linear_bits(shape: tuple[int, int], options: QatOptions) -> int:
    """Bits one linear ``(out, in)`` takes in the checkpoint: codes and zeros at ``bits``, float16 scales,
    int32 ``g_idx``."""
    out_features, in_features = shape
    groups = in_features // options.group_size if options.group_size > 0 else 1
    return out_features * in_features * options.bits + groups * out_features * (16 + options.bits) + 32 * in_features
