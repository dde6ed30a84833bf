"""Block-wise quantization-aware training as a solver on the core's layer walker.

Each decoder block's linears are fake-quantized on the hf-gptq grid ``w_hat = scale * (q - zero)`` with
``q = clamp(round(w / scale) + round(zero), 0, 2**bits - 1)``: rounding passes gradients straight through, the
per-group scales (rounded to float16 in the forward pass, exactly as the checkpoint stores them) and zero points
(kept in ``1 .. 2**bits - 1``, what GPTQ v1 can store) are learned, and so, optionally, are the weights. The
block is trained to reproduce the original block's outputs on the calibration activations that the walker hands
it (the outputs of the already quantized blocks before it), then frozen: its weights become the dequantized
ones, so the next block trains on quantized inputs. Only one block, its optimizer state and the activations are
in memory at a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, Callable

from teeny_core import TeenyError, skipped

FP16_TINY, FP16_MAX = 2.0**-24, 65504.0


@dataclasses.dataclass
class QatSettings:
    """What :func:`qat_solver` needs from the quantizer's options."""

    bits: int = 2
    group_size: int = 64
    sym: bool = False
    epochs: int = 4
    lr_scale: float = 1e-3
    lr_weight: float = 1e-4
    train_weights: bool = True
    seed: int = 0
    skip: tuple[str, ...] = ("lm_head",)


@dataclasses.dataclass
class FrozenLinear:
    """One trained linear as the checkpoint stores it: codes ``q [out, in]`` (int32), float16-exact float32
    ``scale`` and integer ``zero`` ``[out, groups]``."""

    q: Any
    scale: Any
    zero: Any


def _ste(rounded, x):
    """``rounded`` in the forward pass, the identity's gradient for ``x`` in the backward pass."""
    return x + (rounded - x).detach()


class FakeQuant:
    """A linear's learnable grid: latent weight, per-group scale and zero point."""

    def __init__(self, weight, scale, zero, bits: int, sym: bool, train_weights: bool):
        import torch

        self.bits, self.maxq = bits, 2**bits - 1
        out, cols = weight.shape
        self.groups = scale.shape[1]
        self.weight = torch.nn.Parameter(weight.detach().clone(), requires_grad=train_weights)
        self.scale = torch.nn.Parameter(scale.detach().clone().float())
        self.zero = torch.nn.Parameter(zero.detach().clone().float(), requires_grad=not sym)
        self.shape = (out, cols)

    def parts(self):
        """Codes, float16-exact scale and integer zero, differentiable by straight-through estimation."""
        import torch

        scale = _ste(self.scale.clamp(FP16_TINY, FP16_MAX).half().float(), self.scale)
        zero = _ste(self.zero.round().clamp(1, self.maxq), self.zero)
        out, cols = self.shape
        w = self.weight.reshape(out, self.groups, cols // self.groups)
        q = torch.clamp(_ste((w / scale[..., None]).round(), w / scale[..., None]) + zero[..., None], 0, self.maxq)
        return q, scale, zero

    def weight_hat(self):
        q, scale, zero = self.parts()
        return (scale[..., None] * (q - zero[..., None])).reshape(self.shape)

    def snapshot(self) -> tuple[Any, ...]:
        """The learned tensors as they are now (see :meth:`restore`)."""
        return tuple(p.detach().clone() for p in (self.weight, self.scale, self.zero))

    def restore(self, kept: tuple[Any, ...]) -> None:
        import torch

        with torch.no_grad():
            for p, value in zip((self.weight, self.scale, self.zero), kept):
                p.copy_(value)

    def freeze(self) -> FrozenLinear:
        import torch

        with torch.no_grad():
            q, scale, zero = self.parts()
        return FrozenLinear(q.reshape(self.shape).to(torch.int32), scale, zero)

    def parameters(self, lr_scale: float, lr_weight: float) -> list[dict[str, Any]]:
        groups = [{"params": [p for p in (self.scale, self.zero) if p.requires_grad], "lr": lr_scale}]
        if self.weight.requires_grad:
            groups.append({"params": [self.weight], "lr": lr_weight})
        return groups


def rtn_grid(weight, bits: int, group_size: int, sym: bool):
    """Round-to-nearest scale and zero ``[out, groups]`` of ``weight``, the zero lifted to at least 1 (GPTQ v1)."""
    from teeny_core.quant import quantize_weight

    _, scale, zero = quantize_weight(weight.float(), bits, "sym" if sym else "asym", "group", group_size)
    return scale, zero.clamp(min=1)


@contextlib.contextmanager
def _deterministic():
    """Deterministic torch kernels inside (CPU reruns give the same bytes), the previous setting restored after."""
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before)


def qat_solver(settings: QatSettings, on_linear: Callable[[str, FrozenLinear], dict[str, Any]],
               init: Callable[[Any], dict[str, tuple[Any, Any, Any]]] | None = None,
               curves: dict[int, dict[str, Any]] | None = None):
    """A walker solver training each block's fake-quantized linears, then freezing them in place.

    ``init(work)`` -> linear name -> (latent weight, scale, zero) to start from (default: round-to-nearest on
    the original weights). ``on_linear(name, frozen)`` returns the tensors to write for that linear (its bias,
    like every other tensor of the block, the walker writes).
    ``curves[block]`` receives the block's loss before training, after each epoch and after (the epoch kept).

    The learning rates decay to zero along a cosine over all steps. After each epoch the loss is measured on all
    calibration batches and the block keeps its best epoch, so an overshoot early in training costs nothing; a
    block that no epoch brought below its starting loss (or whose loss is not finite) is refused as diverged.
    """

    def solve(work):
        import torch

        from teeny_core.walker import Solved, run_layer

        if work.inputs is None:
            raise TeenyError("qat needs calibration activations")
        layer, prefix = work.layer, work.prefix
        names = [n for n in work.spec.linears() if not skipped(f"{prefix}.{n}", settings.skip)]
        for p in layer.parameters():
            p.requires_grad_(False)
        batches = len(work.inputs)
        with torch.no_grad():  # what the original block makes of these inputs
            targets = [run_layer(layer, work.inputs[i].to(work.device), work.args[i]).detach()
                       for i in range(batches)]
        start = init(work) if init else {}
        quants = {}
        for name in names:
            module = layer.get_submodule(name)
            weight, scale, zero = start.get(name) or (module.weight, *rtn_grid(
                module.weight, settings.bits, settings.group_size if settings.group_size > 0
                else module.in_features, settings.sym))
            quants[name] = FakeQuant(weight, scale, zero, settings.bits, settings.sym, settings.train_weights)
        torch.manual_seed(settings.seed + work.index)  # per block: a resumed walk trains the next block alike
        generator = torch.Generator().manual_seed(settings.seed + work.index)

        def loss_of(i: int):
            out = run_layer(layer, work.inputs[i].to(work.device), work.args[i])
            return torch.nn.functional.mse_loss(out, targets[i])

        def mean_loss() -> float:
            with torch.no_grad():
                return sum(float(loss_of(i)) for i in range(batches)) / batches

        with _deterministic(), _fake_quantized(layer, quants):
            start_loss = mean_loss()
            groups = [g for q in quants.values() for g in q.parameters(settings.lr_scale, settings.lr_weight)]
            optimizer = torch.optim.Adam(groups)
            total_steps = settings.epochs * batches
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)
            step, epochs, best = 0, [], None
            for epoch in range(settings.epochs):
                for i in torch.randperm(batches, generator=generator).tolist():
                    step += 1
                    loss = loss_of(i)
                    if not torch.isfinite(loss):
                        raise TeenyError(f"qat: block {work.index} diverged at step {step}: the loss is "
                                         f"{float(loss.detach())}; lower lr_scale ({settings.lr_scale:g}) or lr_weight "
                                         f"({settings.lr_weight:g})")
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                epochs.append(mean_loss())
                if epochs[-1] < (best[0] if best else start_loss):
                    best = (epochs[-1], [q.snapshot() for q in quants.values()])
            if best is None:  # name the first epoch that ended above the start (else the last)
                rose = next((i for i, loss in enumerate(epochs) if loss > start_loss), len(epochs) - 1)
                raise TeenyError(f"qat: block {work.index} diverged by step {(rose + 1) * batches}: its loss rose "
                                 f"from {start_loss:.4g} to {epochs[rose]:.4g} and no epoch brought it below its "
                                 f"start; lower lr_scale ({settings.lr_scale:g}) or lr_weight ({settings.lr_weight:g})")
            after = best[0]
            for quant, kept in zip(quants.values(), best[1]):
                quant.restore(kept)
        solved = Solved(error=after)
        with torch.no_grad():
            for name, quant in quants.items():
                module = layer.get_submodule(name)
                frozen = quant.freeze()
                module.weight.copy_(quant.weight_hat().to(module.weight.dtype))  # the next block sees these
                for suffix, tensor in on_linear(f"{prefix}.{name}", frozen).items():
                    solved.tensors[f"{name}.{suffix}"] = tensor
                solved.replaced.add(name)
        if curves is not None:
            curves[work.index] = {"before": start_loss, "epochs": epochs, "after": after, "steps": step,
                                  "kept_epoch": epochs.index(after) + 1}
        return solved

    return solve


@contextlib.contextmanager
def _fake_quantized(layer, quants: dict[str, FakeQuant]):
    """Inside: each named linear of ``layer`` computes with its fake-quantized weight."""
    import torch

    modules = []
    for name, quant in quants.items():
        module = layer.get_submodule(name)
        module.forward = lambda x, m=module, q=quant: torch.nn.functional.linear(x, q.weight_hat(), m.bias)
        modules.append(module)
    try:
        yield
    finally:
        for module in modules:
            del module.forward
