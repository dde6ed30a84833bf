"""The optional end-to-end phase: with every integer code and zero point frozen, train only the quantized
linears' scales and the norms on the KL divergence from the original's next-token distributions over the
calibration windows, then write the new scales and norms into the hf-gptq checkpoint in place.

Unlike the block-wise phase this needs the whole model: the original and the quantized model in float32, one
batch's logits of each, the scales' and norms' optimizer state (about twice the float32 model in all)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from teeny_core import CalibrationSet, ModelSource, TeenyError


def train_end_to_end(source: ModelSource, out_dir: Path, calibration: CalibrationSet, options) -> dict[str, Any]:
    """Train the checkpoint at ``out_dir`` for ``options.e2e_steps`` steps; returns the KL before and after."""
    import torch
    from transformers import AutoModelForCausalLM

    from teeny_core.formats.gptq import read_quantized
    from teeny_core.walker import safetensors_dir
    from teeny_qat.training import FP16_MAX, FP16_TINY, _deterministic, _ste

    path = safetensors_dir(source)
    teacher = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    student = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    for name, p in student.named_parameters():
        p.requires_grad_("norm" in name)
    norms = {name: p for name, p in student.named_parameters() if p.requires_grad}
    linears, _ = read_quantized(out_dir)
    scales: dict[str, Any] = {}
    for name, linear in linears:
        module = student.get_submodule(name)
        scale = torch.nn.Parameter(linear.scale.clone())
        codes = (linear.q.float() - linear.zero[:, linear.g_idx]).detach()  # frozen: q - zero per weight

        def forward(x, m=module, s=scale, c=codes, g=linear.g_idx):
            s16 = _ste(s.clamp(FP16_TINY, FP16_MAX).half().float(), s)
            return torch.nn.functional.linear(x, s16[:, g] * c, m.bias)

        module.forward = forward
        scales[name] = scale
    ids = calibration.tensor()
    batches = list(torch.split(ids, options.batch_size))
    generator = torch.Generator().manual_seed(options.seed)

    def kl(i: int):
        with torch.no_grad():
            reference = torch.log_softmax(teacher(batches[i]).logits, -1)
        logprobs = torch.log_softmax(student(batches[i]).logits, -1)
        return (reference.exp() * (reference - logprobs)).sum(-1).mean()

    with _deterministic():
        with torch.no_grad():
            before = sum(float(kl(i)) for i in range(len(batches))) / len(batches)
        optimizer = torch.optim.Adam([*scales.values(), *norms.values()], lr=options.e2e_lr)
        order: list[int] = []
        for step in range(1, options.e2e_steps + 1):
            if not order:
                order = torch.randperm(len(batches), generator=generator).tolist()
            loss = kl(order.pop())
            if not torch.isfinite(loss):
                raise TeenyError(f"qat: the end-to-end phase diverged at step {step}: the KL is "
                                 f"{float(loss.detach())}; lower e2e_lr ({options.e2e_lr})")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            after = sum(float(kl(i)) for i in range(len(batches))) / len(batches)
    if not after <= before:
        raise TeenyError(f"qat: the end-to-end phase diverged by step {options.e2e_steps}: the KL rose from "
                         f"{before:.4g} to {after:.4g}; lower e2e_lr ({options.e2e_lr})")
    with torch.no_grad():
        updated = {f"{n}.scales": s.clamp(FP16_TINY, FP16_MAX).t().contiguous().half() for n, s in scales.items()}
        updated.update({n: p.detach().clone() for n, p in norms.items()})
    _rewrite(Path(out_dir), updated)
    return {"steps": options.e2e_steps, "lr": options.e2e_lr, "kl_before": before, "kl_after": after}


def _rewrite(out_dir: Path, updated: dict[str, Any]) -> None:
    """Replace tensors of the checkpoint's safetensors files (each kept in its stored dtype)."""
    import os

    from safetensors.torch import load_file, save_file

    from teeny_core import safetensors_files

    for file in safetensors_files(out_dir):
        tensors = load_file(str(file))
        changed = {k: updated[k].to(v.dtype) for k, v in tensors.items() if k in updated}
        if changed:
            tmp = file.with_name(f".{file.name}.tmp")
            save_file({**tensors, **changed}, str(tmp), metadata={"format": "pt"})
            os.replace(tmp, file)
