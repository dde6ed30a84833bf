"""SmoothQuant (Xiao et al., 2022) and W8A8 weight rounding as a solver on the core's layer walker.

Per decoder layer: one pass of the float layer records, for each group of linears that share an input (the
architecture spec's groups), the per-channel maxima of that input and a strided sample of its tokens. Each group
then gets per-input-channel scales ``s_j = max|X_j|**alpha / max|W_j|**(1 - alpha)``; ``1/s`` is folded into the
operation producing the input (a norm, or the previous linear's rows) and ``s`` into the group's weights, so the
float function is unchanged while activation outliers move into the weights. ``alpha="auto"`` picks, per group,
the alpha on a grid whose int8 weights and int8 activations (per token, or with the static per-tensor scale the
checkpoint would store) reproduce the group's float outputs best on the sampled tokens. Weights are then rounded to int8 per output channel, symmetric (or solved with GPTQ).
torch is imported inside the functions.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from teeny_core import TeenyError

ALPHA_GRID = tuple(i / 10 for i in range(11))
SAMPLE_TOKENS = 512
"""Tokens (evenly strided over the calibration set) on which alpha=auto scores each candidate."""


@dataclasses.dataclass
class SmoothSettings:
    """What the solver needs from the quantizer's options. ``alpha`` None: no smoothing; "auto": searched."""

    alpha: float | str | None = 0.5
    static: bool = False
    skip: tuple[str, ...] = ("lm_head",)


def int8_weight(w):
    """Symmetric int8 codes [out, in] and float32 scales [out, 1] of ``w``: one scale per output channel."""
    import torch

    scale = w.float().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 127.0
    return torch.round(w.float() / scale).clamp(-127, 127).to(torch.int8), scale


def fake_w8a8(x, w, input_scale=None):
    """``x @ w.T`` with both sides rounded as deployed: w per channel, x per token (or with one static
    ``input_scale``) (float32 simulation)."""
    from teeny_core.int8 import quantize_tokens

    codes, scale = int8_weight(w)
    qx, sx = quantize_tokens(x, input_scale)
    return (qx.float() * sx) @ (codes.float() * scale).t()


def smoothing_scales(act_max, weights: list, alpha: float, tie=None):
    """Per-input-channel SmoothQuant scales from the activations' channel maxima and the group's weights."""
    import torch

    w_max = torch.cat([w.float().abs() for w in weights]).amax(0)
    if tie is not None:
        act_max, w_max = tie(act_max), tie(w_max)
    s = act_max.clamp_min(1e-5).pow(alpha) / w_max.clamp_min(1e-5).pow(1 - alpha)
    return s.clamp_min(1e-5)


def search_alpha(x, act_max, weights: list, tie=None, static: bool = False) -> tuple[float, Any]:
    """The alpha of :data:`ALPHA_GRID` (and its scales) whose W8A8 group output is closest to the float one;
    ``static``: activations quantized with the one scale :func:`smooth_layer` stores, ``max(act_max / s) / 127``."""
    import torch

    reference = [x @ w.float().t() for w in weights]
    best = (float("inf"), 0.0, None)
    for alpha in ALPHA_GRID:
        s = smoothing_scales(act_max, weights, alpha, tie)
        input_scale = (act_max / s).max() / 127.0 if static else None
        err = sum(float((fake_w8a8(x / s, w.float() * s, input_scale) - ref).pow(2).mean())
                  for w, ref in zip(weights, reference))
        if err < best[0]:
            best = (err, alpha, s)
    del reference
    return best[1], best[2] if best[2] is not None else torch.ones_like(act_max)


def _kv_tie(parent, width: int):
    """For o_proj under grouped-query attention: a function making a per-channel vector equal over the query
    heads that share one value head (they read the same v_proj rows), or None when no heads are shared."""
    n_rep = getattr(parent, "num_key_value_groups", 1)
    head_dim = getattr(parent, "head_dim", None)
    if n_rep <= 1:
        return None, 1, 0
    if not head_dim or width % (n_rep * head_dim):
        raise TeenyError(f"w8a8: cannot tie smoothing scales of {width} o_proj inputs to value heads")

    def tie(v):
        kv = v.reshape(-1, n_rep, head_dim).amax(1, keepdim=True)
        return kv.expand(-1, n_rep, head_dim).reshape(-1)

    return tie, n_rep, head_dim


def _capture(layer, spec, hidden: list, kwargs: list, static: bool):
    """One pass of the float layer: per group input, channel maxima and a token sample."""
    import torch

    from teeny_core.walker import run_layer

    feeds = {g.linears[0] for g in spec.groups}
    stats: dict[str, dict[str, Any]] = {n: {"max": None, "rows": []} for n in feeds}
    total = sum(h.shape[0] * h.shape[1] for h in hidden)
    stride = max(1, total // SAMPLE_TOKENS)

    def record(name):
        def hook(mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).float()
            m = x.abs().amax(0)
            st = stats[name]
            st["max"] = m if st["max"] is None else torch.maximum(st["max"], m)
            st["rows"].append(x[::stride])
        return hook

    handles = [layer.get_submodule(n).register_forward_pre_hook(record(n)) for n in feeds]
    try:
        for h, kw in zip(hidden, kwargs):
            run_layer(layer, h, ((), kw))
    finally:
        for handle in handles:
            handle.remove()
    return {n: {"max": st["max"], "x": torch.cat(st["rows"])[:SAMPLE_TOKENS]} for n, st in stats.items()}


def smooth_layer(work, settings: SmoothSettings) -> dict[str, Any]:
    """Fold SmoothQuant scales into the layer in place; returns per group ``{"alpha", "input_max",
    "act_ratio_before", "act_ratio_after"}`` keyed by the group's first linear, plus each linear's static input
    scale (``input_scale`` per linear name) when ``settings.static``."""
    import torch

    layer, spec = work.layer, work.spec
    hidden = [h.to(work.device) for h in work.inputs]
    kwargs = []
    for rest, kw in work.args:
        if rest:
            raise TeenyError(f"w8a8: {spec.layer_class} is called with positional arguments besides the hidden "
                             "states; its groups cannot be calibrated")
        kwargs.append(kw)
    stats = _capture(layer, spec, hidden, kwargs, settings.static)
    del hidden
    report: dict[str, Any] = {}
    for group in spec.groups:
        feed = group.linears[0]
        linears = [layer.get_submodule(n) for n in group.linears]
        act_max, x = stats[feed]["max"], stats[feed]["x"]
        entry: dict[str, Any] = {"act_ratio_before": _outlier_ratio(act_max)}
        if settings.alpha is not None:
            prev = _producer(layer, group, spec)
            tie, n_rep, head_dim = (None, 1, 0)
            if isinstance(prev, torch.nn.Linear) and feed.endswith("o_proj"):
                tie, n_rep, head_dim = _kv_tie(layer.get_submodule(feed.rpartition(".")[0]), linears[0].in_features)
            weights = [m.weight for m in linears]
            if settings.alpha == "auto":
                alpha, s = search_alpha(x, act_max, weights, tie, settings.static)
            else:
                alpha, s = float(settings.alpha), smoothing_scales(act_max, weights, float(settings.alpha), tie)
            _fold(prev, s, spec, n_rep, head_dim)
            for m in linears:
                m.weight.mul_(s.view(1, -1))
            act_max, x = act_max / s, x / s
            entry["alpha"] = alpha
        entry["act_ratio_after"] = _outlier_ratio(act_max)
        entry["input_max"] = float(act_max.max())
        report[f"{work.prefix}.{feed}"] = entry
        if settings.static:
            for name in group.linears:
                report.setdefault("input_scale", {})[name] = float(act_max.max()) / 127.0
    return report


def _outlier_ratio(channel_max) -> float:
    """Largest over median per-channel absolute maximum: how far the worst outlier channel stands out."""
    return float(channel_max.max() / channel_max.median().clamp_min(1e-12))


def _producer(layer, group, spec):
    """The norm or linear whose output is the group's input; a one-line refusal where it is neither."""
    import torch

    try:
        prev = layer.get_submodule(group.prev)
    except AttributeError:
        prev = None
    weight = getattr(prev, "weight", None)
    if isinstance(prev, torch.nn.Linear) or (weight is not None and weight.dim() == 1):
        return prev
    raise TeenyError(f"w8a8: {group.linears[0]} of {spec.layer_class} has no norm or linear before it "
                     f"({group.prev!r}) to fold smoothing scales into; use smooth=false")


def _fold(prev, s, spec, n_rep: int, head_dim: int) -> None:
    """Divide the producer's output channels by ``s``: a norm's weight, or a linear's last rows (value heads)."""
    import torch

    if isinstance(prev, torch.nn.Linear):
        prev_s = s.reshape(-1, n_rep, head_dim)[:, 0, :].reshape(-1) if n_rep > 1 else s
        rows = slice(prev.out_features - prev_s.numel(), None)  # a fused producer feeds from its last rows
        prev.weight[rows].div_(prev_s.view(-1, 1))
        if prev.bias is not None:
            prev.bias[rows].div_(prev_s)
    else:
        prev.weight.copy_((prev.weight + spec.norm_offset) / s - spec.norm_offset)


def w8a8_solver(settings: SmoothSettings, weights: str, on_linear: Callable[..., dict[str, Any]],
                report: dict[str, Any], gptq_settings=None):
    """A walker solver: smooth (unless ``settings.alpha`` is None), then round each linear's weight to int8 per
    output channel (``weights="rtn"``) or solve it with teeny-gptq's GPTQ at 8 bits per channel (``"gptq"``).
    ``on_linear(name, codes int8, scale [out, 1], input_scale or None)`` returns the tensors to write."""

    def solve(work):
        import torch

        from teeny_core.walker import Solved

        if work.inputs is None:
            raise TeenyError("w8a8 needs calibration inputs for every layer")
        with torch.no_grad():
            found = smooth_layer(work, settings)
        input_scales = found.pop("input_scale", {})
        report.update(found)
        names = [n for n in work.spec.linears()]
        if weights == "gptq":
            from teeny_gptq.solver import gptq_solver

            def from_gptq(full, outcome):
                r = outcome.result
                codes = (r.q.to(torch.int32) - r.zero.to(torch.int32)).clamp(-128, 127).to(torch.int8)
                leaf = full[len(work.prefix) + 1:]
                return on_linear(full, codes, r.scale.float().reshape(-1, 1), input_scales.get(leaf))

            return gptq_solver(gptq_settings, from_gptq)(work)
        solved = Solved()
        with torch.no_grad():
            for name in names:
                module = work.layer.get_submodule(name)
                codes, scale = int8_weight(module.weight)
                module.weight.copy_(codes.float() * scale)
                for suffix, tensor in on_linear(f"{work.prefix}.{name}", codes, scale,
                                                input_scales.get(name)).items():
                    solved.tensors[f"{name}.{suffix}"] = tensor
                solved.replaced.add(name)
        return solved

    return solve
