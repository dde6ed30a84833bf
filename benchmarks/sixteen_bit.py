"""Weights in memory of the demo's packed w4 variants (Qwen2.5-Coder-0.5B-Instruct, from its Q4_K_M GGUF) now
that unquantized tensors stay in 16 bits, against the Q4_K_M original's 463 MiB in llama.cpp.

    python benchmarks/sixteen_bit.py                 # RTN and AWQ w4 g128, the demo's options and calibration
    python benchmarks/sixteen_bit.py --methods rtn   # RTN only (about a minute)

Each variant is quantized from the GGUF's float copy (bfloat16 by default, ``--baseline-dtype float32`` for
the old behaviour), loaded packed by the transformers runtime on CPU, and its weight bytes (what the demo's
"weights in memory" column shows) and the artifact's size on disk are printed as a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

MIB = 2**20
ORIGINAL_MIB = 463  # the Q4_K_M file in llama.cpp: benchmarks/results/demo-qwen.md
VARIANTS = {"rtn": {"bits": 4, "group_size": 128, "skip": []}, "awq": {"bits": 4, "group_size": 128, "skip": []}}  # the demo's


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--baseline-dtype", default="bfloat16", choices=("bfloat16", "float16", "float32"))
    args = parser.parse_args()

    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.demo import qwen_model
    from teeny_core.modeling import Artifact, ModelSource, quiet_libraries, resolve_source
    from teeny_core.plugins import Plugins
    from teeny_core.walker import safetensors_dir

    quiet_libraries()
    plugins = Plugins.load()
    started = time.perf_counter()
    copy = safetensors_dir(resolve_source(qwen_model(), dtype=args.baseline_dtype))
    print(f"float copy ({args.baseline_dtype}): {copy} ({time.perf_counter() - started:.0f} s)")
    source = ModelSource(str(copy))
    code = plugins.get("calibrator", "code")
    calibration = code().samples(source.load_tokenizer(), code.Options.from_mapping({"samples": 16, "seq_len": 128}),
                                 seed=0)  # the demo's calibration
    print("\n| variant | unquantized tensors | quantize s | artifact MiB | weights in memory MiB | "
          f"vs Q4_K_M's {ORIGINAL_MIB} MiB | packed linears |")
    print("|---|---|---:|---:|---:|---:|---:|", flush=True)
    for method in args.methods:
        cls = plugins.get("quantizer", method)
        with tempfile.TemporaryDirectory(prefix=f"teeny-{method}-") as tmp:
            started = time.perf_counter()
            options = cls.Options.from_mapping(VARIANTS[method])
            made = cls().quantize(source, calibration if cls.needs_calibration(options) else None, options, Path(tmp))
            seconds = time.perf_counter() - started
            disk = sum(p.stat().st_size for p in Path(tmp).glob("*.safetensors"))
            loaded = TransformersRuntime().load(Artifact.open(made.path),
                                                TransformersRuntime.Options.from_mapping({"device": "cpu"}))
            facts = loaded.load_facts()
            loaded.close()
        held = facts["weight_bytes"] / MIB
        print(f"| {method}-w4-g128 | {made.meta['stored_dtype']} | {seconds:.0f} | {disk / MIB:.0f} | {held:.0f} | "
              f"{held / ORIGINAL_MIB:.3f}x | {facts['packed_layers']} |", flush=True)  # one row per variant


if __name__ == "__main__":
    main()
