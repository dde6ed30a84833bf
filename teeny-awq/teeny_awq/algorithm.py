"""Activation-aware weight quantization (Lin et al., 2023) in plain torch, for CPU and CUDA.

Layer by layer: capture the inputs of each group of linears that share an input, search per-input-channel
scales ``s = x_mean**a / w_mean**(1-a)`` that minimise the group's quantized output error, fold ``1/s`` into the
operation that produces the input (a norm, ``v_proj`` or ``up_proj``) so the float function is unchanged, search
a clipping ratio per output channel and group, quantize, and feed the quantized layer's outputs to the next layer.

torch is imported inside the functions (this module is only imported by :meth:`AwqQuantizer.quantize`).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
import time
from typing import Any, Callable

from teeny_core.errors import TeenyError

log = logging.getLogger("teeny.awq")

CLIP_TOKENS = 512
"""Tokens (evenly strided over the calibration set) used by the clipping search."""

NO_CLIP = ("q_proj", "k_proj")
"""Linears whose outputs meet in the q·k product: a per-channel output error says little there, so AWQ
keeps their full range (as the reference implementation does)."""


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
    """Linears sharing one input, the operation producing that input, and the module whose output is scored."""

    name: str
    prev: Any  # a norm or an nn.Linear whose output channels are the group's input channels
    linears: list[tuple[str, Any]]
    inspect: Callable[[int, Any], Any]  # (chunk index, input) -> output of the scored block
    feed: str  # qualified name of the linear whose captured input is the group's input


def is_skipped(name: str, patterns) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name == p for p in patterns)


# --- quantization on the checkpoint's grid ---------------------------------------------------------

def _grid(w, bits: int, group_size: int, zero_point: bool, clip):
    """Grouped view [out*groups, group_size] of ``w`` and its fp16-exact scale and integer zero [out*groups, 1]."""
    import torch

    from teeny_core.quant import qparams

    rows, cols = w.shape
    grouped = w.float().reshape(rows * (cols // group_size), group_size)
    if clip is not None and not isinstance(clip, float):
        clip = clip.reshape(-1, 1)
    scale, zero = qparams(grouped, bits, "asym" if zero_point else "sym", clip=1.0 if clip is None else clip)
    scale = scale.clamp_min(2.0**-24).to(torch.float16).float()  # what an fp16 `scales` tensor stores
    return grouped, scale, zero.clamp(0, 2**bits - 1)


def quantize_grouped(w, bits: int, group_size: int, zero_point: bool, clip=None) -> QuantizedWeight:
    """Quantize ``w`` [out, in] per group of ``group_size`` input columns with fp16-exact scales.

    ``clip`` (None, a float, or a tensor [out, groups]) shrinks each group's range before choosing scales.
    Asymmetric (zero_point) or symmetric with the zero fixed at ``2**(bits-1)`` (the core's convention).
    """
    import torch

    from teeny_core.quant import quantize

    rows, cols = w.shape
    grouped, scale, zero = _grid(w, bits, group_size, zero_point, clip)
    q = quantize(grouped, scale, zero, bits).to(torch.int32).reshape(rows, cols)
    return QuantizedWeight(q, scale.reshape(rows, -1), zero.reshape(rows, -1))


def fake_quantize(w, bits: int, group_size: int, zero_point: bool, clip=None):
    """``w`` rounded onto its quantization grid (float32): equal to ``quantize_grouped(...).weight()``."""
    from teeny_core.quant import dequantize, quantize

    grouped, scale, zero = _grid(w, bits, group_size, zero_point, clip)
    return dequantize(quantize(grouped, scale, zero, bits), scale, zero).reshape(w.shape)


# --- architecture: which linears share an input, and what produces it ------------------------------

def _attr(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def layer_structure(layer, index: int) -> dict[str, Any]:
    """The modules AWQ needs in one decoder layer, or a one-line error naming what is missing."""
    need = {n: _attr(layer, n) for n in ("input_layernorm", "self_attn.q_proj", "self_attn.k_proj",
                                          "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                                          "mlp.up_proj", "mlp.down_proj")}
    # Gemma 2/3 normalise before the MLP with pre_feedforward_layernorm (their post_attention_layernorm sits
    # between o_proj and the residual); Llama/Qwen2/Mistral use post_attention_layernorm.
    need["mlp_norm"] = _attr(layer, "pre_feedforward_layernorm") or _attr(layer, "post_attention_layernorm")
    missing = [n for n, m in need.items() if m is None]
    if missing:
        raise TeenyError(f"awq does not know the layout of {type(layer).__name__} (layer {index}): missing "
                         f"{', '.join(missing)}; supported: Llama, Qwen2, Mistral, Gemma 2/3 style decoder layers")
    return need


def _norm_offset(norm) -> float:
    """1.0 for norms computing ``x * (1 + weight)`` (Gemma), 0.0 for ``x * weight``: probed, not guessed."""
    import torch

    w = norm.weight
    saved = w.detach().clone()
    probe = torch.linspace(-1.0, 1.0, w.numel(), device=w.device, dtype=w.dtype).reshape(1, -1) + 0.5
    with torch.no_grad():
        w.zero_()
        out = norm(probe)
        w.copy_(saved)
    return 0.0 if float(out.abs().max()) == 0.0 else 1.0


def _fold_into_prev(prev, s, offset: float | None) -> None:
    """Divide the output channels of ``prev`` (a norm or a linear) by ``s``."""
    import torch

    with torch.no_grad():
        if isinstance(prev, torch.nn.Linear):
            prev.weight.div_(s.view(-1, 1))
        else:
            prev.weight.copy_((prev.weight + offset) / s - offset)
        if getattr(prev, "bias", None) is not None:
            prev.bias.div_(s)


# --- calibration inputs ----------------------------------------------------------------------------

class _Stop(Exception):
    pass


def _modules_outside(model, layers) -> list:
    """The smallest set of submodules of ``model`` that together hold every parameter/buffer outside ``layers``."""
    layer_ids = {id(layer) for layer in layers}
    out = []

    def walk(module):
        for child in module.children():
            if id(child) in layer_ids:
                continue
            if any(id(m) in layer_ids for m in child.modules()):
                walk(child)
            else:
                out.append(child)

    walk(model)
    return out


def capture_layer_inputs(model, layers, input_ids, batch_size: int, device):
    """Run the model up to the last decoder layer without computing any layer.

    Returns ``(hidden, kwargs)``: the first layer's input per chunk of ``batch_size`` samples (float32 on
    ``device``) and, per layer, the keyword arguments the model passes it per chunk (attention masks and
    rotary embeddings differ between sliding-window and global layers, so each layer keeps its own).
    """
    import torch

    outside = _modules_outside(model, layers)
    for module in outside:
        module.to(device)
    hidden: list = []
    kwargs: list[list[dict]] = [[] for _ in layers]

    def recorder(i):
        def forward(*args, **kw):
            h = args[0] if args else kw.pop("hidden_states")
            kwargs[i].append(kw)
            if i == 0:
                hidden.append(h.detach().float())
            if i == len(layers) - 1:
                raise _Stop
            return h

        return forward

    try:
        for i, layer in enumerate(layers):
            layer.forward = recorder(i)
        with torch.no_grad():
            for start in range(0, input_ids.shape[0], batch_size):
                try:
                    model(input_ids=input_ids[start:start + batch_size].to(device), use_cache=False)
                except _Stop:
                    pass
    finally:
        for layer in layers:
            layer.__dict__.pop("forward", None)  # back to the class's forward
        for module in outside:
            module.to("cpu")
    return hidden, kwargs


def _run_layer(layer, h, kw):
    out = layer(h, **kw)
    return out[0] if isinstance(out, tuple) else out


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
    """The per-input-channel scale (1-D, on the input's device) minimising the group's quantized output error.

    The candidates are ``s = x_mean**r / w_mean**(1-r)`` (``x_mean**r`` without duo scaling) for
    ``r = 0, 1/grid, ...``, normalised to a geometric mean of max and min of 1, plus ``s = 1`` (plain rounding),
    so the search never picks something worse on the calibration data than not scaling.
    ``kv_heads=(n_rep, head_dim)`` ties the scales of attention heads that share one value head (GQA).
    """
    import torch

    to_quantize = [(n, m) for n, m in group.linears if not is_skipped(n, settings.skip)]
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
                m.weight.copy_(fake_quantize(w, settings.bits, settings.group_size, settings.zero_point) / s.view(1, -1))
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
    return best_s


def _tie_heads(v, n_rep: int, head_dim: int):
    """Average a per-channel vector over query heads sharing a kv head, and repeat it back over them."""
    kv = v.reshape(-1, n_rep, head_dim).mean(1, keepdim=True)
    return kv.expand(-1, n_rep, head_dim).reshape(-1)


def search_clip(w, x, settings: AwqSettings):
    """Per (output channel, group) clipping ratio in ``[1 - max_shrink, 1]`` minimising the error of ``x @ w.T``.

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
            wq = fake_quantize(wb, settings.bits, gs, settings.zero_point, clip=ratio).reshape(-1, groups, gs)
            err = (torch.einsum("ngk,ogk->ong", xg, wq) - reference).pow(2).mean(1)
            better = err < best_err
            best_err = torch.where(better, err, best_err)
            ratios.copy_(torch.where(better, torch.full_like(ratios, ratio), ratios))
    return best_ratio


# --- the driver ------------------------------------------------------------------------------------

def check_widths(model, layers, settings: AwqSettings) -> None:
    """A one-line error, before any work, when the group size does not divide some quantized linear's width."""
    from teeny_core.modeling import linear_layers

    for name, linear in linear_layers(model).items():
        if is_skipped(name, settings.skip):
            continue
        cols = linear.in_features
        if cols % settings.group_size:
            raise TeenyError(f"group_size={settings.group_size} does not divide the input width {cols} of "
                             f"{name}; use a group size that divides every quantized layer's width")


def quantize_model(model, input_ids, settings: AwqSettings, device: str = "cpu", *,
                   quantize: bool = True) -> dict[str, QuantizedWeight]:
    """Apply AWQ to ``model`` (float32, on CPU) in place and return the quantized weight of every linear.

    With ``quantize=False`` only the scales are searched and folded (the float function must not change):
    this exists to test the folding. Layers move to ``device`` one at a time and come back to the CPU.
    Linears outside the decoder layers (``lm_head``) are rounded to nearest on the same grid unless skipped.
    """
    import torch

    from teeny_core.modeling import decoder_layers

    layers = decoder_layers(model)
    names = {id(m): n for n, m in model.named_modules()}
    check_widths(model, layers, settings)
    structures = [layer_structure(layer, i) for i, layer in enumerate(layers)]
    results: dict[str, QuantizedWeight] = {}
    hidden, layer_kwargs = capture_layer_inputs(model, layers, input_ids, settings.batch_size, device)
    for index, layer in enumerate(layers):
        started = time.perf_counter()
        layer.to(device)
        kwargs = layer_kwargs[index]
        prefix = names[id(layer)]
        hidden = _process_layer(layer, prefix, structures[index], hidden, kwargs, settings, results, quantize)
        layer.to("cpu")
        log.info("awq: layer %d/%d in %.1f s", index + 1, len(layers), time.perf_counter() - started)
    if quantize:
        results.update(_round_outside_layers(model, layers, settings))
    del hidden
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return results


def _process_layer(layer, prefix: str, parts: dict, hidden: list, kwargs: list, settings: AwqSettings,
                   results: dict, quantize: bool) -> list:
    import torch

    attn, mlp = layer.self_attn, layer.mlp
    q, k, v, o = (parts[f"self_attn.{n}_proj"] for n in "qkvo")
    gate, up, down = (parts[f"mlp.{n}_proj"] for n in ("gate", "up", "down"))
    full = {m: f"{prefix}.{n}" for n, m in parts.items()}

    def attention(i, x):
        out = attn(hidden_states=x, **kwargs[i])
        return out[0] if isinstance(out, tuple) else out

    groups = [
        _Group("qkv", parts["input_layernorm"], [(full[q], q), (full[k], k), (full[v], v)], attention, full[q]),
        _Group("o", v, [(full[o], o)], lambda i, x: o(x), full[o]),
        _Group("gate_up", parts["mlp_norm"], [(full[gate], gate), (full[up], up)], lambda i, x: mlp(x), full[gate]),
        _Group("down", up, [(full[down], down)], lambda i, x: down(x), full[down]),
    ]
    feeds = {g.feed: m for g in groups for n, m in g.linears if n == g.feed}
    feats, norm_out = _capture_features(layer, feeds, parts, hidden, kwargs)
    for group, norm_name in ((groups[0], "input_layernorm"), (groups[2], "mlp_norm")):
        if not torch.equal(norm_out[norm_name], feats[group.feed][0]):
            raise TeenyError(f"awq cannot fold scales in {type(layer).__name__}: the input of {group.feed} is "
                             f"not the output of its {norm_name}")

    with torch.no_grad():
        for group in groups:
            if all(is_skipped(n, settings.skip) for n, _ in group.linears):
                continue
            kv_heads = None
            if group.name == "o" and v.out_features != o.in_features:
                kv_heads = _gqa_shape(attn, v, o)
                if kv_heads is None:
                    continue  # value heads do not map onto o_proj's input channels: leave o_proj unscaled
            s = search_scales(group, feats[group.feed], settings, kv_heads)
            if kv_heads is not None:
                prev_s = s.reshape(-1, kv_heads[0], kv_heads[1])[:, 0, :].reshape(-1)
            else:
                prev_s = s
            offset = None if isinstance(group.prev, torch.nn.Linear) else _norm_offset(group.prev)
            _fold_into_prev(group.prev, prev_s, offset)
            for _, m in group.linears:
                m.weight.mul_(s.view(1, -1))
            feats[group.feed] = [f / s for f in feats[group.feed]]  # the group's input is now x / s

        if quantize:
            for group in groups:
                x = _clip_tokens(feats[group.feed])
                for name, m in group.linears:
                    if is_skipped(name, settings.skip):
                        continue
                    w = m.weight.float()
                    clip = None
                    if settings.clip and not name.endswith(NO_CLIP):
                        clip = search_clip(w, x, settings)
                    qw = quantize_grouped(w, settings.bits, settings.group_size, settings.zero_point, clip)
                    m.weight.copy_(qw.weight())
                    results[name] = QuantizedWeight(qw.q.cpu(), qw.scale.cpu(), qw.zero.cpu())
        del feats
        return [_run_layer(layer, h, kw) for h, kw in zip(hidden, kwargs)]


def _gqa_shape(attn, v, o) -> tuple[int, int] | None:
    head_dim = getattr(attn, "head_dim", None)
    if not head_dim or o.in_features % v.out_features or v.out_features % head_dim:
        return None
    return o.in_features // v.out_features, head_dim


def _capture_features(layer, feeds: dict, parts: dict, hidden: list, kwargs: list):
    """Inputs of the feeding linears per chunk, and the two norms' outputs for the first chunk (a layout check)."""
    import torch

    feats: dict[str, list] = {name: [] for name in feeds}
    norm_out: dict[str, Any] = {}
    handles = []
    for name, module in feeds.items():
        handles.append(module.register_forward_hook(
            lambda mod, args, out, name=name: feats[name].append(args[0].detach())))
    for norm_name in ("input_layernorm", "mlp_norm"):
        handles.append(parts[norm_name].register_forward_hook(
            lambda mod, args, out, n=norm_name: norm_out.setdefault(n, out.detach())))
    try:
        with torch.no_grad():
            for h, kw in zip(hidden, kwargs):
                _run_layer(layer, h, kw)
    finally:
        for handle in handles:
            handle.remove()
    return feats, norm_out


def _clip_tokens(chunks: list):
    """About :data:`CLIP_TOKENS` rows, evenly strided over all calibration tokens."""
    x = __import__("torch").cat([c.reshape(-1, c.shape[-1]) for c in chunks])
    step = max(1, x.shape[0] // CLIP_TOKENS)
    return x[::step][:CLIP_TOKENS]


def _round_outside_layers(model, layers, settings: AwqSettings) -> dict[str, QuantizedWeight]:
    """Round-to-nearest for linears outside the decoder layers (e.g. lm_head) that are not skipped."""
    import torch

    from teeny_core.modeling import linear_layers

    inside = {id(m) for layer in layers for m in layer.modules()}
    out: dict[str, QuantizedWeight] = {}
    for name, linear in linear_layers(model).items():
        if id(linear) in inside or is_skipped(name, settings.skip):
            continue
        if name == "lm_head" and getattr(model.config, "tie_word_embeddings", False):
            linear.weight = torch.nn.Parameter(linear.weight.detach().clone())
            model.config.tie_word_embeddings = False
        with torch.no_grad():
            qw = quantize_grouped(linear.weight, settings.bits, settings.group_size, settings.zero_point)
            linear.weight.copy_(qw.weight())
        out[name] = qw
    return out
