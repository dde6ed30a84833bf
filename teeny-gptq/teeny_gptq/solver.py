"""GPTQ as a solver on the core's layer walker: quantize one decoder layer's linears in true-sequential groups
(the architecture spec's groups: q/k/v, o, gate/up, down), each with inputs from the already quantized part.

The walker (:mod:`teeny_core.walker`) streams the layers and the activations; this module only solves a layer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable

from teeny_core import skipped
from teeny_gptq.gptq import GPTQResult, HessianAccumulator, MSESearch, gptq_quantize


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
    module_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per qualified linear name, a bit-width other than ``bits`` (mixed precision)."""


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
        memo = _Memo(layer)
        for k, group in enumerate(groups):
            modules = {n: layer.get_submodule(n) for n in group}
            later = [n for g in groups[k + 1:] for n in g]
            memo.watch(group if later or work.spec.experts else [], later)  # only worth it when replays follow
            bits = {n: settings.module_bits.get(f"{prefix}.{n}", settings.bits) for n in group}
            for name, outcome in _quantize_group(layer, modules, work.inputs, work.args, settings, memo, bits):
                for suffix, tensor in on_linear(f"{prefix}.{name}", outcome).items():
                    solved.tensors[f"{name}.{suffix}"] = tensor
                solved.replaced.add(name)
                losses.append(outcome.result.loss)
        if work.spec.experts and work.inputs is not None:
            for name, outcome in _quantize_experts(layer, work.spec, work.inputs, work.args, prefix, settings,
                                                   memo):
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
    fallback: str | None = None
    """Why this linear was rounded to nearest on GPTQ's grid (an identity Hessian, columns in order) instead of
    solved: calibration never reached it. None when GPTQ solved it."""


def _quantize_group(layer, group: dict[str, Any], hidden, layer_args, settings: GPTQSettings, memo: "_Memo",
                    bits: dict[str, int] | None = None):
    """Accumulate the Hessians of one group's linears over all batches, then GPTQ each of them (at ``bits[name]``,
    default ``settings.bits``)."""
    import torch

    if not group:
        return
    device = next(iter(group.values())).weight.device
    # linears fed the very same input tensor (q/k/v, gate/up) share one Hessian: decided on the first batch
    accumulators: dict[str, HessianAccumulator] = {}
    seen: list[tuple[Any, str]] = []  # this batch's (input tensor, linear whose accumulator took it)
    remaining: set[str] = set()
    handles = []
    for name, module in group.items():
        def hook(mod, inp, name=name, columns=module.in_features):
            x = inp[0]
            same = next((other for t, other in seen if t is x), None)
            if name not in accumulators:
                accumulators[name] = accumulators[same] if same else HessianAccumulator(columns, device=device)
            if same is None:
                accumulators[name].add(x.detach())
                seen.append((x, name))
            elif accumulators[name] is not accumulators[same]:
                raise RuntimeError(f"{name}: its input was shared with {same} on the first batch only")
            memo.record(name, x)
            remaining.discard(name)
            if not remaining:
                raise _Stop  # every linear of the group has its input: the rest of the block is not needed
        handles.append(module.register_forward_pre_hook(hook))

    def before_batch():
        remaining.update(group)
        seen.clear()

    try:
        _replay(layer, hidden, layer_args, device, memo, before_batch)
    finally:
        seen.clear()
        for handle in handles:
            handle.remove()
    for name, module in group.items():
        start = time.perf_counter()
        acc = accumulators.pop(name, None) or HessianAccumulator(module.in_features, device=device)
        fallback = None if acc.rows else "never called during calibration"
        act_order = settings.act_order and not fallback
        factor = acc.factor(act_order=act_order, damp_percent=settings.damp_percent,
                            damp_increment=settings.damp_increment, dtype=torch.float32, name=name)
        result = gptq_quantize(module.weight, None, bits=(bits or {}).get(name, settings.bits),
                               group_size=settings.group_size,
                               sym=settings.sym, act_order=act_order, static_groups=settings.static_groups,
                               block_size=settings.block_size, mse=settings.mse, name=name, factor=factor)
        del acc, factor  # the last linear sharing the accumulator lets its factor go
        with torch.no_grad():
            module.weight.copy_(result.w_hat.to(module.weight.dtype))
        memo.solved(name)
        cpu = dataclasses.replace(result, q=result.q.cpu(), scale=result.scale.cpu(), zero=result.zero.cpu(),
                                  g_idx=result.g_idx.cpu(), w_hat=result.w_hat.cpu())
        bias = module.bias.detach().cpu().clone() if module.bias is not None else None
        yield name, QuantizedLinear(cpu, bias, time.perf_counter() - start, fallback)


def _quantize_experts(layer, spec, hidden, layer_args, prefix: str, settings: GPTQSettings, memo: "_Memo"):
    """GPTQ every routed expert of a mixture-of-experts layer on the tokens its router sends it: first each
    expert's gate/up (one solve over both, whose rows are independent), then its down projection on the
    activations of the quantized gate/up. An expert no calibration token reaches falls back to
    round-to-nearest on the same grid (an identity Hessian, columns in order; its outcome's ``fallback`` says
    why). Yields ``(disk module name, outcome)`` per expert projection."""
    import torch

    ex = spec.experts
    experts = layer.get_submodule(ex.module)
    n_experts, double_inter, _ = experts.gate_up_proj.shape
    inter = double_inter // 2
    device = experts.gate_up_proj.device
    for stage, param in (("gate_up", experts.gate_up_proj), ("down", experts.down_proj)):
        names = {e: [f"{ex.module}.{e}.{p}" for p in (("gate_proj", "up_proj") if stage == "gate_up" else ("down_proj",))]
                 for e in range(n_experts)}
        todo = [e for e in range(n_experts) if not any(skipped(f"{prefix}.{n}", settings.skip) for n in names[e])]
        if not todo:
            continue
        accumulators = {e: HessianAccumulator(param.shape[2], device=device) for e in todo}

        def hook(mod, args):
            states, top_k_index = args[0], args[1]
            for e in todo:
                x = states[(top_k_index == e).any(-1)]
                if stage == "down":
                    gate, up = torch.nn.functional.linear(x, mod.gate_up_proj[e]).chunk(2, dim=-1)
                    x = mod.act_fn(gate) * up
                accumulators[e].add(x.detach())
            raise _Stop

        handle = experts.register_forward_pre_hook(hook)
        try:
            _replay(layer, hidden, layer_args, device, memo)
        finally:
            handle.remove()
        for e in todo:
            start = time.perf_counter()
            acc = accumulators.pop(e)
            H = acc.H
            fallback = None if acc.rows else "no calibration token was routed to this expert"
            if fallback:
                H = torch.eye(param.shape[2], device=device)
            result = gptq_quantize(param[e], H, bits=settings.bits, group_size=settings.group_size,
                                   sym=settings.sym, act_order=settings.act_order and not fallback,
                                   static_groups=settings.static_groups, block_size=settings.block_size,
                                   damp_percent=settings.damp_percent, damp_increment=settings.damp_increment,
                                   mse=settings.mse, name=f"{ex.module}.{e}.{stage}")
            with torch.no_grad():
                param[e].copy_(result.w_hat.to(param.dtype))
            seconds = time.perf_counter() - start
            rows = [slice(0, inter), slice(inter, double_inter)] if stage == "gate_up" else [slice(None)]
            for name, part in zip(names[e], rows):
                piece = dataclasses.replace(result, q=result.q[part].cpu(), scale=result.scale[part].cpu(),
                                            zero=result.zero[part].cpu(), g_idx=result.g_idx.cpu().clone(),
                                            w_hat=result.w_hat[part].cpu())
                yield name, QuantizedLinear(piece, None, seconds, fallback)


def _replay(layer, hidden, layer_args, device, memo: "_Memo", before_batch: Callable[[], None] = lambda: None):
    """Run every calibration batch through the layer (up to where a hook raises :class:`_Stop`), with the
    submodules that ``memo`` holds served from it."""
    import torch

    from teeny_core.modeling import temporaries_on_the_heap
    from teeny_core.walker import run_layer

    with torch.no_grad(), temporaries_on_the_heap():
        for batch, (h, a) in enumerate(zip(hidden, layer_args)):
            before_batch()
            with memo.serving(batch):
                try:
                    run_layer(layer, h.to(device), a)
                except _Stop:
                    pass


MEMO_BYTES = 2**30
"""Most calibration inputs one layer's :class:`_Memo` keeps for a solved linear (beyond it replays recompute)."""


class _Memo:
    """Outputs of a layer's submodules that no later group changes, served to the later replays instead of
    recomputing them. A submodule qualifies once every linear inside it is solved and the last one solved
    ends it: ``self_attn`` after ``o_proj``, whose output is ``o_proj`` of the input recorded while solving it
    (the attention before it depends only on q/k/v, already solved). Each output is checked bit for bit against
    the real submodule the first time it runs in a replay; a submodule that differs is recomputed."""

    def __init__(self, layer):
        self.layer = layer
        self._recording: dict[str, list] = {}  # linear -> its input per batch, while its group is solved
        self._held: dict[str, tuple[Any, list, list]] = {}  # submodule -> (last linear, inputs, outputs so far)
        self._width: dict[str, int] = {}  # checked submodule -> its output tuple's length (0: a tensor)

    def watch(self, group: list[str], later: list[str]) -> None:
        """Record the inputs of the linears of ``group`` that complete their submodule (no linear of ``later``
        inside it), up to :data:`MEMO_BYTES` each."""
        self._recording = {name: [] for name in group if name.rpartition(".")[0]
                           and not any(n.startswith(name.rpartition(".")[0] + ".") for n in later)}

    def record(self, name: str, x) -> None:
        kept = self._recording.get(name)
        if kept is not None:
            kept.append(x.detach())
            if sum(t.numel() * t.element_size() for t in kept) > MEMO_BYTES:
                del self._recording[name]

    def solved(self, name: str) -> None:
        """``name``'s weight is final: its submodule's outputs are the linear applied to the recorded inputs."""
        inputs = self._recording.pop(name, None)
        if inputs:
            self._held[name.rpartition(".")[0]] = (self.layer.get_submodule(name), inputs, [])

    @contextlib.contextmanager
    def serving(self, batch: int):
        """Inside: every held submodule returns its output for ``batch`` (once checked)."""
        handles, replaced = [], []
        for parent, (linear, inputs, outputs) in list(self._held.items()):
            if len(outputs) <= batch:
                outputs.append(linear(inputs[batch]))
            module = self.layer.get_submodule(parent)
            if parent not in self._width:
                handles.append(module.register_forward_hook(self._check(parent, outputs[batch])))
            else:
                width, out = self._width[parent], outputs[batch]
                module.forward = lambda *args, out=out, width=width, **kwargs: \
                    (out, *[None] * (width - 1)) if width else out
                replaced.append(module)
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in replaced:
                del module.forward

    def _check(self, parent: str, expected):
        import torch

        def hook(module, args, output):
            first, rest = (output[0], output[1:]) if isinstance(output, tuple) else (output, ())
            if torch.equal(first, expected) and all(r is None for r in rest):
                self._width[parent] = len(output) if isinstance(output, tuple) else 0
            else:  # its output is not its last linear's: recomputed in every replay
                del self._held[parent]
        return hook
