"""A 6-variant sweep on a tiny model: the local executor (one variant at a time) against Ray with 2 workers.

    python benchmarks/sweep.py [--chunks 24] [--repeats 2] [--out benchmarks/results/sweep.md]

Each run is a fresh `teeny run` of the same experiment (RTN at 8/6/4/3 bits, channel and group granularities,
fidelity on the same windows) in its own directory, so nothing is reused between runs; the Ray runs start a local
2-CPU cluster inside `teeny run`. Prints a table of wall times, the ratio, and checks that both executors give
the same metrics. Needs teeny-ray (and so ray) installed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = [(8, 0), (8, 64), (6, 64), (4, 0), (4, 64), (3, 64)]  # (bits, group_size; 0 = per channel)


def write_experiment(root: Path, model: Path, chunks: int) -> Path:
    body = "".join(f'\n[[variants]]\nname = "w{b}-{"ch" if g == 0 else f"g{g}"}"\nmethod = "rtn"\nbits = {b}\n'
                   + ('granularity = "channel"\n' if g == 0 else f'group_size = {g}\n') for b, g in VARIANTS)
    exp = root / "sweep.toml"
    exp.write_text(f'name = "sweep"\nmodel = "{model}"\noutput_dir = "{root / "runs"}"\ndevice = "cpu"\n'
                   f'[evaluators.fidelity]\nchunks = {chunks}\nchunk_len = 128\n[profilers.system]\nbenchmark = false\n'
                   f'[executor.local]\nworkers = 1\n[executor.ray]\ncpus_per_variant = 1\n{body}')
    return exp


def timed_run(exp: Path, executor: str) -> tuple[float, dict]:
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "teeny_core.cli", "run", str(exp), "--executor", executor],
                         capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"{executor} run failed:\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    results = json.loads((exp.parent / "runs" / "sweep" / "results.json").read_text())
    return seconds, {v["name"]: v["metrics"]["fidelity"]["kl_mean"] for v in results["variants"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=24, help="fidelity windows per variant")
    parser.add_argument("--repeats", type=int, default=2, help="interleaved runs of each executor")
    parser.add_argument("--layers", type=int, default=4, help="decoder layers of the tiny model")
    parser.add_argument("--out", type=Path, help="also write the table to this markdown file")
    args = parser.parse_args()

    from teeny_core.testing import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="teeny-sweep-"))
    model = build_tiny_model("llama", work / "model", hidden=256, layers=args.layers)
    times: dict[str, list[float]] = {"local": [], "ray": []}
    kls: dict[str, dict] = {}
    for repeat in range(args.repeats):
        for executor in ("local", "ray"):
            root = work / f"{executor}-{repeat}"
            root.mkdir()
            seconds, kls[executor] = timed_run(write_experiment(root, model, args.chunks), executor)
            times[executor].append(seconds)
            print(f"repeat {repeat + 1}: {executor} {seconds:.1f} s", flush=True)
    same = all(abs(kls["local"][k] - kls["ray"][k]) <= 1e-5 * max(1.0, abs(kls["local"][k])) for k in kls["local"])
    best = {k: min(v) for k, v in times.items()}
    lines = [
        "# Sweep: local executor (1 variant at a time) vs Ray (2 workers)",
        "",
        f"Command: `python benchmarks/sweep.py --chunks {args.chunks} --repeats {args.repeats} --layers {args.layers}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU threads "
        f"({platform.machine()}), CPU only.  ",
        f"Experiment: tiny Llama ({args.layers} layers, hidden 256), baseline + {len(VARIANTS)} RTN variants, fidelity "
        f"on {args.chunks} x 128-token windows; every run starts from an empty run directory (quantize, load, "
        "evaluate, profile), the Ray runs include starting a local 2-CPU cluster.",
        "",
        "| executor | runs (s) | best (s) |",
        "| --- | --- | ---: |",
    ]
    for executor, values in times.items():
        lines.append(f"| {executor} | {', '.join(f'{v:.1f}' for v in values)} | {best[executor]:.1f} |")
    lines += ["", f"Ray / local (best of each): **{best['ray'] / best['local']:.2f}x** wall time.  ",
              f"Same KL per variant from both executors (rel. 1e-5): {'yes' if same else 'NO'}."]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
