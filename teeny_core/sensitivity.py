"""Per-module quantization sensitivity, measured layer by layer on the streaming walker, and the bit plan it feeds.

For every quantizable linear inside the decoder layers and every bit-width, the damage when only that linear is
quantized (RTN or GPTQ on the same grid the quantizer writes):

- ``proxy``: the Hessian-weighted weight error ``tr((W - Q) H (W - Q)^T) / out`` with ``H = X^T X / n`` from
  the linear's calibration inputs, i.e. the mean squared output error the linear adds per token and output;
- ``block``: the relative output error of its decoder layer (``||y_Q - y||^2 / ||y||^2`` over the calibration
  inputs) with only that linear quantized, which also sees what attention and the MLP do with the error.
  Both need one decoder layer in memory at a time (the walker's bound), so they run on any model size.
- ``kl`` (small models, ``kl=True``): the mean KL divergence (nats per token, full vocabulary, float64) of the
  whole model with only that linear quantized against the float model, on the fidelity windows. The Spearman
  rank correlations of ``proxy`` and ``block`` with ``kl`` over all (linear, bits) pairs say how far each local
  proxy can be trusted on models too large for the KL run.

Per decoder layer, the relative output error of the block with all its linears quantized at each bit-width.
:func:`plan_bits` turns a sensitivity table into per-module bits under an average-bits budget.
"""

from __future__ import annotations

import dataclasses
import math
import time
from pathlib import Path
from typing import Any, Callable

from teeny_core.errors import TeenyError
from teeny_core.options import Options, option

METHODS = ("rtn", "gptq")


@dataclasses.dataclass
class SensitivityOptions(Options):
    bits: list[int] = option([2, 3, 4, 8], "bit-widths measured per module", choices=(2, 3, 4, 8))
    group_size: int = option(128, "input columns per group (-1: one per output channel)", min=-1)
    sym: bool = option(False, "symmetric grid (rtn asym and gptq sym are the quantizers' defaults)")


def stored_bits(out_features: int, in_features: int, bits: int, group_size: int) -> int:
    """Bits an hf-gptq checkpoint stores for one linear: codes, a float16 scale and a ``bits``-wide zero point
    per group and output, and the int32 ``g_idx``."""
    groups = in_features // group_size if group_size > 0 else 1
    return out_features * in_features * bits + groups * out_features * (16 + bits) + 32 * in_features


def rounder(method: str, group_size: int, sym: bool = False) -> Callable[[Any, Any, int], Any]:
    """``round_trip(weight, hessian, bits) -> dequantized weight`` for ``method`` (rtn or gptq)."""
    from teeny_core.quant import dequantize_weight, quantize_weight

    if method == "rtn":
        def rtn(weight, hessian, bits):
            granularity = "group" if group_size > 0 else "channel"
            q, scale, zero = quantize_weight(weight, bits, "sym" if sym else "asym", granularity, group_size)
            return dequantize_weight(q, scale, zero)
        return rtn
    try:
        from teeny_gptq.gptq import gptq_quantize
    except ImportError:
        raise TeenyError("sensitivity --method gptq needs the teeny-gptq plugin installed") from None

    def gptq(weight, hessian, bits):
        return gptq_quantize(weight, hessian * 2, bits=bits, group_size=group_size, sym=sym).w_hat.float()
    return gptq


def _proxy(weight, q, hessian) -> float:
    delta = (weight.double() - q.double())
    return float(((delta @ hessian.double()) * delta).sum() / weight.shape[0])


def _solver(names_of: Callable[[Any], list[str]], round_trip, bits_list, table: dict, layers: dict, keep: dict | None,
            wanted: set | None = None):
    """A walker solver measuring one layer: nothing is written, the layer is left as it was."""
    import torch

    from teeny_core.walker import Solved, run_layer

    def solve(work) -> Solved:
        names = names_of(work)
        modules = {n: work.layer.get_submodule(n) for n in names}
        hessians = {n: torch.zeros(m.in_features, m.in_features) for n, m in modules.items()}
        rows = dict.fromkeys(names, 0)
        outputs = []

        def hook(module, args, name):
            x = args[0].reshape(-1, module.in_features).float()
            hessians[name].addmm_(x.t(), x)
            rows[name] += x.shape[0]

        handles = [m.register_forward_pre_hook(lambda mod, a, n=n: hook(mod, a, n)) for n, m in modules.items()]
        with torch.no_grad():
            try:
                for i in range(len(work.inputs)):
                    outputs.append(run_layer(work.layer, work.inputs[i].to(work.device), work.args[i]))
            finally:
                for h in handles:
                    h.remove()
            originals = {n: m.weight.detach().clone() for n, m in modules.items()}
            reference = sum(float((y.double() ** 2).sum()) for y in outputs)

            def block_error(replacements: dict[str, Any]) -> float:
                for name, q in replacements.items():
                    modules[name].weight.copy_(q.to(modules[name].weight.dtype))
                err = 0.0
                for i in range(len(work.inputs)):
                    y = run_layer(work.layer, work.inputs[i].to(work.device), work.args[i])
                    err += float(((y.double() - outputs[i].double()) ** 2).sum())
                for name in replacements:
                    modules[name].weight.copy_(originals[name])
                return err / max(reference, 1e-30)

            errors = {}
            for bits in bits_list:  # one layer's quantized copies at a time: the walker's memory bound holds
                quantized = {}
                for name, module in modules.items():
                    hessian = hessians[name] / max(rows[name], 1)
                    entry = table.setdefault(f"{work.prefix}.{name}",
                                             {"shape": list(module.weight.shape), "proxy": {}, "block": {}})
                    q = round_trip(originals[name].float(), hessian, bits)
                    entry["proxy"][str(bits)] = _proxy(originals[name], q, hessian)
                    entry["block"][str(bits)] = block_error({name: q})
                    quantized[name] = q
                    key = (f"{work.prefix}.{name}", bits)
                    if keep is not None and (wanted is None or key in wanted):  # float16: well below an 8-bit step
                        keep[key] = q.to(torch.float16)
                errors[str(bits)] = block_error(quantized)
                del quantized
        layers[str(work.index)] = errors
        return Solved()

    return solve


class _Discard:
    """A walker writer that keeps nothing (sensitivity only measures)."""

    def add(self, key, tensor) -> None:
        pass

    def end_of_layer(self) -> None:
        pass


def measure(source, calibration, *, method: str, bits_list: list[int], group_size: int, windows=None,
            seed: int = 0, kl: bool = False, sym: bool = False, kl_sample: int = 0) -> dict[str, Any]:
    """The sensitivity table of ``source`` (see the module docstring) as a JSON-ready dict. ``windows`` (token id
    lists) are needed for ``kl``; ``kl_sample`` > 0 runs the full-model KL on that many (linear, bits) pairs
    drawn with ``seed`` (enough for the rank correlations where every pair would take too long), and plans
    then use the local score that ranks that KL better. Shapes that cannot be grouped or packed at a bit-width
    fail before any work."""
    import random

    from teeny_core.formats.gptq import misfit
    from teeny_core.walker import layer_matrices, safetensors_dir, walk

    if method not in METHODS:
        raise TeenyError(f"sensitivity: method {method!r} is not one of {METHODS}")
    path = safetensors_dir(source)
    linears, _ = layer_matrices(path)
    for name, (rows, cols) in linears.items():
        for bits in bits_list:
            why = misfit(rows, cols, bits, group_size)
            if why:
                raise TeenyError(f"sensitivity: {name} has {why}; choose another group_size or bits")
    if kl and not windows:
        raise TeenyError("sensitivity: the full-model KL needs fidelity windows")
    started = time.perf_counter()
    table: dict[str, dict[str, Any]] = {}
    layers: dict[str, dict[str, float]] = {}
    keep: dict | None = {} if kl else None
    pairs = [(n, b) for n in sorted(linears) for b in bits_list]
    wanted = set(random.Random(seed).sample(pairs, min(kl_sample, len(pairs)))) if kl and kl_sample else None

    def names_of(work):
        return [n for n in work.spec.linears() if f"{work.prefix}.{n}" in linears]

    walk(path, _solver(names_of, rounder(method, group_size, sym), bits_list, table, layers, keep, wanted),
         _Discard(), calibration_ids=calibration.tensor(), progress=False)
    result: dict[str, Any] = {
        "model": source.identity(), "model_path": str(source.path), "method": method, "group_size": group_size,
        "sym": sym, "bits": list(bits_list), "seed": seed,
        "calibration": {"name": calibration.name, "fingerprint": calibration.fingerprint(),
                        "samples": len(calibration.samples), "seq_len": len(calibration.samples[0])},
        "proxy": "tr((W-Q) H (W-Q)^T) / out_features, H = X^T X / n from the calibration inputs",
        "modules": table, "layers": layers,
    }
    if kl:
        model_kl(source, windows, keep, table)
        scored = [(e, str(b)) for e in table.values() for b in bits_list if str(b) in e.get("kl", {})]
        for local in ("proxy", "block"):
            result[f"spearman_{local}_kl"] = spearman([e[local][b] for e, b in scored], [e["kl"][b] for e, b in scored])
        result["windows"] = {"count": len(windows), "length": len(windows[0])}
        result["kl_pairs"] = len(scored)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def model_kl(source, windows, quantized: dict, table: dict) -> None:
    """Fill ``table[name]["kl"][bits]``: the whole float model with only that linear quantized, against the float
    model, mean KL per token on ``windows``."""
    import torch

    model, _ = source.load(dtype="float32")
    model.eval()

    def logits(window):
        with torch.no_grad():
            return model(input_ids=torch.tensor([window])).logits[0].float()

    references = [logits(w) for w in windows]  # float32 logits, one window at a time: vocabularies are large
    for (name, bits), q in quantized.items():
        module = model.get_submodule(name)
        original = module.weight.detach().clone()
        total = 0.0
        with torch.no_grad():
            module.weight.copy_(q.float())
            for window, ref in zip(windows, references):
                ref = torch.log_softmax(ref.double(), dim=-1)  # float64: tiny KLs stay non-negative
                got = torch.log_softmax(logits(window).double(), dim=-1)
                total += float((ref.exp() * (ref - got)).sum(-1).sum())
            module.weight.copy_(original)
        table[name].setdefault("kl", {})[str(bits)] = total / sum(len(w) for w in windows)


def spearman(a: list[float], b: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties)."""
    def ranks(xs):
        order = sorted(range(len(xs)), key=lambda i: xs[i])
        r = [0.0] * len(xs)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and xs[order[j + 1]] == xs[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    ra, rb = ranks(a), ranks(b)
    ma, mb = sum(ra) / len(ra), sum(rb) / len(rb)
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    var = math.sqrt(sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb))
    return cov / var if var else 0.0


def heatmap(result: dict[str, Any], out: Path) -> None:
    """A PNG: one row per decoder layer, one column per (module type, bits), colour log10 of the damage."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    score = "kl" if all(len(e.get("kl", {})) == len(result["bits"]) for e in result["modules"].values()) else "proxy"
    layer_of: dict[str, int] = {}
    kinds: list[str] = []
    for name in result["modules"]:
        head, kind = _split(name)
        layer_of[head] = layer_of.get(head, len(layer_of))
        if kind not in kinds:
            kinds.append(kind)
    bits = result["bits"]
    grid = [[math.nan] * (len(kinds) * len(bits)) for _ in layer_of]
    for name, entry in result["modules"].items():
        head, kind = _split(name)
        for j, b in enumerate(bits):
            value = entry[score][str(b)]
            grid[layer_of[head]][kinds.index(kind) * len(bits) + j] = math.log10(max(value, 1e-12))
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(kinds) * len(bits)), max(3, 0.3 * len(layer_of))))
    image = ax.imshow(grid, aspect="auto", cmap="viridis")
    ax.set_xticks(range(len(kinds) * len(bits)), [f"{k} w{b}" for k in kinds for b in bits], rotation=90,
                  fontsize=7)
    ax.set_yticks(range(len(layer_of)))
    ax.set_ylabel("decoder layer")
    ax.set_title(f"{result['method']} sensitivity, log10 {score}")
    fig.colorbar(image, ax=ax)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def _split(name: str) -> tuple[str, str]:
    """``model.layers.3.self_attn.q_proj`` -> (``model.layers.3``, ``self_attn.q_proj``)."""
    parts = name.split(".")
    i = next(i for i, p in enumerate(parts) if p.isdigit())
    return ".".join(parts[:i + 1]), ".".join(parts[i + 1:])


def average_bits(shapes: dict[str, tuple[int, int]], plan: dict[str, int], group_size: int) -> float:
    """Stored bits per quantized weight of linears ``shapes`` (name -> (out, in)) at ``plan``'s bits."""
    total = sum(stored_bits(o, i, plan[n], group_size) for n, (o, i) in shapes.items())
    return total / sum(o * i for o, i in shapes.values())


def plan_bits(shapes: dict[str, tuple[int, int]], damage: dict[str, dict[Any, float]], allowed: list,
              target: float, group_size: int, tolerance: float = 0.05, steps: int | None = None,
              cost: Callable[[str, Any], float] | None = None) -> dict[str, Any]:
    """Each linear's bits from ``allowed``, minimising the summed ``damage[name][bits]`` with the average stored
    bits per weight (:func:`stored_bits`, or ``cost(name, choice)`` bits of a module) at most ``target`` and
    within ``tolerance`` of it. The choices may be any labels (GGUF plans ggml type names); an infinite damage
    rules a choice out for that module.

    A multiple-choice knapsack, solved exactly by dynamic programming (vectorised) over the budget discretised
    into ``steps`` units, 1000 per module by default (each module's cost rounded up, so the plan never exceeds
    the budget and the rounding wastes at most 0.1% of it). Exact rather than the
    greedy marginal-gain relaxation because damage is not convex in bits (3-bit can cost more than twice
    4-bit's) and, with a few hundred modules and four choices, the DP takes well under a second.
    """
    weights = sum(o * i for o, i in shapes.values())
    if cost is None:
        def cost(name, bits):
            return stored_bits(*shapes[name], bits, group_size)

        check_target(shapes, allowed, target, group_size, tuple(allowed), "plan", tolerance)
    import numpy as np

    steps = steps or max(4000, 1000 * len(shapes))
    budget = target * weights
    unit = budget / steps
    names = sorted(shapes)
    best = np.full(steps + 1, np.inf)  # best[c]: least damage using exactly c units so far
    best[0] = 0.0
    choice = []
    for name in names:
        new = np.full(steps + 1, np.inf)
        picked = np.full(steps + 1, -1, dtype=np.int16)
        for k, bits in enumerate(allowed):
            units = math.ceil(cost(name, bits) / unit)
            if units > steps:
                continue
            candidate = best[:steps + 1 - units] + damage[name][bits]
            better = candidate < new[units:]
            new[units:][better] = candidate[better]
            picked[units:][better] = k
        best = new
        choice.append(picked)
    finite = np.flatnonzero(np.isfinite(best))
    if not len(finite):
        raise TeenyError(f"target_bits={target} cannot be reached with allowed_bits={sorted(allowed)}")
    least = best[finite].min()
    end = int(finite[best[finite] == least].max())  # the least damage; of equal plans the fuller one
    plan: dict[str, Any] = {}
    c = end
    for k in range(len(names) - 1, -1, -1):
        bits = allowed[int(choice[k][c])]
        plan[names[k]] = bits
        c -= math.ceil(cost(names[k], bits) / unit)
    achieved = sum(cost(n, b) for n, b in plan.items()) / weights
    if abs(achieved - target) > tolerance:
        raise TeenyError(f"target_bits={target}: the least-damage plan within the budget averages {achieved:.3f} "
                         f"stored bits per weight, more than {tolerance} away; allow more bit-widths")
    return plan


def load_sensitivity(path: str, source, group_size: int | None, allowed: list[int], names) -> dict[str, Any]:
    """A sensitivity file written by ``teeny sensitivity``, checked against this model, group size (None: any),
    the allowed bits and the linears to plan (one line naming what does not match)."""
    import json

    file = Path(path).expanduser()
    if not file.is_file():
        raise TeenyError(f"sensitivity={path!r} is not a file; expected the JSON `teeny sensitivity --out` wrote")
    try:
        data = json.loads(file.read_text())
        modules, model, grouped, measured = data["modules"], data["model"], data["group_size"], data["bits"]
    except (ValueError, KeyError, TypeError):
        raise TeenyError(f"sensitivity={path!r} is not a sensitivity file (expected JSON with model, group_size, "
                         "bits and modules)") from None
    if model != source.identity():
        raise TeenyError(f"sensitivity={path!r} was measured on model {data.get('model_path', model)!r} "
                         f"({model}), not on {source.path!r} ({source.identity()})")
    if group_size is not None and grouped != group_size:
        raise TeenyError(f"sensitivity={path!r} was measured at group_size={grouped}, not {group_size}")
    missing = sorted(set(allowed) - set(measured))
    if missing:
        raise TeenyError(f"sensitivity={path!r} has no numbers for bits {missing} (it measured {measured})")
    absent = sorted(set(names) - set(modules))
    if absent:
        raise TeenyError(f"sensitivity={path!r} has no numbers for {absent[0]} ({len(absent)} modules missing)")
    return data


def check_target(shapes: dict[str, tuple[int, int]], allowed: list[int], target: float, group_size: int,
                 writable: tuple[int, ...], where: str, tolerance: float = 0.05) -> None:
    """Fail in one line when an allowed bit-width cannot be written or ``target`` cannot be reached."""
    bad = sorted(set(allowed) - set(writable))
    if bad or not allowed:
        raise TeenyError(f"{where}: allowed_bits={sorted(allowed)} holds {bad or 'nothing'}; this method writes "
                         f"bits {writable}")
    lowest = average_bits(shapes, dict.fromkeys(shapes, min(allowed)), group_size)
    highest = average_bits(shapes, dict.fromkeys(shapes, max(allowed)), group_size)
    if not lowest - tolerance <= target <= highest + tolerance:
        raise TeenyError(f"{where}: target_bits={target} cannot be reached with allowed_bits={sorted(allowed)}: "
                         f"their plans average {lowest:.3f} .. {highest:.3f} stored bits per weight at "
                         f"group_size={group_size} (scales and zero points included)")


def mixed_precision(source, calibration, *, method: str, shapes: dict[str, tuple[int, int]], allowed: list[int],
                    target: float, group_size: int, sym: bool, sensitivity: str, writable: tuple[int, ...],
                    where: str) -> tuple[dict[str, int], dict[str, Any]]:
    """``(bits per linear, the sensitivity used)`` for a quantizer's ``target_bits``: checked first (allowed bits,
    reachable target, the sensitivity file), then the sensitivity is read from ``sensitivity`` or measured with
    ``method`` on ``calibration``, then :func:`plan_bits`. The full-model KL is the damage where the file has it,
    else the local score :func:`damage_score` picks."""
    check_target(shapes, allowed, target, group_size, writable, where)
    data = sensitivity_for(source, calibration, shapes, sorted(set(allowed)), method=method, group_size=group_size,
                           sym=sym, sensitivity=sensitivity, where=where)
    damage = {n: {b: float(data["modules"][n][data["score"]][str(b)]) for b in allowed} for n in shapes}
    plan = plan_bits(shapes, damage, sorted(set(allowed)), target, group_size)
    return plan, data


def sensitivity_for(source, calibration, shapes, bits: list[int], *, method: str, group_size: int | None,
                    sym: bool, sensitivity: str, where: str) -> dict[str, Any]:
    """The sensitivity ``target_bits`` plans with: the file ``sensitivity`` (checked: model, group size unless
    None, ``bits`` measured, every linear of ``shapes``) or measured with ``method`` on ``calibration`` (at
    ``group_size``, 128 when None); ``score`` names the damage used (:func:`damage_score`)."""
    import json

    from teeny_core.arch import spec_for
    from teeny_core.walker import safetensors_dir

    model_type = json.loads((safetensors_dir(source) / "config.json").read_text()).get("model_type")
    if spec_for(model_type).experts:
        raise TeenyError(f"{where}: target_bits does not plan routed experts yet ({model_type}); use bits")
    if sensitivity:
        data = load_sensitivity(sensitivity, source, group_size, bits, shapes)
    else:
        if calibration is None or not calibration.samples:
            raise TeenyError(f"{where}: target_bits without a sensitivity file measures it on calibration data; "
                             "give the variant a calibrator or pass -o sensitivity=FILE")
        data = measure(source, calibration, method=method, bits_list=bits,
                       group_size=128 if group_size is None else group_size, sym=sym)
    return {**data, "score": damage_score(data, shapes)}


def damage_score(data: dict[str, Any], names) -> str:
    """The damage :func:`plan_bits` minimises for the linears ``names``: the full-model KL (``kl``) where the
    sensitivity measured it for every one of them and every bit-width; else, where it measured the KL on a
    sample of pairs (``--kl-sample``), the local score that ranked that KL better (Spearman); else the Hessian
    proxy (``proxy``).

    The block output error (``block``) is relative to its decoder layer's output, which on a trained model the
    residual stream dominates and which grows with depth: one absolute error looks cheap in the middle layers.
    On Qwen2.5-Coder-0.5B it ranked the KL at 0.63 against the proxy's 0.87 (an absolute output error per token
    and output, comparable across layers) and its plan at w3's size was 7.8x worse than uniform w3
    (benchmarks/results/mixed.md); on the random tiny test model the block error ranks better (0.99 vs 0.39)."""
    bits = [str(b) for b in data["bits"]]
    if all(set(bits) <= set(data["modules"][n].get("kl", {})) for n in names):
        return "kl"
    if data.get("spearman_block_kl", -2) > data.get("spearman_proxy_kl", -2):
        return "block"
    return "proxy"


def dynamic_rules(plan: dict[str, int], default_bits: int) -> dict[str, dict]:
    """GPTQModel ``dynamic`` rules giving each module of ``plan`` whose bits differ from ``default_bits`` its own."""
    import re

    return {f"+:^{re.escape(n)}$": {"bits": b} for n, b in sorted(plan.items()) if b != default_bits}


def gptq_quantization_config(bits: int, group_size: int, sym: bool, quantizer: str, *, lm_head: bool = False,
                             unquantized=(), plan: dict[str, int] | None = None) -> dict[str, Any]:
    """The ``quantization_config`` of a GPTQ v1 checkpoint (no act-order) written by ``quantizer``: ``bits``
    globally (the most common of ``plan`` when given, whose other bits become ``dynamic`` rules), the modules
    ``unquantized`` inside the layers excluded by rules too (what GPTQModel, vLLM and transformers read)."""
    from teeny_core.formats.gptq import dynamic_exclusions

    if plan:
        bits = most_common(plan)
    config: dict[str, Any] = {"quant_method": "gptq", "bits": bits, "group_size": group_size, "desc_act": False,
                              "sym": sym, "checkpoint_format": "gptq", "pack_dtype": "int32", "lm_head": lm_head,
                              "meta": {"quantizer": [quantizer]}}
    if unquantized or plan:
        config["dynamic"] = {**dynamic_exclusions(sorted(unquantized)), **dynamic_rules(plan or {}, bits)}
    return config


def most_common(plan: dict[str, int]) -> int:
    """The bit-width most modules get (the checkpoint's global ``bits``); ties go to the higher width."""
    counts: dict[int, int] = {}
    for b in plan.values():
        counts[b] = counts.get(b, 0) + 1
    return max(counts, key=lambda b: (counts[b], b))


def mixed_facts(out_dir: Path, plan: dict[str, int], shapes: dict[str, tuple[int, int]], used: dict[str, Any],
                group_size: int) -> dict[str, Any]:
    """Keep the sensitivity with the artifact (``sensitivity.json``) and return the facts for its metadata."""
    from teeny_core.store import write_json

    write_json(Path(out_dir) / "sensitivity.json", used)
    counts: dict[str, int] = {}
    for b in plan.values():
        counts[str(b)] = counts.get(str(b), 0) + 1
    return {"bits_plan": dict(sorted(plan.items())), "modules_per_bits": counts,
            "achieved_bits": round(average_bits(shapes, plan, group_size), 4),
            "sensitivity_score": used.get("score"), "sensitivity_file": "sensitivity.json"}
