"""Real scale: a Qwen2.5-14B-shaped random-weight model streamed through the layer walker.

    python benchmarks/scale.py [--layers 48] [--methods rtn gguf gptq] [--gptq-layers 2 4 8] [--work DIR]

Writes the model (48 layers, hidden 5120, intermediate 13824, 40 heads / 8 KV heads, vocab 152064, bf16,
about 29.5 GB at 48 layers) to ``--work``, then quantizes it, each method in its own process so its peak RSS
is its own: RTN w4 g128 and GGUF Q4_K_M on all ``--layers`` layers, GPTQ w4 g128 on the first 2, 4, 8 layers
(views of the same shards) with per-layer time. Full-model times are extrapolated linearly from the measured
per-layer times where fewer layers ran, and the table says so. Results go to benchmarks/results/scale.md.
The model files are deleted at the end unless ``--keep``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.md"
FULL_LAYERS = 48
SHAPE = dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=8,
             vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
             tie_word_embeddings=False)
GiB = 2**30


def write_model(out: Path, layers: int) -> float:
    """Write the random bf16 model with the walker's shard writer, one tensor at a time; returns GB written."""
    import torch
    import transformers

    from teeny_core.testing import build_tokenizer
    from teeny_core.walker import ShardWriter

    tokenizer = build_tokenizer()
    config = transformers.Qwen2Config(**SHAPE, num_hidden_layers=layers, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, dtype="bfloat16")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gen = torch.Generator().manual_seed(0)
    h, i, kv = SHAPE["hidden_size"], SHAPE["intermediate_size"], 1024

    def rand(*shape, std=0.02):
        t = torch.empty(shape, dtype=torch.bfloat16)
        rows = max(1, 2**24 // (t.numel() // shape[0] or 1))
        for start in range(0, shape[0], rows):  # float32 scratch of at most 64 MiB
            t[start:start + rows] = torch.randn((min(rows, shape[0] - start), *shape[1:]), generator=gen) * std
        return t

    writer = ShardWriter(out)
    writer.add("model.embed_tokens.weight", rand(SHAPE["vocab_size"], h))
    for n in range(layers):
        p = f"model.layers.{n}."
        for name, shape in (("self_attn.q_proj", (h, h)), ("self_attn.k_proj", (kv, h)), ("self_attn.v_proj", (kv, h)),
                            ("self_attn.o_proj", (h, h)), ("mlp.gate_proj", (i, h)), ("mlp.up_proj", (i, h)),
                            ("mlp.down_proj", (h, i))):
            writer.add(f"{p}{name}.weight", rand(*shape))
        for name, width in (("self_attn.q_proj", h), ("self_attn.k_proj", kv), ("self_attn.v_proj", kv)):
            writer.add(f"{p}{name}.bias", rand(width))
        for norm in ("input_layernorm", "post_attention_layernorm"):
            writer.add(f"{p}{norm}.weight", 1 + rand(h, std=0.1))
    writer.add("model.norm.weight", 1 + rand(h, std=0.1))
    writer.add("lm_head.weight", rand(SHAPE["vocab_size"], h))
    writer.close()
    return writer.total / 1e9


def layer_view(model: Path, out: Path, layers: int) -> Path:
    """A model directory holding only the first ``layers`` layers: a config and an index over the same shards."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = layers
    (out / "config.json").write_text(json.dumps(config, indent=2))
    for f in model.iterdir():
        if f.suffix == ".safetensors" and not (out / f.name).exists():
            (out / f.name).symlink_to(f)
        elif f.name.startswith("tokenizer") or f.name == "special_tokens_map.json":
            shutil.copy(f, out / f.name)
    index = json.loads((model / "model.safetensors.index.json").read_text())
    keep = {k: v for k, v in index["weight_map"].items()
            if not k.startswith("model.layers.") or int(k.split(".")[2]) < layers}
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": keep}))
    return out


CHILD = r"""
import json, resource, sys, time
import torch
from teeny_core.plugins import Plugins
from teeny_core.types import CalibrationSet, ModelSource
method, path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
cls = Plugins.load().get("quantizer", method)
cal = None
if method == "gptq":
    g = torch.Generator().manual_seed(0)
    cal = CalibrationSet("random", torch.randint(3, 500, (4, 256), generator=g).tolist())
start = time.perf_counter()
artifact = cls().quantize(ModelSource(path), cal, cls.Options.from_mapping(options), __import__("pathlib").Path(out))
seconds = time.perf_counter() - start
stats = artifact.meta.get("layer_stats") or {}
print(json.dumps({"seconds": seconds, "peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                  "linear_seconds": sum(s["seconds"] for s in stats.values())}))
"""


def run(method: str, model: Path, out: Path, options: dict) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", CHILD, method, str(model), str(out), json.dumps(options)],
                          capture_output=True, text=True, env={**os.environ, "TEENY_NO_BAR": "1"})
    if proc.returncode:
        raise SystemExit(f"{method} failed:\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    shutil.rmtree(out)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=FULL_LAYERS)
    ap.add_argument("--methods", nargs="+", default=["rtn", "gguf", "gptq"], choices=["rtn", "gguf", "gptq"])
    ap.add_argument("--gptq-layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--work", type=Path, default=Path("/tmp/teeny-scale"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT))
    layers = max([args.layers] + (args.gptq_layers if "gptq" in args.methods else []))
    model = args.work / f"qwen14b-shape-{layers}"
    rows = []
    try:
        if not (model / "model.safetensors.index.json").exists():
            t = time.perf_counter()
            gb = write_model(model, layers)
            print(f"wrote {gb:.1f} GB ({layers} layers) in {time.perf_counter() - t:.0f} s", flush=True)
        main_model = layer_view(model, args.work / f"view-{args.layers}", args.layers)
        for method, options in (("rtn", {"bits": 4, "group_size": 128, "scheme": "asym"}),
                                ("gguf", {"type": "Q4_K_M", "imatrix": "off"})):
            if method in args.methods:
                r = run(method, main_model, args.work / f"out-{method}", options)
                rows.append((method, args.layers, r))
                print(method, args.layers, r, flush=True)
                write_results(rows, args)
        if "gptq" in args.methods:
            for n in args.gptq_layers:
                view = layer_view(model, args.work / f"view-{n}", n)
                r = run("gptq", view, args.work / f"out-gptq-{n}", {"bits": 4, "group_size": 128, "device": "cpu"})
                rows.append(("gptq", n, r))
                print("gptq", n, r, flush=True)
                write_results(rows, args)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


def write_results(rows, args) -> None:
    lines = [
        "# Real scale: a Qwen2.5-14B-shaped model through the layer walker",
        "",
        f"`python benchmarks/scale.py --layers {args.layers} --methods {' '.join(args.methods)} --gptq-layers "
        f"{' '.join(map(str, args.gptq_layers))}` on {platform.machine()}, {os.cpu_count()} cores (shared), "
        f"torch CPU. Random bf16 weights of Qwen2.5-14B's shape (hidden 5120, intermediate 13824, 40/8 heads, "
        f"vocab 152064). GPTQ calibrates on 4 x 256 random token ids. Each run is its own process.",
        "",
        "| method | layers run | wall s | s / layer | peak RSS GiB | full 48-layer wall s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for method, n, r in rows:
        per_layer = r["seconds"] / n
        full = r["seconds"] if n == FULL_LAYERS else per_layer * FULL_LAYERS
        note = "" if n == FULL_LAYERS else " (extrapolated)"
        lines.append(f"| {method} | {n} | {r['seconds']:.0f} | {per_layer:.1f} | {r['peak'] / GiB:.2f} | "
                     f"{full:.0f}{note} |")
    lines += ["", "Extrapolation is linear in layers from the measured run (it charges the embedding, lm_head and "
              "start-up to every layer, so it overestimates); the per-layer peak RSS is what the walker bounds."]
    RESULTS.write_text("\n".join(lines) + "\n")  # after every run, so an interrupted run keeps what it measured


if __name__ == "__main__":
    main()
