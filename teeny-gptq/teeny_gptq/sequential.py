"""Layer-by-layer GPTQ over a transformers decoder: capture each block's inputs, quantize its linears in
true-sequential groups, and feed the quantized block's outputs to the next block.

Only one decoder block and its calibration activations (inputs and outputs) are live at a time.
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
    """What :func:`quantize_decoder` needs from the quantizer's options."""

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


def _move_outside(model, layers, device) -> None:
    """Move every parameter and buffer that is not inside a decoder layer to ``device``."""
    inside = {id(m) for layer in layers for m in layer.modules()}
    for module in model.modules():
        if id(module) not in inside:
            module._apply(lambda t: t.to(device), recurse=False)


def capture_layer_inputs(model, layers, batches, device):
    """Run the calibration batches up to the first decoder layer.

    Returns ``(inputs, kwargs)``: the first layer's hidden states per batch, and per batch a list with the
    extra positional args and keyword args each layer receives (position embeddings, attention masks, ...;
    they differ between layer types, e.g. Gemma 3's sliding and global attention). Every layer is replaced
    by the identity for this pass and the pass stops at the last layer, so no block is computed.
    """
    import torch

    inputs: list[Any] = []
    per_batch: list[list[tuple[tuple, dict]]] = []
    record: list[tuple[tuple, dict] | None] = []

    def catcher(index: int):
        def forward(*args, **kwargs):
            if args:
                hidden, rest = args[0], args[1:]
            else:
                hidden, rest = kwargs.pop("hidden_states"), ()
            record[index] = (rest, kwargs)
            if index == 0:
                inputs.append(hidden)
            if index == len(layers) - 1:
                raise _Stop
            return hidden
        return forward

    _move_outside(model, layers, device)
    for i, layer in enumerate(layers):
        layer.forward = catcher(i)
    try:
        with torch.no_grad():
            for batch in batches:
                record = [None] * len(layers)
                try:
                    model(input_ids=batch.to(device), use_cache=False)
                except _Stop:
                    pass
                if any(r is None for r in record):
                    raise RuntimeError("the model did not call every decoder layer during calibration")
                per_batch.append(record)  # type: ignore[arg-type]
    finally:
        for layer in layers:
            del layer.forward
        _move_outside(model, layers, "cpu")
    return inputs, per_batch


def _call(layer, hidden, args_kwargs):
    args, kwargs = args_kwargs
    out = layer(hidden, *args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


def sequential_groups(layer, linears: dict[str, Any], hidden, args_kwargs) -> list[list[str]]:
    """Linears of one block in true-sequential groups: those fed the same input tensor form a group (q/k/v,
    gate/up), in the order the block first calls them. Linears the block never calls come last, alone."""
    import torch

    calls: list[tuple[str, Any]] = []  # holding the inputs keeps their memory from being reused mid-pass
    handles = []
    for name, module in linears.items():
        def hook(mod, inp, name=name):
            calls.append((name, inp[0]))
        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            _call(layer, hidden, args_kwargs)
    finally:
        for h in handles:
            h.remove()
    groups: dict[tuple, list[str]] = {}
    assigned: set[str] = set()
    for name, x in calls:
        if name not in assigned:
            assigned.add(name)
            groups.setdefault((x.data_ptr(), x.storage_offset(), tuple(x.shape)), []).append(name)
    return list(groups.values()) + [[n] for n in linears if n not in assigned]


@dataclasses.dataclass
class QuantizedLinear:
    """One linear's GPTQ outcome, everything on the CPU."""

    result: GPTQResult
    bias: Any
    seconds: float


def quantize_decoder(model, calibration_ids, settings: GPTQSettings, device: str = "cpu",
                     on_linear: Callable[[str, QuantizedLinear], None] | None = None,
                     progress: Callable[[int, int], None] | None = None) -> dict[str, QuantizedLinear]:
    """GPTQ every (non-skipped) linear inside the decoder layers of ``model``, block by block, in place.

    The model lives on the CPU; each block is moved to ``device`` while it is worked on. Each quantized
    linear's weight is replaced by its dequantized weight (so later blocks see quantized outputs), and
    ``on_linear(name, outcome)`` is called as each finishes (the default collects them all and returns them).
    """
    import torch

    from teeny_core.modeling import decoder_layers, linear_layers

    layers = decoder_layers(model)
    qualified = {id(m): n for n, m in model.named_modules()}
    batches = list(torch.split(calibration_ids, settings.batch_size))
    collected: dict[str, QuantizedLinear] = {}
    on_linear = on_linear or collected.__setitem__
    hidden, layer_args = capture_layer_inputs(model, layers, batches, device)

    for index, layer in enumerate(layers):
        layer.to(device)
        prefix = qualified[id(layer)]
        linears = {name: m for name, m in linear_layers(layer, f"{prefix}.").items()
                   if not skipped(name, settings.skip)}
        if settings.true_sequential:
            groups = sequential_groups(layer, linears, hidden[0], layer_args[0][index])
        else:
            groups = [list(linears)]
        for group in groups:
            for name, outcome in _quantize_group(layer, {n: linears[n] for n in group}, hidden,
                                                 [a[index] for a in layer_args], settings):
                on_linear(name, outcome)
        with torch.no_grad():
            hidden = [_call(layer, h, a[index]) for h, a in zip(hidden, layer_args)]
        layer.to("cpu")
        if progress:
            progress(index + 1, len(layers))
    return collected


def _quantize_group(layer, group: dict[str, Any], hidden, layer_args, settings: GPTQSettings):
    """Accumulate the Hessians of one group's linears over all batches, then GPTQ each of them."""
    import torch

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
                    _call(layer, h, a)
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
