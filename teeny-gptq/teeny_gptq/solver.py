"""GPTQ as a solver on the core's layer walker: quantize one decoder layer's linears in true-sequential groups
(the architecture spec's groups: q/k/v, o, gate/up, down), each with inputs from the already quantized part.

The walker (:mod:`teeny_core.walker`) streams the layers and the activations; this module only solves a layer.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from typing import Any, Callable

from teeny_gptq.gptq import GPTQResult, HessianAccumulator, MSESearch, gptq_quantize

log = logging.getLogger("teeny_gptq")


class _Stop(Exception):
    """Raised from a hook to end a forward pass early once everything needed was recorded."""


@dataclasses.dataclass
class GPTQSettings:
    """What :func:`gptq_solver` needs from the quantizer's options."""

    bits: int = 4
    group_size: int = 128
    sym: bool = True
    act_order: bool = False
    static_groups: bool = False
    true_sequential: bool = True
    block_size: int = 128
    damp_percent: float = 0.01
    damp_increment: float = 0.0025
    mse: MSESearch | None = None
    skip: tuple[str, ...] = ("lm_head",)
    batch_size: int = 8


def skipped(name: str, patterns) -> bool:
    """Whether a module's qualified name matches one of the glob patterns (or equals one)."""
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


def gptq_solver(settings: GPTQSettings, on_linear: Callable[[str, "QuantizedLinear"], dict[str, Any]]):
    """A walker solver: GPTQ every non-skipped linear of the layer, group by group, in place (each weight
    becomes its dequantized weight, so the next layer sees quantized outputs). ``on_linear(name, outcome)``
    returns the tensors to write for that linear (suffix -> tensor, e.g. ``qweight``)."""

    def solve(work):
        from teeny_core.walker import Solved

        layer, prefix = work.layer, work.prefix
        names = [n for n in work.spec.linears() if not skipped(f"{prefix}.{n}", settings.skip)]
        groups = [[n for n in g.linears if n in names] for g in work.spec.groups] if settings.true_sequential \
            else [names]
        solved = Solved()
        losses = []
        for group in groups:
            modules = {n: layer.get_submodule(n) for n in group}
            for name, outcome in _quantize_group(layer, modules, work.inputs, work.args, settings):
                for suffix, tensor in on_linear(f"{prefix}.{name}", outcome).items():
                    solved.tensors[f"{name}.{suffix}"] = tensor
                solved.replaced.add(name)
                losses.append(outcome.result.loss)
        solved.error = max(losses) if losses else None
        return solved

    return solve


@dataclasses.dataclass
class QuantizedLinear:
    """One linear's GPTQ outcome, everything on the CPU."""

    result: GPTQResult
    bias: Any
    seconds: float


def _quantize_group(layer, group: dict[str, Any], hidden, layer_args, settings: GPTQSettings):
    """Accumulate the Hessians of one group's linears over all batches, then GPTQ each of them."""
    import torch

    from teeny_core.walker import run_layer

    if not group:
        return
    device = next(iter(group.values())).weight.device
    accumulators = {name: HessianAccumulator(m.in_features, device=device) for name, m in group.items()}
    remaining: set[str] = set()
    handles = []
    for name, module in group.items():
        def hook(mod, inp, name=name):
            accumulators[name].add(inp[0].detach())
            remaining.discard(name)
            if not remaining:
                raise _Stop  # every linear of the group has its input: the rest of the block is not needed
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for h, a in zip(hidden, layer_args):
                remaining.update(group)
                try:
                    run_layer(layer, h.to(device), a)
                except _Stop:
                    pass
    finally:
        for handle in handles:
            handle.remove()
    for name, module in group.items():
        start = time.perf_counter()
        acc = accumulators.pop(name)
        H = acc.H
        if acc.rows == 0:
            log.warning("%s: never called during calibration; quantizing with round-to-nearest", name)
            H = torch.eye(module.in_features, device=device)
        result = gptq_quantize(module.weight, H, bits=settings.bits, group_size=settings.group_size,
                               sym=settings.sym, act_order=settings.act_order,
                               static_groups=settings.static_groups, block_size=settings.block_size,
                               damp_percent=settings.damp_percent, damp_increment=settings.damp_increment,
                               mse=settings.mse, name=name)
        del H, acc
        with torch.no_grad():
            module.weight.copy_(result.w_hat.to(module.weight.dtype))
        cpu = dataclasses.replace(result, q=result.q.cpu(), scale=result.scale.cpu(), zero=result.zero.cpu(),
                                  g_idx=result.g_idx.cpu(), w_hat=result.w_hat.cpu())
        bias = module.bias.detach().cpu().clone() if module.bias is not None else None
        yield name, QuantizedLinear(cpu, bias, time.perf_counter() - start)
