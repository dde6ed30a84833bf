"""W8A8 (int8 weights and per-token int8 activations) with and without SmoothQuant against GPTQ w8 weight-only:
KL to the original, activation outliers before and after smoothing, and CPU speed of the int8 products.

    python benchmarks/w8a8.py [--model qwen|gemma] [--samples 16] [--seq-len 256] [--chunks 4]
                              [--only none 0.5 auto gptq]

The original is the demo's GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, or Gemma 3 270M) dequantized to float32
once (the walker's cached copy). Each variant is quantized in a child process of its own with the `code`
calibrator and scored by benchmarks/gemma.py's ``score`` (the fidelity evaluator's KL over held-out pydoc
windows, through the transformers runtime: W8A8 runs torch._int_mm, GPTQ w8 the packed int4-plane kernel).
Speed: one linear of each of the model's shapes, int8 (quantizing the activations per token, then
torch._int_mm) against a bfloat16 ``x @ w.T``, at 1, 8 and 64 rows; and a 64-token prefill of the whole model.
Writes benchmarks/results/w8a8.md (a generated section) and benchmarks/results/w8a8-outliers.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gemma import CACHE, best_ms, fidelity_cells, load_note, reference, run_child, score, write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "w8a8.md"
FIGURE = ROOT / "benchmarks" / "results" / "w8a8-outliers.png"


VARIANTS = {"none": ("w8a8, no smoothing", "w8a8", {"smooth": False, "device": "cpu"}),
            "0.5": ("w8a8, SmoothQuant alpha 0.5", "w8a8", {"alpha": "0.5", "device": "cpu"}),
            "auto": ("w8a8, SmoothQuant alpha auto", "w8a8", {"alpha": "auto", "device": "cpu"}),
            "gptq": ("gptq w8 per channel (W8A16)", "gptq", {"bits": 8, "group_size": -1, "sym": True,
                                                             "device": "cpu"})}


def variants(only: list[str]) -> list[tuple[str, str, dict]]:
    """The selected variants (gptq only where teeny-gptq is installed)."""
    return [VARIANTS[k] for k in only if k != "gptq" or importlib.util.find_spec("teeny_gptq") is not None]


def source_dir(model: str) -> Path:
    from teeny_core.demo import gemma_model, qwen_model
    from teeny_core.modeling import ModelSource
    from teeny_core.walker import safetensors_dir

    gguf = Path(qwen_model() if model == "qwen" else gemma_model())
    return safetensors_dir(ModelSource(str(gguf.parent), gguf_file=gguf.name))


def linear_speed(model_dir: Path) -> list[tuple[str, int, float, float]]:
    """(shape, rows, int8 ms, bf16 ms) per distinct linear shape of the model's first layer."""
    import torch

    from teeny_core.arch import spec_for
    from teeny_core.int8 import Int8Linear
    from teeny_core.walker import ShardReader

    config = json.loads((model_dir / "config.json").read_text())
    spec = spec_for(config["model_type"])
    reader = ShardReader(model_dir)
    shapes = sorted({tuple(reader.shape(f"{spec.layer_prefix(0)}.{n}.weight")) for n in spec.linears()})
    rows_out = []
    for out_f, in_f in shapes:
        w = torch.randn(out_f, in_f)
        scale = w.abs().amax(1) / 127
        int8 = Int8Linear(torch.round(w / scale[:, None]).to(torch.int8), scale)
        wb = w.bfloat16()
        for rows in (1, 8, 64):
            x = torch.randn(rows, in_f)
            xb = x.bfloat16()
            with torch.no_grad():
                rows_out.append((f"{out_f}x{in_f}", rows, best_ms(lambda: int8(xb)), best_ms(lambda: xb @ wb.t())))
    return rows_out


def prefill_speed(artifact_dir: Path, model_dir: Path, tokens: int = 64) -> tuple[float, float]:
    """Tokens/s of one ``tokens``-long prefill: the W8A8 artifact (int8 linears, bfloat16 elsewhere) and the
    original in bfloat16."""
    import torch

    from teeny_core.modeling import Artifact
    from teeny_core.plugins import Plugins

    runtime = Plugins.load().get("runtime", "transformers")
    out = []
    for fmt, path in (("compressed-tensors", artifact_dir), ("hf", model_dir)):
        loaded = runtime().load(Artifact(format=fmt, path=path),
                                runtime.Options.from_mapping({"device": "cpu", "dtype": "bfloat16"}))
        ids = torch.arange(100, 100 + tokens).reshape(1, -1)
        with torch.no_grad():
            ms = best_ms(lambda: loaded.model(input_ids=ids), repeat=3)
        out.append(tokens / (ms / 1000))
        loaded.close()
    return out[0], out[1]


def outlier_figure(smoothing: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(smoothing)
    fig, ax = plt.subplots(figsize=(10, 4))
    ax.plot([smoothing[n]["act_ratio_before"] for n in names], "o-", label="before smoothing")
    ax.plot([smoothing[n]["act_ratio_after"] for n in names], "s-", label="after (alpha auto)")
    ax.set_yscale("log")
    ax.set_xlabel("linear group (layer by layer: qkv, o, gate/up, down)")
    ax.set_ylabel("max / median channel max of |input|")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("qwen", "gemma"), default="qwen")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to run (each takes minutes on a 0.5B model on 2 cores)")
    args = parser.parse_args()

    model_dir = source_dir(args.model)
    chunks, refs = reference(model_dir, args.chunks)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="teeny-w8a8-bench-", dir=CACHE))
    rows, smoothing, prefill = [], {}, None
    try:
        for label, method, options in variants(args.only):
            out = work / label.split(",")[-1].strip().replace(" ", "-")
            made = run_child({"method": method, "options": options, "model": str(model_dir),
                                        "out": str(out), "samples": args.samples, "seq_len": args.seq_len})
            rows.append((label, made, score(out, made["format"], chunks, refs)))
            print(f"done: {label} ({made['seconds']:.0f} s) KL {rows[-1][2]['kl']:.5f}", file=sys.stderr, flush=True)
            if options.get("alpha") == "auto":
                smoothing = made["smoothing"]
                prefill = prefill_speed(out, model_dir)
            shutil.rmtree(out)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if smoothing:
        outlier_figure(smoothing, FIGURE)
    speed = linear_speed(model_dir)
    text = render(rows, smoothing, speed, prefill, args)
    print(text)
    write_section(RESULTS, "w8a8", text)


def render(rows, smoothing, speed, prefill, args) -> str:
    kl = {label: s["kl"] for label, _, s in rows}
    lines = [f"Command: `python benchmarks/w8a8.py --model {args.model} --samples {args.samples} --seq-len "
             f"{args.seq_len} --chunks {args.chunks} --only {' '.join(args.only)}`; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
             f"{load_note()}.", "",
             "| variant | quantize s | perplexity | KL (nats) | top-1 agree |", "|---|---:|---:|---:|---:|"]
    for label, made, s in rows:
        lines.append(f"| {label} | {made['seconds']:.0f} | {fidelity_cells(s)} |")
    auto, plain = kl.get("w8a8, SmoothQuant alpha auto"), kl.get("w8a8, no smoothing")
    gptq = kl.get("gptq w8 per channel (W8A16)")
    lines.append("")
    if auto is not None and plain:
        lines.append(f"- Target KL(alpha auto) <= 0.5 x KL(no smoothing): ratio {auto / plain:.2f} -> "
                     f"{'met' if auto <= 0.5 * plain else 'missed'}.")
    if auto is not None and gptq:
        lines.append(f"- Target KL(alpha auto) <= 3 x KL(GPTQ w8 weight-only): ratio {auto / gptq:.2f} -> "
                     f"{'met' if auto <= 3 * gptq else 'missed'}.")
    if smoothing:
        before = sorted(g["act_ratio_before"] for g in smoothing.values())
        after = sorted(g["act_ratio_after"] for g in smoothing.values())
        alphas = [g["alpha"] for g in smoothing.values()]
        lines.append(f"- Activation outliers (largest / median channel max per group input): median over groups "
                     f"{before[len(before) // 2]:.1f} before, {after[len(after) // 2]:.1f} after smoothing; worst "
                     f"{before[-1]:.0f} -> {after[-1]:.0f}; alpha chosen per group: mean "
                     f"{sum(alphas) / len(alphas):.2f} (figure: w8a8-outliers.png).")
    lines += ["", "| linear (out x in) | rows | int8 ms (quantize + _int_mm) | bf16 ms | speed-up |",
              "|---|---:|---:|---:|---:|"]
    for shape, r, i8, bf in speed:
        lines.append(f"| {shape} | {r} | {i8:.3f} | {bf:.3f} | {bf / i8:.2f}x |")
    if prefill:
        ratio = prefill[0] / prefill[1]
        lines += ["", f"- Prefill of 64 tokens, whole model: W8A8 {prefill[0]:.0f} tokens/s, bf16 {prefill[1]:.0f} "
                      f"tokens/s: {ratio:.2f}x; target 1.3x {'met' if ratio >= 1.3 else 'missed'}."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
