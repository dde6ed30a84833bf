"""Activation-aware weight quantization (Lin et al., 2023) in plain torch, for CPU and CUDA, as a solver on the
core's streaming layer walker (:mod:`teeny_core.walker`).

Per decoder layer: capture the inputs of each group of linears that share an input (the architecture spec's
groups), search per-input-channel scales ``s = x_mean**a / w_mean**(1-a)`` that minimise the group's quantized
output error, fold ``1/s`` into the operation that produces the input (a norm, ``v_proj`` or ``up_proj``) so the
float function is unchanged, search a clipping ratio per output channel and group, and quantize; the walker
feeds the quantized layer's outputs to the next layer.

torch is imported inside the functions, so importing this module is light.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable

from teeny_core import TeenyError, skipped

log = logging.getLogger("teeny.awq")

CLIP_TOKENS = 512
"""Tokens (evenly strided over the calibration set) used by the clipping search."""

NO_CLIP = ("q_proj", "k_proj", "qkv_proj")
"""Linears whose outputs meet in the q·k product: a per-channel output error says little there, so AWQ
keeps their full range (as the reference implementation does); Phi-3's fused qkv_proj holds q and k too."""


@dataclasses.dataclass
class AwqSettings:
    """What the algorithm needs from the quantizer's options."""

    bits: int = 4
    group_size: int = 128
    zero_point: bool = True
    grid: int = 20
    duo_scaling: bool = True
    max_shrink: float = 0.5
    clip: bool = True
    skip: tuple[str, ...] = ("lm_head",)
    batch_size: int = 8
    module_bits: dict[str, int] = dataclasses.field(default_factory=dict)
    """Per-linear bits (qualified name -> bits) under ``target_bits``; the others get ``bits``."""
    lowest_zero: int = 0
    """Smallest zero point of the grid: 1 for a GPTQ v1 checkpoint, which stores ``zero - 1``."""

    def bits_of(self, name: str) -> int:
        """The bit-width of linear ``name`` (qualified)."""
        return self.module_bits.get(name, self.bits)


@dataclasses.dataclass
class QuantizedWeight:
    """One quantized linear: integer codes [out, in] (int32), fp16-exact float32 scales and integer zeros
    [out, groups]. ``weight()`` is the exact float weight the checkpoint encodes."""

    q: Any
    scale: Any
    zero: Any

    def weight(self):
        from teeny_core.quant import dequantize_weight

        return dequantize_weight(self.q, self.scale, self.zero)


@dataclasses.dataclass
class _Group:
    """Linears sharing one input (qualified name, module) and the scored block's output for that input."""

    name: str
    linears: list[tuple[str, Any]]
    inspect: Callable[[int, Any], Any]  # (chunk index, input) -> output of the scored block


# --- quantization on the checkpoint's grid ---------------------------------------------------------

def _grid(w, bits: int, group_size: int, zero_point: bool, clip, lowest_zero: int = 0):
    """Grouped view [out*groups, group_size] of ``w`` and its fp16-exact scale and integer zero [out*groups, 1]."""
    import torch

    from teeny_core.quant import qparams

    rows, cols = w.shape
    grouped = w.float().reshape(rows * (cols // group_size), group_size)
    if clip is not None and not isinstance(clip, float):
        clip = clip.reshape(-1, 1)
    scale, zero = qparams(grouped, bits, "asym" if zero_point else "sym", clip=1.0 if clip is None else clip)
    scale = scale.clamp_min(2.0**-24).to(torch.float16).float()  # what an fp16 `scales` tensor stores
    return grouped, scale, zero.clamp(lowest_zero, 2**bits - 1)


def quantize_grouped(w, bits: int, group_size: int, zero_point: bool, clip=None,
                     lowest_zero: int = 0) -> QuantizedWeight:
    """Quantize ``w`` [out, in] per group of ``group_size`` input columns with fp16-exact scales.

    ``clip`` (None, a float, or a tensor [out, groups]) shrinks each group's range before choosing scales.
    Asymmetric (zero_point) or symmetric with the zero fixed at ``2**(bits-1)`` (the core's convention);
    ``lowest_zero`` bounds the zero point from below (a group whose range would need a smaller one is clipped).
    """
    import torch

    from teeny_core.quant import quantize

    rows, cols = w.shape
    grouped, scale, zero = _grid(w, bits, group_size, zero_point, clip, lowest_zero)
    q = quantize(grouped, scale, zero, bits).to(torch.int32).reshape(rows, cols)
    return QuantizedWeight(q, scale.reshape(rows, -1), zero.reshape(rows, -1))


def fake_quantize(w, bits: int, group_size: int, zero_point: bool, clip=None, lowest_zero: int = 0):
    """``w`` rounded onto its quantization grid (float32): equal to ``quantize_grouped(...).weight()``."""
    from teeny_core.quant import dequantize, quantize

    grouped, scale, zero = _grid(w, bits, group_size, zero_point, clip, lowest_zero)
    return dequantize(quantize(grouped, scale, zero, bits), scale, zero).reshape(w.shape)


# --- the searches ----------------------------------------------------------------------------------

def _weight_mean(weights, group_size: int):
    """AWQ's per-input-channel weight magnitude: |w| normalised by each group's max, averaged over rows."""
    import torch

    w = torch.cat(weights, dim=0)
    rows, cols = w.shape
    g = w.abs().reshape(-1, group_size)
    g = g / g.amax(dim=1, keepdim=True).clamp_min(1e-12)
    return g.reshape(rows, cols).mean(0)


def search_scales(group: _Group, feats: list, settings: AwqSettings, kv_heads: tuple[int, int] | None = None):
    """The per-input-channel scale (1-D, on the input's device) minimising the group's quantized output error,
    and that error.

    The candidates are ``s = x_mean**r / w_mean**(1-r)`` (``x_mean**r`` without duo scaling) for
    ``r = 0, 1/grid, ...``, normalised to a geometric mean of max and min of 1, plus ``s = 1`` (plain rounding),
    so the search never picks something worse on the calibration data than not scaling.
    ``kv_heads=(n_rep, head_dim)`` ties the scales of attention heads that share one value head (GQA).
    """
    import torch

    to_quantize = [(n, m) for n, m in group.linears if not skipped(n, settings.skip)]
    x_mean = torch.stack([f.abs().reshape(-1, f.shape[-1]).float().mean(0) for f in feats]).mean(0)
    w_mean = _weight_mean([m.weight.float() for _, m in group.linears], settings.group_size)
    if kv_heads is not None:  # average over the heads that share a value head, then repeat back
        n_rep, head_dim = kv_heads
        x_mean = _tie_heads(x_mean, n_rep, head_dim)
        w_mean = _tie_heads(w_mean, n_rep, head_dim)
    originals = {n: m.weight.detach().clone() for n, m in to_quantize}
    with torch.no_grad():
        reference = [group.inspect(i, f) for i, f in enumerate(feats)]

        def loss_for(s) -> float:
            for n, m in to_quantize:
                w = originals[n] * s.view(1, -1)
                m.weight.copy_(fake_quantize(w, settings.bits_of(n), settings.group_size, settings.zero_point,
                                             lowest_zero=settings.lowest_zero) / s.view(1, -1))
            total = 0.0
            for i, f in enumerate(feats):
                total += float((group.inspect(i, f) - reference[i]).float().pow(2).mean())
            return total / len(feats)

        best_s = torch.ones_like(x_mean)
        best_loss = loss_for(best_s)
        for step in range(settings.grid):
            r = step / settings.grid
            if settings.duo_scaling:
                s = x_mean.pow(r) / w_mean.pow(1 - r).clamp_min(1e-4)
            else:
                s = x_mean.pow(r)
            s = s.clamp_min(1e-4)
            s = s / (s.max() * s.min()).sqrt()
            loss = loss_for(s)
            if loss < best_loss:
                best_loss, best_s = loss, s
        for n, m in to_quantize:
            m.weight.copy_(originals[n])
    log.debug("awq %s: best loss %.3g", group.name, best_loss)
    return best_s, best_loss


def _tie_heads(v, n_rep: int, head_dim: int):
    """Average a per-channel vector over query heads sharing a kv head, and repeat it back over them."""
    kv = v.reshape(-1, n_rep, head_dim).mean(1, keepdim=True)
    return kv.expand(-1, n_rep, head_dim).reshape(-1)


def search_clip(w, x, settings: AwqSettings, bits: int | None = None):
    """Per (output channel, group) clipping ratio in ``[1 - max_shrink, 1]`` minimising the error of ``x @ w.T``
    on the ``bits`` grid (default ``settings.bits``).

    ``x`` is [tokens, in]. Returns a tensor [out, groups].
    """
    import torch

    rows, cols = w.shape
    gs = settings.group_size
    groups = cols // gs
    xg = x.float().reshape(-1, groups, gs)
    steps = max(1, int(settings.max_shrink * settings.grid))
    best_ratio = torch.ones(rows, groups, device=w.device)
    per_batch = max(1, 2**24 // max(1, xg.shape[0] * groups))
    for start in range(0, rows, per_batch):
        wb = w[start:start + per_batch].float()
        wg = wb.reshape(-1, groups, gs)
        reference = torch.einsum("ngk,ogk->ong", xg, wg)
        best_err = torch.full((wb.shape[0], groups), float("inf"), device=w.device)
        ratios = best_ratio[start:start + per_batch]
        for step in range(steps):
            ratio = 1.0 - step / settings.grid
            wq = fake_quantize(wb, bits or settings.bits, gs, settings.zero_point, clip=ratio,
                               lowest_zero=settings.lowest_zero).reshape(-1, groups, gs)
            err = (torch.einsum("ngk,ogk->ong", xg, wq) - reference).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            ratios.copy_(torch.where(better, torch.full_like(ratios, ratio), ratios))
    return best_ratio


def _clip_tokens(chunks: list):
    """About :data:`CLIP_TOKENS` rows, evenly strided over all calibration tokens."""
    import torch

    x = torch.cat([c.reshape(-1, c.shape[-1]) for c in chunks])
    step = max(1, x.shape[0] // CLIP_TOKENS)
    return x[::step][:CLIP_TOKENS]


# --- the solver on the core's layer walker ---------------------------------------------------------

def awq_solver(settings: AwqSettings, on_linear: Callable[[str, QuantizedWeight], dict[str, Any]], *,
               quantize: bool = True):
    """A walker solver (:func:`teeny_core.walker.walk`): AWQ one decoder layer in place, float32.

    The architecture spec's groups say which linears share an input and which norm or linear produces it.
    Every group's input is captured in one pass of the float layer; then, group by group, scales are searched
    and ``1/s`` folded into the producer (and ``s`` into every other consumer of a norm's output, such as a
    mixture-of-experts router and its routed experts, which stay in full precision); then each linear is
    clipped and quantized, and its weight replaced by the dequantized one. ``on_linear(name, weight)`` returns
    the tensors to write for that linear (suffix -> tensor; empty: the walker writes the dequantized weight).
    With ``quantize=False`` only the scales are searched and folded (the float function must not change).
    """

    def solve(work):
        import torch

        from teeny_core.walker import Solved

        if work.inputs is None:
            raise TeenyError("awq needs calibration inputs for every layer")
        solved = Solved()
        with torch.no_grad():
            losses = _solve_layer(work, settings, quantize, solved, on_linear)
        solved.error = max(losses) if losses else None
        return solved

    return solve


def _solve_layer(work, settings: AwqSettings, quantize: bool, solved, on_linear) -> list[float]:
    import torch

    layer, spec, prefix = work.layer, work.spec, work.prefix
    hidden = [h.to(work.device) for h in work.inputs]
    kwargs = []
    for rest, kw in work.args:
        if rest:
            raise TeenyError(f"awq: {spec.layer_class} is called with positional arguments besides the hidden "
                             "states; its attention cannot be scored")
        kwargs.append(kw)
    feats, consumers = _capture(layer, spec, hidden, kwargs)
    losses = []
    for group in spec.groups:
        names = [f"{prefix}.{n}" for n in group.linears]
        if all(skipped(n, settings.skip) for n in names):
            continue
        feed = group.linears[0]
        linears = [(full, layer.get_submodule(n)) for full, n in zip(names, group.linears)]
        width = linears[0][1].in_features
        prev = layer.get_submodule(group.prev)
        kv_heads = None
        if isinstance(prev, torch.nn.Linear):
            parent = layer.get_submodule(feed.rpartition(".")[0]) if "." in feed else layer
            n_rep = getattr(parent, "num_key_value_groups", 1)
            if n_rep > 1:  # o_proj under grouped-query attention: value heads fan out to n_rep query heads each
                head_dim = getattr(parent, "head_dim", None)
                if not head_dim or width % n_rep or (width // n_rep) % head_dim:
                    continue  # value heads do not map onto o_proj's input channels: leave it unscaled
                kv_heads = (n_rep, head_dim)
        scored = layer.get_submodule(group.scored)
        inspect = _inspector(scored, kwargs, [h.shape for h in hidden])
        s, loss = search_scales(_Group(feed, linears, inspect), feats[feed], settings, kv_heads)
        losses.append(loss)
        if isinstance(prev, torch.nn.Linear):
            prev_s = s.reshape(-1, kv_heads[0], kv_heads[1])[:, 0, :].reshape(-1) if kv_heads else s
            # a fused producer (Phi-3's qkv_proj, gate_up_proj) feeds the group from its last rows (v, up)
            rows = slice(prev.out_features - prev_s.numel(), None)
            prev.weight[rows].div_(prev_s.view(-1, 1))
            if prev.bias is not None:
                prev.bias[rows].div_(prev_s)
            for _, m in linears:
                m.weight.mul_(s.view(1, -1))
        else:
            prev.weight.copy_((prev.weight + spec.norm_offset) / s - spec.norm_offset)
            for name in consumers[group.prev]:
                experts = spec.experts is not None and name == spec.experts.module
                _scale_columns(layer.get_submodule(name), s, experts)
        feats[feed] = [f / s for f in feats[feed]]  # the group's input is now x / s

    if quantize:
        for group in spec.groups:
            x = _clip_tokens(feats[group.linears[0]])
            for name in group.linears:
                full = f"{prefix}.{name}"
                if skipped(full, settings.skip):
                    continue
                m = layer.get_submodule(name)
                w = m.weight.float()
                bits = settings.bits_of(full)
                clip = search_clip(w, x, settings, bits) if settings.clip and not name.endswith(NO_CLIP) else None
                qw = quantize_grouped(w, bits, settings.group_size, settings.zero_point, clip, settings.lowest_zero)
                m.weight.copy_(qw.weight())
                cpu = QuantizedWeight(qw.q.cpu(), qw.scale.cpu(), qw.zero.cpu())
                tensors = on_linear(full, cpu)
                for suffix, tensor in tensors.items():
                    solved.tensors[f"{name}.{suffix}"] = tensor
                if tensors:
                    solved.replaced.add(name)
    return losses


def _inspector(scored, kwargs: list, shapes: list):
    """(chunk index, input) -> the scored block's output; a block taking keyword arguments (attention) gets
    the layer's own (rotary embeddings, mask) for that chunk."""
    import inspect
    import torch

    takes_kwargs = not isinstance(scored, torch.nn.Linear) and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(scored.forward).parameters.values())

    def run(i, x):
        if not isinstance(scored, torch.nn.Linear):  # a block gets the [batch, seq, hidden] layout it is run with
            x = x.reshape(*shapes[i][:-1], x.shape[-1])
        out = scored(hidden_states=x, **kwargs[i]) if takes_kwargs else scored(x)
        return out[0] if isinstance(out, tuple) else out

    return run


def _capture(layer, spec, hidden: list, kwargs: list):
    """One pass of the float layer: the input of every group's first linear per chunk, and, for every norm
    that produces a group's input, the modules reading its output (found on the first chunk, by value)."""
    import torch

    from teeny_core.walker import run_layer

    feeds = {g.linears[0] for g in spec.groups}
    norms = {g.prev for g in spec.groups if not isinstance(layer.get_submodule(g.prev), torch.nn.Linear)}
    feats: dict[str, list] = {name: [] for name in feeds}
    norm_out: dict[str, Any] = {}
    first_in: dict[str, Any] = {}
    readers = {name: m for name, m in layer.named_modules()
               if name and (isinstance(getattr(m, "weight", None), torch.nn.Parameter) and m.weight.dim() == 2
                            or (spec.experts and name == spec.experts.module))}
    def reader(name):
        def record(mod, args):
            if args:
                first_in.setdefault(name, args[0].detach())
        return record

    every_chunk = [layer.get_submodule(name).register_forward_pre_hook(
        lambda mod, args, name=name: feats[name].append(args[0].detach())) for name in feeds]
    first_chunk = [layer.get_submodule(name).register_forward_hook(
        lambda mod, args, out, name=name: norm_out.setdefault(name, out.detach())) for name in norms]
    first_chunk += [module.register_forward_pre_hook(reader(name)) for name, module in readers.items()]
    try:
        for i, (h, kw) in enumerate(zip(hidden, kwargs)):
            run_layer(layer, h, ((), kw))
            if i == 0:
                for handle in first_chunk:
                    handle.remove()
    finally:
        for handle in every_chunk + first_chunk:
            handle.remove()
    consumers: dict[str, list[str]] = {}
    for norm in norms:
        out = norm_out[norm]
        consumers[norm] = [name for name, x in first_in.items()
                           if x.numel() == out.numel() and torch.equal(x.reshape(out.shape), out)]
        for g in spec.groups:
            if g.prev == norm and not set(g.linears) <= set(consumers[norm]):
                raise TeenyError(f"awq cannot fold scales in {spec.layer_class}: the input of {g.linears[0]} is "
                                 f"not the output of its {norm}")
    return feats, consumers


def _scale_columns(module, s, experts: bool) -> None:
    """Multiply the input channels of a module reading a scaled norm's output by ``s``."""
    if experts:
        module.gate_up_proj.mul_(s)  # the fused routed experts: [experts, 2 * inter, hidden]
    else:
        module.weight.mul_(s.view(1, -1))
