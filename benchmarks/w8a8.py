"""W8A8 (int8 weights and int8 activations, per token or static per tensor) with and without SmoothQuant against
GPTQ w8 weight-only: KL to the original, activation outliers before and after smoothing, CPU speed of the int8
products.

    python benchmarks/w8a8.py [--model qwen|gemma] [--samples 16] [--seq-len 256] [--chunks 4]
                              [--only none 0.5 auto static static-auto auto-gptq gptq] [--speed]

The original is the demo's GGUF (Qwen2.5-Coder-0.5B-Instruct Q4_K_M, or Gemma 3 270M) dequantized once (the
walker's cached copy). Each variant is quantized in a child process of its own with the `code` calibrator and
scored by benchmarks/gemma.py's ``score`` (the fidelity evaluator's KL over held-out pydoc windows, through the
transformers runtime: W8A8 runs torch._int_mm, GPTQ w8 its packed kernel). Each finished row is stored in
benchmarks/results/w8a8.json with its date and load average, so variants can be run one at a time and the
table shows every row measured so far (the rest as not measured).
``--speed``: one linear of each of the model's shapes and of Qwen2.5-14B's (random weights), int8 (quantizing the
activations per token, torch._int_mm, rescaling) against a bfloat16 ``x @ w.T`` (and the product alone) at 1, 8
and 64 rows, and a 64-token prefill of the whole model, computing the last position's logits as serving does (and
all 64, as a perplexity pass does), each set timed alternately in one process (the ratio is what survives a
loaded machine).
Writes benchmarks/results/w8a8.md (a generated section) and benchmarks/results/w8a8-outliers.png.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from gemma import CACHE, cell, reference, run_child, score, write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "w8a8.md"
FIGURE = ROOT / "benchmarks" / "results" / "w8a8-outliers.png"


VARIANTS = {"none": ("w8a8, no smoothing", "w8a8", {"smooth": False, "device": "cpu"}),
            "0.5": ("w8a8, SmoothQuant alpha 0.5", "w8a8", {"alpha": "0.5", "device": "cpu"}),
            "auto": ("w8a8, SmoothQuant alpha auto", "w8a8", {"alpha": "auto", "device": "cpu"}),
            "static": ("w8a8 static, no smoothing", "w8a8", {"smooth": False, "activations": "static",
                                                            "device": "cpu"}),
            "static-auto": ("w8a8 static, SmoothQuant alpha auto", "w8a8", {"alpha": "auto", "activations": "static",
                                                                           "device": "cpu"}),
            "auto-gptq": ("w8a8, SmoothQuant alpha auto, GPTQ weights", "w8a8",
                          {"alpha": "auto", "weights": "gptq", "device": "cpu"}),
            "gptq": ("gptq w8 per channel (W8A16)", "gptq", {"bits": 8, "group_size": -1, "sym": True,
                                                             "device": "cpu"})}
ROWS = ROOT / "benchmarks" / "results" / "w8a8.json"
"""Every measured row by variant key (with its date and load average), so runs of single variants add up."""


def variants(only: list[str]) -> list[tuple[str, tuple[str, str, dict]]]:
    """The selected variants by key (gptq only where teeny-gptq is installed)."""
    return [(k, VARIANTS[k]) for k in only if k != "gptq" or importlib.util.find_spec("teeny_gptq") is not None]


def source_dir(model: str) -> Path:
    from teeny_core.demo import gemma_model, qwen_model
    from teeny_core.modeling import ModelSource
    from teeny_core.walker import safetensors_dir

    gguf = Path(qwen_model() if model == "qwen" else gemma_model())
    return safetensors_dir(ModelSource(str(gguf.parent), gguf_file=gguf.name))


def interleaved_ms(fns, repeat: int = 30, chunk_s: float = 0.002) -> list[float]:
    """Fastest milliseconds per call of each of ``fns``, timed in turn ``repeat`` times after a warm-up (each
    timing repeats a call for about ``chunk_s``): load that comes and goes hits all of them alike, and on a busy
    machine the fastest of many short timings is the one nobody interrupted."""
    number = []
    for fn in fns:
        fn()
        start = time.perf_counter()
        fn()
        number.append(max(1, int(chunk_s / max(time.perf_counter() - start, 1e-6))))
    best = [float("inf")] * len(fns)
    for _ in range(repeat):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            for _ in range(number[i]):
                fn()
            best[i] = min(best[i], 1000 * (time.perf_counter() - start) / number[i])
    return best


QWEN_14B_SHAPES = [(1024, 5120), (5120, 5120), (13824, 5120), (5120, 13824)]
"""Qwen2.5-14B's linears (out, in): k/v, q/o, gate/up, down: the reference target's shapes."""


def linear_speed(model_dir: Path) -> list[tuple[str, int, float, float, float]]:
    """(shape, rows, int8 ms, bf16 ms, product ms) per distinct linear shape of the model's first layer (and of
    Qwen2.5-14B's): the int8 linear on bfloat16 inputs (quantized per token, torch._int_mm, rescaled) against a
    bfloat16 ``x @ w.T``, and torch._int_mm alone on int8 codes of the same shape."""
    import torch

    from teeny_core.arch import spec_for
    from teeny_core.int8 import Int8Linear
    from teeny_core.walker import ShardReader

    config = json.loads((model_dir / "config.json").read_text())
    spec = spec_for(config["model_type"])
    reader = ShardReader(model_dir)
    shapes = sorted({tuple(reader.shape(f"{spec.layer_prefix(0)}.{n}.weight")) for n in spec.linears()})
    rows_out = []
    for label, (out_f, in_f) in [(f"{o}x{i}", (o, i)) for o, i in shapes] + [
            (f"{o}x{i} (14B)", (o, i)) for o, i in QWEN_14B_SHAPES]:
        w = torch.randn(out_f, in_f)
        scale = w.abs().amax(1) / 127
        int8 = Int8Linear(torch.round(w / scale[:, None]).to(torch.int8), scale)
        wb = w.bfloat16()
        for rows in (1, 8, 64):
            xb = torch.randn(rows, in_f).bfloat16()
            codes = torch.randint(-127, 128, (rows, in_f), dtype=torch.int8)
            with torch.no_grad():
                i8, bf, mm = interleaved_ms([lambda: int8(xb), lambda: xb @ wb.t(),
                                             lambda: torch._int_mm(codes, int8.weight.t())])
            rows_out.append((label, rows, i8, bf, mm))
    return rows_out


def prefill_speed(artifact_dir: Path, model_dir: Path, tokens: int = 64, keep: int = 1) -> tuple[float, float]:
    """Tokens/s of one ``tokens``-long prefill, timed alternately: the W8A8 artifact (int8 linears, bfloat16
    elsewhere, lm_head included) and the original in bfloat16; logits for the last ``keep`` positions (1: what
    generation's prefill computes; 0: all of them)."""
    import torch

    from teeny_core.modeling import Artifact
    from teeny_core.plugins import Plugins

    runtime = Plugins.load().get("runtime", "transformers")
    options = runtime.Options.from_mapping({"device": "cpu", "dtype": "bfloat16"})
    loaded = [runtime().load(Artifact(format=fmt, path=path), options)
              for fmt, path in (("compressed-tensors", artifact_dir), ("hf", model_dir))]
    ids = torch.arange(100, 100 + tokens).reshape(1, -1)
    try:
        with torch.no_grad():
            ms = interleaved_ms([lambda m=m: m.model(input_ids=ids, logits_to_keep=keep) for m in loaded], repeat=10)
    finally:
        for m in loaded:
            m.close()
    return tokens / (ms[0] / 1000), tokens / (ms[1] / 1000)


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


def load_rows() -> dict:
    """The stored rows (:data:`ROWS`): ``{"variants": {key: row}, "speed": {...} or None}``."""
    return json.loads(ROWS.read_text()) if ROWS.exists() else {"variants": {}, "speed": None}


def save_rows(variants: dict | None = None, speed: dict | None = None) -> dict:
    """Add rows to the stored ones, read afresh (runs of other variants may have stored theirs meanwhile)."""
    stored = load_rows()
    stored["variants"].update(variants or {})
    if speed:
        stored["speed"] = speed
    ROWS.write_text(json.dumps(stored, indent=1) + "\n")
    return stored


def measured_when() -> dict:
    """When a row was finished and the machine's load averages then (1, 5 and 15 minutes)."""
    return {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load": [round(v, 1) for v in os.getloadavg()]}


def load_text(load) -> str:
    """A row's load averages as ``1 min / 5 min / 15 min`` (or the note a row from an earlier run carries)."""
    return load if isinstance(load, str) else " / ".join(f"{v:.1f}" for v in load)


def smoothing_summary(smoothing: dict) -> dict:
    """Outlier ratios over the groups before and after smoothing, and the mean alpha chosen."""
    before = sorted(g["act_ratio_before"] for g in smoothing.values() if "act_ratio_before" in g)
    after = sorted(g["act_ratio_after"] for g in smoothing.values() if "act_ratio_after" in g)
    alphas = [g["alpha"] for g in smoothing.values() if "alpha" in g]
    return {"median_before": before[len(before) // 2], "median_after": after[len(after) // 2],
            "worst_before": before[-1], "worst_after": after[-1], "mean_alpha": sum(alphas) / len(alphas)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("qwen", "gemma"), default="qwen")
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--only", nargs="*", choices=list(VARIANTS), default=list(VARIANTS),
                        help="variants to run (each takes many minutes on a 0.5B model on 2 cores); their rows "
                             "replace the stored ones, the others stay")
    parser.add_argument("--speed", action="store_true", help="also measure the int8 linears and the prefill")
    args = parser.parse_args()

    model_dir = source_dir(args.model)
    stored = load_rows()
    chosen = variants(args.only)
    if chosen:
        chunks, refs = reference(model_dir, args.chunks)
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="teeny-w8a8-bench-", dir=CACHE))
    setup = {"model": args.model, "samples": args.samples, "seq_len": args.seq_len, "chunks": args.chunks}
    try:
        for key, (label, method, options) in chosen:
            out = work / key
            made = run_child({"method": method, "options": options, "model": str(model_dir),
                              "out": str(out), "samples": args.samples, "seq_len": args.seq_len})
            row = {"label": label, "seconds": made["seconds"], **score(out, made["format"], chunks, refs), **setup,
                   **measured_when()}
            if made["smoothing"] and options.get("alpha") == "auto":
                row["smoothing"] = smoothing_summary(made["smoothing"])
                if key == "auto":
                    outlier_figure(made["smoothing"], FIGURE)
            stored = save_rows(variants={key: row})
            print(f"done: {label} ({made['seconds']:.0f} s) KL {row['kl']:.5f}", file=sys.stderr, flush=True)
            shutil.rmtree(out)
        if args.speed:
            out = work / "speed"  # any W8A8 checkpoint runs the same kernels: a cheaply calibrated one
            run_child({"method": "w8a8", "options": {"smooth": False, "device": "cpu"}, "model": str(model_dir),
                       "out": str(out), "samples": 2, "seq_len": 64})
            stored = save_rows(speed={"linears": linear_speed(model_dir), "prefill": prefill_speed(out, model_dir),
                                      "prefill_all_logits": prefill_speed(out, model_dir, keep=0),
                                      **measured_when()})
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = render(stored)
    print(text)
    write_section(RESULTS, "w8a8", text)


def render(stored: dict) -> str:
    """The generated section: every stored row with its date and load, the targets, the speed tables."""
    rows = stored["variants"]
    lines = ["Each row: `python benchmarks/w8a8.py --only KEY` (Qwen2.5-Coder-0.5B-Instruct, `code` calibration "
             "samples x seq_len tokens, KL over held-out windows of 256 tokens, as the row says), finished at the "
             "time shown, with the machine's load average then (1 / 5 / 15 min, 2 cores).", "",
             "| key | variant | calibration | KL windows | quantize s | perplexity | KL (nats) | top-1 agree | "
             "finished | load |",
             "|---|---|---|---:|---:|---:|---:|---:|---|---|"]
    for key in VARIANTS:
        if key not in rows:
            lines.append(f"| {key} | {VARIANTS[key][0]} | - | - | not measured | - | - | - | - | - |")
            continue
        r = rows[key]
        se = f" ± {r['kl_se']:.5f}" if r.get("kl_se") is not None else ""
        lines.append(f"| {key} | {r['label']} | {r['samples']} x {r['seq_len']} | {r['chunks']} | "
                     f"{cell(r.get('seconds'), '.0f')} | {cell(r.get('ppl'), '.3f')} | "
                     f"{cell(r.get('kl'), '.5f')}{se} | {cell(r.get('top1'), '.3f')} | {r['when']} | "
                     f"{load_text(r['load'])} |")
    kl = {key: r["kl"] for key, r in rows.items()}
    lines.append("")
    for smoothed, plain in (("auto", "none"), ("0.5", "none"), ("static-auto", "static")):
        if smoothed in kl and plain in kl:
            ratio = kl[smoothed] / kl[plain]
            lines.append(f"- KL({VARIANTS[smoothed][0]}) / KL({VARIANTS[plain][0]}) = {kl[smoothed]:.5f} / "
                         f"{kl[plain]:.5f} = {ratio:.2f} -> target <= 0.5 {'met' if ratio <= 0.5 else 'missed'}.")
    for smoothed in ("auto", "0.5", "static-auto", "auto-gptq"):
        if smoothed in kl and "gptq" in kl:
            ratio = kl[smoothed] / kl["gptq"]
            lines.append(f"- KL({VARIANTS[smoothed][0]}) / KL(GPTQ w8 weight-only) = {ratio:.2f} -> target <= 3 "
                         f"{'met' if ratio <= 3 else 'missed'}.")
    for key in ("auto", "static-auto"):
        sm = rows.get(key, {}).get("smoothing")
        if sm:
            lines.append(f"- {VARIANTS[key][0]}: activation outliers (largest / median channel max per group input) "
                         f"median over groups {sm['median_before']:.1f} before, {sm['median_after']:.1f} after "
                         f"smoothing; worst {sm['worst_before']:.0f} -> {sm['worst_after']:.0f}; mean alpha chosen "
                         f"{sm['mean_alpha']:.2f}" + (" (figure: w8a8-outliers.png)." if key == "auto" else "."))
    speed = stored.get("speed")
    if not speed:
        return "\n".join(lines + ["", "Speed: not measured."]) + "\n"
    lines += ["", f"Speed ({speed['when']}, load average {load_text(speed['load'])}): int8 and "
              "bf16 timed alternately in one process, fastest of each; the ratio is the figure that survives load.",
              "", "| linear (out x in) | rows | int8 ms (quantize + _int_mm + rescale) | bf16 ms | speed-up | "
              "_int_mm alone ms | product speed-up |", "|---|---:|---:|---:|---:|---:|---:|"]
    for shape, r, i8, bf, *mm in speed["linears"]:
        product = f"{mm[0]:.3f} | {bf / mm[0]:.2f}x" if mm else "- | -"
        lines.append(f"| {shape} | {r} | {i8:.3f} | {bf:.3f} | {bf / i8:.2f}x | {product} |")
    w8, bf16 = speed["prefill"]
    ratio = w8 / bf16
    lines += ["", f"- Prefill of 64 tokens, whole model, last position's logits (as generation computes them): "
                  f"W8A8 {w8:.0f} tokens/s, bf16 {bf16:.0f} tokens/s: {ratio:.2f}x; target 1.3x "
                  f"{'met' if ratio >= 1.3 else 'missed'}."]
    if speed.get("prefill_all_logits"):
        w8, bf16 = speed["prefill_all_logits"]
        lines.append(f"- The same prefill with logits for all 64 positions (a perplexity pass; lm_head, 151936 x 896, "
                     f"stays bfloat16 in both): W8A8 {w8:.0f} tokens/s, bf16 {bf16:.0f} tokens/s: {w8 / bf16:.2f}x.")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
