"""QAT (teeny-qat) against GPTQ on the same grids (issue 25, item 3): KL to the original, artifact size, wall time
and peak RSS of quantizing, and the training curve of each block.

    nice python benchmarks/qat.py [--model qwen|gemma|DIR] [--samples 16] [--seq-len 128] [--epochs 2]
                                  [--chunks 4] [--lr-scale X] [--lr-weight X]
                                  [--only gptq-w2 qat-w2 gptq-w3 qat-w3] [--work DIR]
    nice python benchmarks/qat.py --only --merge OTHER/rows.json   # only the table, with rows of another --work

Rows: QAT w2 g64 against GPTQ w2 g64 (target: QAT's KL at most 0.5x GPTQ's) and QAT w3 g128 against GPTQ w3 g128
(at most 0.7x); both methods asymmetric (a learned zero point per group), lm_head kept, on the CPU. The original
is the demo's GGUF as its float copy (Qwen2.5-Coder-0.5B-Instruct in bfloat16, or Gemma 3 270M in float32), or an
HF directory. Both methods calibrate on the same `code` windows (seed 0); every row is scored by
benchmarks/gemma.py's ``score`` on held-out pydoc windows of 256 tokens (the fidelity evaluator's KL over the
original's top-256 tokens plus the rest, transformers in float32; GPTQ checkpoints run packed), checked to share
no 16-token run with the calibration tokens. Each row is quantized in a child process of its own (its peak RSS,
VmHWM, is its own) and cached with its score under ``--work``, so a rerun skips finished rows; a killed QAT row
resumes at its next block ($TEENY_CACHE/qat-blocks/). Writes a generated section of benchmarks/results/qat.md and
the per-block loss figure benchmarks/results/qat-blocks.png (``-<model>`` appended for other models).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from gemma import code_calibration, load_note, reference, run_child, score, write_section  # noqa: E402

RESULTS = HERE / "results"
TARGETS = {2: 0.5, 3: 0.7}  # QAT's KL at most this fraction of GPTQ's on the same grid
GRIDS = {2: 64, 3: 128}
ROWS = {f"{method}-w{bits}": (method, bits) for bits in GRIDS for method in ("gptq", "qat")}
NGRAM = 16


def source_dir(model: str) -> Path:
    """The original's HF directory: the demo Qwen's bfloat16 float copy, Gemma's float32 copy, or ``model``."""
    if model == "gemma":
        from gemma import original_model_dir

        return original_model_dir()
    if model == "qwen":
        from teeny_core.demo import qwen_model
        from teeny_core.modeling import resolve_source
        from teeny_core.walker import safetensors_dir

        return safetensors_dir(resolve_source(qwen_model(), dtype="bfloat16"))
    return Path(model)


def row_options(row: str, args) -> tuple[str, dict]:
    """The quantizer and its options of one row (QAT's learning rates only where given)."""
    method, bits = ROWS[row]
    options = {"bits": bits, "group_size": GRIDS[bits], "sym": False, "device": "cpu"}
    if method == "qat":
        options["epochs"] = args.epochs
        options.update({k: v for k, v in (("lr_scale", args.lr_scale), ("lr_weight", args.lr_weight)) if v})
    return method, options


def row_key(row: str, args) -> str:
    """The cache key of a row: its name and every setting it depends on."""
    key = f"{row}-s{args.samples}x{args.seq_len}"
    if ROWS[row][0] != "qat":
        return key
    return key + f"-e{args.epochs}" + "".join(f"-{name}{value:g}" for name, value in
                                              (("ls", args.lr_scale), ("lw", args.lr_weight)) if value)


def shared_runs(calibration, windows: list[list[int]], prefix: int) -> int:
    """How many ``NGRAM``-token runs of the scored windows (their text, after the document prefix) also occur
    in the calibration samples."""
    seen = {tuple(s[i:i + NGRAM]) for s in calibration.samples for i in range(len(s) - NGRAM + 1)}
    return sum(tuple(w[i:i + NGRAM]) in seen for w in windows for i in range(prefix, len(w) - NGRAM + 1))


class Watch:
    """While a child quantizes: the load average every ``every`` seconds and, for a QAT row, when each block
    lands in its resume directory (so a row cut short says how far it got and at what pace)."""

    def __init__(self, blocks: Path | None, progress: Path, every: float = 15.0):
        self.blocks, self.progress, self.every = blocks, progress, every
        self.loads: list[float] = []
        self.done: dict[str, dict] = json.loads(progress.read_text()) if progress.exists() else {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            self.loads.append(os.getloadavg()[0])
            if self.blocks is None or not self.blocks.is_dir():
                continue
            for facts in sorted(self.blocks.glob("layer-*.json")):
                index = facts.stem.split("-")[1]
                if index not in self.done:  # when it landed, its loss after training and its walker seconds
                    self.done[index] = {"at": time.time(), **json.loads(facts.read_text())}
                    self.progress.write_text(json.dumps(self.done))
                    print(f"qat block {index} done at {time.strftime('%H:%M:%S')}: {self.done[index]}",
                          file=sys.stderr, flush=True)

    def __enter__(self) -> "Watch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="qwen", help="qwen, gemma or an HF model directory")
    parser.add_argument("--samples", type=int, default=16, help="calibration windows (both methods)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--epochs", type=int, default=2, help="QAT passes over the calibration per block")
    parser.add_argument("--lr-scale", type=float, default=None, help="QAT's lr_scale (default: the quantizer's)")
    parser.add_argument("--lr-weight", type=float, default=None, help="QAT's lr_weight (default: the quantizer's)")
    parser.add_argument("--chunks", type=int, default=4, help="scored windows of 256 tokens")
    parser.add_argument("--only", nargs="*", choices=list(ROWS), default=list(ROWS), help="rows to compute")
    parser.add_argument("--work", type=Path, default=None,
                        help="cache of artifacts and rows (default ~/.cache/teeny/bench-qat/MODEL)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="rows.json files of other --work directories to add to the table (rows run in parallel)")
    parser.add_argument("--results", type=Path, default=RESULTS, help="where qat.md and the figure go")
    args = parser.parse_args(argv)

    from teeny_core.modeling import quiet_libraries
    from teeny_core import Artifact, ModelSource
    from teeny_core.windows import document_prefix

    quiet_libraries()
    model_dir = source_dir(args.model)
    name = args.model if args.model in ("qwen", "gemma") else Path(args.model).name
    work = args.work or Path.home() / ".cache" / "teeny" / "bench-qat" / name
    work.mkdir(parents=True, exist_ok=True)
    source = ModelSource(str(model_dir))
    calibration = code_calibration(source, args.samples, args.seq_len)

    import torch

    refs_file = work / f"refs-{args.chunks}.pt"
    if refs_file.exists():
        windows, refs = torch.load(refs_file)
    else:
        windows, refs = reference(model_dir, args.chunks)
        torch.save((windows, refs), refs_file)
    overlap = shared_runs(calibration, windows, len(document_prefix(source.load_tokenizer())))

    cache = work / "rows.json"
    rows: dict[str, dict] = json.loads(cache.read_text()) if cache.exists() else {}
    for row in args.only:
        key = row_key(row, args)
        if key in rows:
            print(f"{key}: cached", file=sys.stderr, flush=True)
            continue
        method, options = row_options(row, args)
        out = work / key
        shutil.rmtree(out, ignore_errors=True)  # a half-written artifact; QAT's finished blocks are kept elsewhere
        blocks = None
        if method == "qat":
            from teeny_qat.quantizer import QatOptions, resume_dir

            blocks = resume_dir(source, calibration, QatOptions.from_mapping(options))
        spec = {"method": method, "options": options, "model": str(model_dir), "out": str(out),
                "samples": args.samples, "seq_len": args.seq_len}
        print(f"{key}: quantizing", file=sys.stderr, flush=True)
        with Watch(blocks, work / f"{key}.progress.json") as watch:
            facts = run_child(spec)
        meta = Artifact.open(out).meta
        rows[key] = {"row": row, "method": method, "bits": options["bits"], "group_size": options["group_size"],
                     "samples": args.samples, "seq_len": args.seq_len, "epochs": options.get("epochs"),
                     "lr_scale": options.get("lr_scale"), "lr_weight": options.get("lr_weight"),
                     "seconds": facts["seconds"], "cpu_seconds": facts["cpu_seconds"],
                     "peak_rss": facts["peak_rss"], "bytes": weight_bytes(out),
                     "bits_per_weight": facts["bits_per_weight"],
                     "load_mean": sum(watch.loads) / len(watch.loads) if watch.loads else os.getloadavg()[0],
                     "block_losses": meta.get("block_losses", {}), "resumed_blocks": meta.get("resumed_blocks", 0),
                     **score(out, "hf-gptq", windows, refs)}
        cache.write_text(json.dumps(rows, indent=1))
        print(f"{key}: done, KL {rows[key]['kl']:.4f}", file=sys.stderr, flush=True)

    for other in args.merge:
        rows = {**json.loads(other.read_text()), **rows}
    suffix = "" if name == "qwen" else f"-{name}"
    figure = args.results / f"qat-blocks{suffix}.png"
    if any(r["block_losses"] for r in rows.values()):
        plot_blocks(rows, figure)
    write_section(args.results / "qat.md", f"table-{name}",
                  render(rows, args, name, overlap, figure.name, len(calibration.samples[0])))


def weight_bytes(directory: Path) -> int:
    """The checkpoint's tensors on disk (its safetensors files; not the tokenizer or the configs)."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def label(r: dict) -> str:
    text = f"{r['method']} w{r['bits']} g{r['group_size']}, {r['samples']} x {r['seq_len']} calibration"
    if r["method"] != "qat":
        return text
    rates = "".join(f", {name} {r[name]:g}" for name in ("lr_scale", "lr_weight") if r.get(name))
    return text + f", epochs {r['epochs']}" + rates


def plot_blocks(rows: dict[str, dict], path: Path) -> None:
    """Each QAT row's block output MSE before (its starting grid) and after training, per block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in rows.values():
        if not r["block_losses"]:
            continue
        blocks = sorted(r["block_losses"], key=int)
        x = [int(b) for b in blocks]
        line, = ax.plot(x, [r["block_losses"][b]["before"] for b in blocks], "--", marker="o", markersize=3,
                        label=f"{label(r)}: before (RTN start)")
        ax.plot(x, [r["block_losses"][b]["after"] for b in blocks], "-", marker="o", markersize=3,
                color=line.get_color(), label=f"{label(r)}: after")
    ax.set_yscale("log")
    ax.set_xlabel("decoder block")
    ax.set_ylabel("block output MSE to the original block")
    ax.set_title("QAT block-wise training: loss before and after, per block")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(rows: dict[str, dict], args, name: str, overlap: int, figure: str, seq_len: int) -> str:
    """The generated section: settings, the table, and each QAT row's KL ratio to GPTQ against its target."""
    lines = [
        f"### {name}",
        "",
        f"Command: `python benchmarks/qat.py --model {args.model} --samples {args.samples} --seq-len "
        f"{args.seq_len} --epochs {args.epochs} --chunks {args.chunks}` (rows of other settings cached in the same "
        f"work directory are listed too); {load_note()}.",
        "",
        f"Scored windows: {args.chunks} x 256 tokens of pydoc topic help, held out: {overlap} of their "
        f"{NGRAM}-token runs occur in the {args.samples} x {seq_len} calibration tokens (stdlib source). KL ± "
        "s.e. over windows, and its 95% interval (mean ± 1.96 s.e.). Wall and CPU seconds and peak RSS (VmHWM) "
        "are the quantizing child's; load is the mean 1-minute load average while it ran on the 2 cores (its own "
        "threads count towards it; above 2, other work shared the CPU and the times are not the CPU's own).",
        "",
        "| variant | KL ± s.e. | 95% interval | top-1 | PPL | artifact MiB | wall s | CPU s | peak RSS GiB | load |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sorted(rows.values(), key=lambda r: (r["bits"], r["samples"], r["seq_len"], r["method"],
                                                  r["epochs"] or 0)):
        resumed = f" (resumed: {r['resumed_blocks']} blocks before)" if r["resumed_blocks"] else ""
        lines.append(f"| {label(r)} | {r['kl']:.4f} ± {r['kl_se']:.4f} | {r['kl'] - 1.96 * r['kl_se']:.4f} .. "
                     f"{r['kl'] + 1.96 * r['kl_se']:.4f} | {100 * r['top1']:.1f}% | {r['ppl']:.3f} | "
                     f"{r['bytes'] / 2**20:.1f} | {r['seconds']:.0f}{resumed} | {r['cpu_seconds']:.0f} | "
                     f"{r['peak_rss'] / 2**30:.2f} | {r['load_mean']:.1f} |")
    lines.append("")
    for r in rows.values():
        gptq = next((g for g in rows.values() if g["method"] == "gptq" and g["bits"] == r["bits"]
                     and g["samples"] == r["samples"] and g["seq_len"] == r["seq_len"]), None)
        if r["method"] != "qat" or gptq is None:
            continue
        ratio, target = r["kl"] / gptq["kl"], TARGETS[r["bits"]]
        worst = (r["kl"] + 1.96 * r["kl_se"]) / max(gptq["kl"] - 1.96 * gptq["kl_se"], 1e-12)
        lines.append(f"- {label(r)}: KL {ratio:.3f}x GPTQ's (target <= {target}x): "
                     f"**{'met' if ratio <= target else 'missed'}**; at the intervals' unfavourable ends "
                     f"{worst:.3f}x.")
    if any(r["block_losses"] for r in rows.values()):
        lines += ["", f"![QAT block losses]({figure})"]
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
