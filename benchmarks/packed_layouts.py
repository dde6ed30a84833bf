"""Bytes held and decode time of one packed artifact under three PackedLinear layouts, in one process (issue 21).

    nice -n 19 python benchmarks/packed_layouts.py ARTIFACT_DIR [--rounds 4] [--tokens 32] [--threads 1]

Loads ARTIFACT_DIR (hf-gptq / hf-awq) in the transformers runtime on CPU as a user gets it (the size rule:
planes of at least ``PackedLinear.compact_from`` groups x outputs hold scales and integer factors), prints
``teeny_core.packed.tensor_bytes`` and where the bytes are, then switches every packed plane in place between
"held" (every plane holds the kernel's scale/offset input), "rule" (as loaded) and "compact" (every plane
rebuilds its input) and times greedy decoding at batch 1, the layout rotating token by token (32 tokens per
layout and round), so load drifts hit all three alike. Each plane's input is first checked bit for bit the same
in all three layouts.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections import Counter

import torch

from teeny_core.builtin.transformers_runtime import TransformersRuntime
from teeny_core.modeling import Artifact, return_freed_memory
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


def set_layout(model, inputs: dict, layout: str, check: bool = False) -> None:
    """Hold or drop each plane's kernel input: ``held`` everywhere, ``compact`` nowhere, ``rule`` as loaded."""
    for module, i in planes(model):
        compact = (layout == "compact" or
                   layout == "rule" and getattr(module, f"scale{i}").numel() >= PackedLinear.compact_from)
        module._buffers.pop(f"scale_offset{i}", None)
        if not compact:
            module.register_buffer(f"scale_offset{i}", inputs[id(module), i])
        if check:
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
    return_freed_memory()  # as in a run's worker: a freed block of 1 MiB or more goes back to the system
    options = TransformersRuntime.Options.from_mapping({"device": "cpu"})
    loaded = TransformersRuntime().load(Artifact.open(args.artifact), options)
    model = loaded.model
    facts = loaded.load_facts()
    held = tensor_bytes(model)
    print(f"{args.artifact}: {facts['packed_layers']} packed linears, float layers {facts['float_layers'] or 'none'}")
    print(f"tensor_bytes {held:,} B = {held / 2**20:.2f} MiB; by kind (MiB): "
          + ", ".join(f"{k} {v:.2f}" for k, v in sorted(where_bytes(model).items())))
    inputs = scales_and_factors(model)
    ids = loaded.tokenizer(PROMPT, return_tensors="pt").input_ids
    layouts = ["held", "rule", "compact"]
    for layout in layouts:  # every plane's input bit for bit the same in each layout
        set_layout(model, inputs, layout, check=True)
    steps: dict[str, list[float]] = {k: [] for k in layouts}
    triples: list[dict[str, float]] = []  # three consecutive tokens, one per layout: paired under the same load
    loads = []
    for r in range(args.rounds):  # greedy decode, the layout rotating every token: load drifts hit all alike
        cache, token = None, ids
        for step in range(len(layouts) * args.tokens + 1):
            layout = layouts[(step + r) % len(layouts)]
            set_layout(model, inputs, layout)
            start = time.perf_counter()
            with torch.no_grad():
                out = model(input_ids=token, past_key_values=cache, use_cache=True)
            if step:  # step 0 is the prompt's prefill
                steps[layout].append((time.perf_counter() - start) * 1000)
                if (step - 1) % len(layouts) == 0:
                    triples.append({})
                triples[-1][layout] = steps[layout][-1]
            cache, token = out.past_key_values, out.logits[:, -1:].argmax(-1)
        loads.append(os.getloadavg()[0])
    print(f"decode ms/token (batch 1, {args.threads} thread(s), {args.rounds} rounds of {args.tokens} tokens per "
          f"layout, interleaved token by token; load average {min(loads):.1f}-{max(loads):.1f}):")
    fast = {k: sorted(v)[len(v) // 10] for k, v in steps.items()}
    for layout in layouts:
        print(f"  {layout:8s} fastest decile {fast[layout]:7.1f}  median {statistics.median(steps[layout]):7.1f}  "
              f"ratio to held: fastest deciles {fast[layout] / fast['held']:.3f}, median of paired tokens "
              f"{statistics.median(t[layout] / t['held'] for t in triples):.3f}")

if __name__ == "__main__":
    main()
