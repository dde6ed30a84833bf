"""Bytes held and decode time of one packed artifact under three PackedLinear layouts, in one process (issue 21).

    nice -n 19 python benchmarks/packed_layouts.py ARTIFACT_DIR [--rounds 4] [--tokens 32] [--threads 1]

Loads ARTIFACT_DIR (hf-gptq / hf-awq) in the transformers runtime on CPU as a user gets it (the size rule:
planes of at least ``PackedLinear.compact_from`` groups x outputs hold scales and integer factors), prints
``teeny_core.packed.tensor_bytes`` and where the bytes are, then switches every packed plane in place between
"held" (every plane holds the kernel's scale/offset input), "rule" (as loaded) and "compact" (every plane
rebuilds its input) and times a greedy 32-token generation at batch 1 for each, interleaved round after round.
Every switch is checked: each plane's input is bit for bit the same in all three layouts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter

import torch

from teeny_core.builtin.transformers_runtime import TransformersRuntime
from teeny_core.modeling import Artifact
from teeny_core.packed import PackedLinear, tensor_bytes

PROMPT = "def quicksort(items):\n    \"\"\"Sort a list of numbers with quicksort.\"\"\"\n"


def planes(model):
    """``(module, plane index)`` of every packed plane."""
    return [(m, i) for m in model.modules() if isinstance(m, PackedLinear) for i in range(m.n_planes)]


def scales_and_factors(model) -> dict:
    """Give every plane ``scale{i}``/``factor{i}`` buffers (a held plane's factor is its offset / scale, rounded:
    exact, as the offset is that product rounded to 8 significant bits) and return each plane's kernel input."""
    inputs = {}
    for module, i in planes(model):
        pair = module.scale_offset(i)
        inputs[id(module), i] = pair
        if hasattr(module, f"scale{i}"):
            continue
        scale, offset = pair[..., 0].contiguous(), pair[..., 1].double()
        factor = torch.where(scale != 0, offset / scale.double(), 0).round()
        dtype = torch.int8 if bool((factor.abs() <= 127).all()) else torch.int16
        module.register_buffer(f"scale{i}", scale)
        module.register_buffer(f"factor{i}", factor.to(dtype) if bool(factor.any()) else None)
    return inputs


def set_layout(model, inputs: dict, layout: str) -> None:
    """Hold or drop each plane's kernel input: ``held`` everywhere, ``compact`` nowhere, ``rule`` as loaded."""
    for module, i in planes(model):
        compact = (layout == "compact" or
                   layout == "rule" and getattr(module, f"scale{i}").numel() >= PackedLinear.compact_from)
        module._buffers.pop(f"scale_offset{i}", None)
        if not compact:
            module.register_buffer(f"scale_offset{i}", inputs[id(module), i])
        assert torch.equal(module.scale_offset(i).view(torch.int16), inputs[id(module), i].view(torch.int16))


def where_bytes(model) -> Counter:
    """MiB held by kind of tensor (codes, scales, factors, scale/offset inputs, everything else by dtype)."""
    kinds: Counter = Counter()
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        leaf = name.rpartition(".")[2].rstrip("0123456789")
        kind = leaf if leaf in ("codes", "scale", "factor", "scale_offset") else f"other {t.dtype}"
        kinds[kind] += t.numel() * t.element_size() / 2**20
    return kinds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a loaded machine's idle core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    options = TransformersRuntime.Options.from_mapping({"device": "cpu"})
    loaded = TransformersRuntime().load(Artifact.open(args.artifact), options)
    model = loaded.model
    facts = loaded.load_facts()
    held = tensor_bytes(model)
    print(f"{args.artifact}: {facts['packed_layers']} packed linears, float layers {facts['float_layers'] or 'none'}")
    print(f"tensor_bytes {held:,} B = {held / 2**20:.2f} MiB; by kind (MiB): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(where_bytes(model).items())))
    inputs = scales_and_factors(model)
    tokenizer = loaded.tokenizer
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids

    def decode() -> float:
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=args.tokens, min_new_tokens=args.tokens, do_sample=False)
        assert out.shape[1] == ids.shape[1] + args.tokens
        return (time.perf_counter() - start) / args.tokens * 1000

    layouts = ["held", "rule", "compact"]
    outputs = {}
    for layout in layouts:  # warm-up, and the same greedy tokens in every layout
        set_layout(model, inputs, layout)
        with torch.no_grad():
            outputs[layout] = model.generate(ids, max_new_tokens=8, do_sample=False)
    assert all(torch.equal(outputs["held"], o) for o in outputs.values())
    ms: dict[str, list[float]] = {k: [] for k in layouts}
    loads = []
    for r in range(args.rounds):
        for layout in layouts[r % 3:] + layouts[:r % 3]:
            set_layout(model, inputs, layout)
            ms[layout].append(decode())
        loads.append(os.getloadavg()[0])
    print(f"decode ms/token ({args.tokens} tokens, batch 1, {args.threads} thread(s), {args.rounds} rounds, load "
          f"average {min(loads):.1f}-{max(loads):.1f}):")
    for layout in layouts:
        med = statistics.median(ms[layout])
        print(f"  {layout:8s} median {med:7.1f}  rounds {[round(v, 1) for v in ms[layout]]}  "
              f"ratio to held {med / statistics.median(ms['held']):.3f}")
    paired = [r / h for r, h in zip(ms["rule"], ms["held"])]
    print(f"  rule/held per round {[round(v, 3) for v in paired]}")


if __name__ == "__main__":
    main()
