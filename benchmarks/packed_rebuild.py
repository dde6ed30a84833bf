"""What rebuilding the CPU int4 kernel's ``[groups, out, 2]`` scale/offset input costs per product (issue 21).

    nice -n 19 python benchmarks/packed_rebuild.py [--rounds 15] [--reps 20]

For each linear shape of Qwen2.5-Coder-0.5B (group 128, bfloat16, one activation row = a decoded token) it times,
interleaved in one process (round after round, the methods in rotating order; the fastest decile of single
calls):
the kernel product with the input held, each way of building the input (symmetric: from the scales alone;
asymmetric: from the scales and an int8 factor ``8 - zero``), and the product with PackedLinear's build, then
what rebuilding adds per decoded token (168 decoder linears + lm_head) for every plane or lm_head alone.
Every build is checked bit for bit against the held input first.
"""

from __future__ import annotations

import argparse
import os
import time

import torch
import torch.nn.functional as F

from teeny_core.packed_linear import build_scale_offset

SHAPES = {  # name: (out, in, count per model)
    "k/v_proj 128x896": (128, 896, 48),
    "q/o_proj 896x896": (896, 896, 48),
    "gate/up 4864x896": (4864, 896, 48),
    "down 896x4864": (896, 4864, 24),
    "lm_head 151936x896": (151936, 896, 1),
}
GROUP = 128


def symmetric_builds(scale):
    return {"stack (before)": lambda: torch.stack([scale, torch.zeros_like(scale)], dim=-1),
            "pad": lambda: F.pad(scale.unsqueeze(-1), (0, 1)),
            "zeros+copy (PackedLinear)": lambda: build_scale_offset(scale, None)}


def asymmetric_builds(scale, factor):
    def mul_into():
        built = scale.new_empty(*scale.shape, 2)
        built[..., 0] = scale
        torch.mul(scale, factor, out=built[..., 1])
        return built

    return {"stack(s, s*f)": lambda: torch.stack([scale, scale * factor], dim=-1),
            "empty+copy+mul(out=half)": mul_into,
            "empty+copy+copy(s*f) (PackedLinear)": lambda: build_scale_offset(scale, factor)}


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e6


def interleaved(fns: dict, rounds: int, reps: int) -> dict[str, float]:
    """Each callable's fastest-decile microseconds over ``rounds * reps`` single calls, interleaved (the order
    rotating each round): under load a call's time includes waits for the CPU, the fast calls are the cost."""
    names = list(fns)
    for fn in fns.values():
        fn()
    runs: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[:r % len(names)]:
            runs[n] += [timed(fns[n]) for _ in range(reps)]
    return {n: sorted(v)[len(v) // 10] for n, v in runs.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1: a loaded machine's idle core)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()}")
    gen = torch.Generator().manual_seed(0)
    per_token: dict[str, dict[str, float]] = {"held": {}, "sym": {}, "asym": {}}
    for name, (out_f, in_f, count) in SHAPES.items():
        reps = max(6, args.reps * 896 * 896 // (out_f * in_f))
        codes = torch.randint(0, 16, (out_f, in_f), dtype=torch.int32, generator=gen)
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes, 1)
        groups = in_f // GROUP
        scale = (torch.rand(groups, out_f, generator=gen) / 50 + 1e-3).to(torch.bfloat16)
        factor = (8 - torch.randint(0, 16, (groups, out_f), generator=gen)).to(torch.int8)
        held_sym = torch.stack([scale, torch.zeros_like(scale)], -1)
        held_asym = torch.stack([scale, (scale.float() * factor).to(torch.bfloat16)], -1)
        x = torch.randn(1, in_f, generator=gen).to(torch.bfloat16)
        sym, asym = symmetric_builds(scale), asymmetric_builds(scale, factor)
        for builds, held in ((sym, held_sym), (asym, held_asym)):
            for label, build in builds.items():
                assert torch.equal(build().view(torch.int16), held.view(torch.int16)), (name, label)

        def product(scale_offset):
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x, packed, GROUP, scale_offset)

        fns = {"product, held": lambda: product(held_asym)}
        fns |= {f"build sym {k}": v for k, v in sym.items()}
        fns |= {f"build asym {k}": v for k, v in asym.items()}
        fns |= {"product, sym rebuilt": lambda: product(build_scale_offset(scale, None)),
                "product, asym rebuilt": lambda: product(build_scale_offset(scale, factor))}
        us = interleaved(fns, args.rounds, reps)
        base = us["product, held"]
        print(f"\n{name} (x{count} per token), groups x out = {groups * out_f}, {reps} reps x {args.rounds} rounds, "
              f"load {os.getloadavg()[0]:.2f}")
        for k, v in us.items():
            print(f"  {k:40s} {v:9.1f} us  {v / base:6.3f} of the held product")
        per_token["held"][name] = count * base
        for kind in ("sym", "asym"):
            per_token[kind][name] = count * (us[f"product, {kind} rebuilt"] - base)
    held = sum(per_token["held"].values())
    print(f"\nper token: held products {held / 1000:.2f} ms; rebuilding adds")
    for kind in ("sym", "asym"):
        every, head = sum(per_token[kind].values()), per_token[kind]["lm_head 151936x896"]
        print(f"  {kind}: every plane {every / 1000:.2f} ms ({every / held:.1%}), lm_head only {head / 1000:.2f} ms "
              f"({head / held:.1%})")


if __name__ == "__main__":
    main()
