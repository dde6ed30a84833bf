"""Mixture-of-experts tensors between their two layouts: per-expert tensors as checkpoints store them on disk
(``<experts>.<e>.gate_proj.weight``...) and the fused parameters transformers holds (``gate_up_proj``,
``down_proj``)."""

from __future__ import annotations

from typing import Any

from teeny_core.arch import ArchSpec, spec_for


def fuse_experts(state: dict[str, Any], spec: ArchSpec) -> dict[str, Any]:
    """Per-expert disk tensors -> the fused in-memory parameters (``gate_up_proj`` = gate over up)."""
    import torch

    ex = spec.experts
    assert ex is not None
    head = f"{ex.module}."
    experts: dict[int, dict[str, Any]] = {}
    out = {}
    for key, tensor in state.items():
        if key.startswith(head):
            e, linear, _ = key[len(head):].split(".")
            experts.setdefault(int(e), {})[linear] = tensor
        else:
            out[key] = tensor
    order = sorted(experts)
    out[f"{head}gate_up_proj"] = torch.stack([torch.cat([experts[e]["gate_proj"], experts[e]["up_proj"]])
                                              for e in order])
    out[f"{head}down_proj"] = torch.stack([experts[e]["down_proj"] for e in order])
    return out


def fuse_model_experts(state: dict[str, Any], model_type: str | None) -> dict[str, Any]:
    """A whole model's state dict with each MoE layer's per-expert disk tensors fused as transformers holds them
    (unchanged for architectures without a spec'd mixture of experts)."""
    from teeny_core.arch import supported

    spec = spec_for(model_type) if model_type in supported() else None
    if spec is None or spec.experts is None:
        return state
    head = f"{spec.layers}."
    marker = f".{spec.experts.module}."
    layers: dict[str, dict[str, Any]] = {}
    out = {}
    for key, tensor in state.items():
        if key.startswith(head) and marker in key:
            index = key[len(head):].partition(".")[0]
            prefix = spec.layer_prefix(int(index))
            layers.setdefault(prefix, {})[key[len(prefix) + 1:]] = tensor
        else:
            out[key] = tensor
    for prefix, own in layers.items():
        out.update({f"{prefix}.{k}": v for k, v in fuse_experts(own, spec).items()})
    return out


def split_experts(state: dict[str, Any], spec: ArchSpec) -> dict[str, Any]:
    """Inverse of :func:`fuse_experts`: fused parameters -> per-expert disk names."""
    ex = spec.experts
    assert ex is not None
    head = f"{ex.module}."
    out = {k: v for k, v in state.items() if not k.startswith(head)}
    gate_up, down = state[f"{head}gate_up_proj"], state[f"{head}down_proj"]
    inter = gate_up.shape[1] // 2
    for e in range(gate_up.shape[0]):
        out[f"{head}{e}.gate_proj.weight"] = gate_up[e, :inter]
        out[f"{head}{e}.up_proj.weight"] = gate_up[e, inter:]
        out[f"{head}{e}.down_proj.weight"] = down[e]
    return out
