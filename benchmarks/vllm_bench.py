"""The vllm runtime on a GPU: the demo model (Qwen2.5-Coder-0.5B-Instruct) as published (GGUF Q4_K_M) and
its float copy, plus any Teeny artifact directories given, each in a fresh process.

Per model: vLLM's quantization kernel, weight MiB (parameters and buffers as vLLM holds them), peak GPU
MiB of the process (the KV cache pool is sized by gpu_memory_utilization, so it dominates), time to first
token, decode tokens/s at batch 1, and generation throughput over HumanEval chat prompts at batch 16.

    python benchmarks/vllm_bench.py --out benchmarks/results/gpu/vllm_bench.md [--artifact DIR ...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

BATCH = 16


def measure(artifact_dir: str) -> dict:
    """Runs in a child process: load one artifact in vLLM and time it."""
    from teeny_bench.generation import chat_prompt
    from teeny_bench.humaneval import load_problems
    from teeny_core.modeling import Artifact
    from teeny_vllm.runtime import VllmOptions, VllmRuntime, vllm_quantization

    artifact = Artifact.open(artifact_dir)
    t0 = time.perf_counter()
    model = VllmRuntime().load(artifact, VllmOptions(gpu_memory_utilization=0.5))
    load_s = time.perf_counter() - t0
    prompts = [chat_prompt(model.tokenizer, p.prompt) for p in load_problems()[:BATCH]]
    model.generate(prompts[:1], max_new_tokens=4)  # warm-up
    [first] = model.generate(prompts[:1], max_new_tokens=1)
    [one] = model.generate(prompts[:1], max_new_tokens=256)
    decode = (one.tokens - 1) / max(one.seconds - first.seconds, 1e-9) if one.tokens > 1 else None
    t0 = time.perf_counter()
    gens = model.generate(prompts, max_new_tokens=256)
    batch_s = time.perf_counter() - t0
    return {"format": artifact.format, "kernel": vllm_quantization(artifact) or "float",
            "weight_mib": model.weight_bytes() / 2**20, "peak_gpu_mib": model.peak_gpu_bytes() / 2**20,
            "load_s": load_s, "ttft_s": first.seconds, "decode_tok_s": decode,
            "throughput_tok_s": sum(g.tokens for g in gens) / batch_s, "batch": len(prompts)}


def demo_artifacts(work: Path) -> list[Path]:
    """The demo GGUF as published and its float copy (dequantized once), as Teeny artifact directories."""
    from teeny_core.demo import qwen_model
    from teeny_core.modeling import Artifact, resolve_source, save_hf_model

    gguf = Path(qwen_model())
    published, floats = work / "q4_k_m", work / "float"
    if not (published / "teeny-artifact.json").exists():
        published.mkdir(parents=True, exist_ok=True)
        (published / gguf.name).unlink(missing_ok=True)
        (published / gguf.name).symlink_to(gguf)
        Artifact("gguf", published, {"method": "none"}, file=gguf.name).save()
    if not (floats / "teeny-artifact.json").exists():
        model, tokenizer = resolve_source(str(gguf)).load(dtype="float16", device="cpu")
        save_hf_model(model, tokenizer, floats)
        Artifact("hf", floats, {"method": "none"}).save()
    return [published, floats]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=Path("/tmp/teeny-vllm-bench"))
    parser.add_argument("--artifact", action="append", default=[], help="a Teeny artifact directory (repeatable)")
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print("RESULT " + json.dumps(measure(args.measure)))
        return
    rows = []
    for directory in [*demo_artifacts(args.work), *map(Path, args.artifact)]:
        run = subprocess.run([sys.executable, __file__, "--out", str(args.out), "--measure", str(directory)],
                             capture_output=True, text=True)
        found = [line for line in run.stdout.splitlines() if line.startswith("RESULT ")]
        rows.append((directory.name, json.loads(found[-1][7:]) if found else {"error": run.stderr.strip()[-300:]}))
    import torch

    lines = [f"# vLLM runtime on {torch.cuda.get_device_name(0)}", "",
             "| model | format | kernel | weight MiB | peak GPU MiB | load s | TTFT s | decode tok/s (batch 1) "
             f"| throughput tok/s (batch {BATCH}) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows:
        if "error" in r:
            lines.append(f"| {name} | failed: {r['error']} |||||||")
            continue
        decode = f"{r['decode_tok_s']:.1f}" if r["decode_tok_s"] else "-"
        lines.append(f"| {name} | {r['format']} | {r['kernel']} | {r['weight_mib']:.1f} | {r['peak_gpu_mib']:.0f} "
                     f"| {r['load_s']:.1f} | {r['ttft_s']:.3f} | {decode} | {r['throughput_tok_s']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


if __name__ == "__main__":
    main()
