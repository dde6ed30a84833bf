"""Real scale: a Qwen2.5-14B-shaped random-weight model streamed through the layer walker.

    python benchmarks/scale.py [--layers 48] [--methods rtn gguf gptq awq] [--calibrated-layers 2 4 8] [--work DIR]

Writes the model (48 layers, hidden 5120, intermediate 13824, 40 heads / 8 KV heads, vocab 152064, bf16,
about 29.5 GB at 48 layers) to ``--work``, then quantizes it, each method in its own process so its peak RSS
is its own: RTN w4 g128 and GGUF Q4_K_M on all ``--layers`` layers, GPTQ w4 g128 and AWQ w4 g128 on the
first 2, 4, 8 layers (views of the same shards). Each row gives the walker's median time per layer and the
process's peak RSS; the full-model time of a shorter run is extrapolated from its per-layer time plus what
it spent outside the layers, and the table says so. The RTN and GGUF artifacts are then loaded in a fresh
process each (RTN's hf-gptq checkpoint in the core's transformers runtime, packed, GGUF in llama.cpp) and
generate a few tokens. Results go to benchmarks/results/scale.md (its generated table, from every row kept in
scale.json: a run replaces the rows it measures). The model files are deleted at the end
unless ``--keep``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from gemma import load_note, write_section

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "scale.md"
MEASURED = ROOT / "benchmarks" / "results" / "scale.json"
FULL_LAYERS = 48
SHAPE = dict(hidden_size=5120, intermediate_size=13824, num_attention_heads=40, num_key_value_heads=8,
             vocab_size=152064, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
             tie_word_embeddings=False)
GiB = 2**30


def write_model(out: Path, layers: int, shape: dict | None = None) -> float:
    """Write the random bf16 model (``shape``, default :data:`SHAPE`) with the walker's shard writer, one tensor
    at a time; returns GB written."""
    import torch
    import transformers

    from teeny_core.testing import build_tokenizer
    from teeny_core.walker import ShardWriter

    shape = shape or SHAPE
    tokenizer = build_tokenizer()
    config = transformers.Qwen2Config(**shape, num_hidden_layers=layers, bos_token_id=tokenizer.bos_token_id,
                                      eos_token_id=tokenizer.eos_token_id, dtype="bfloat16")
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    gen = torch.Generator().manual_seed(0)
    h, i, vocab = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]

    def rand(*shape, std=0.02):
        t = torch.empty(shape, dtype=torch.bfloat16)
        rows = max(1, 2**24 // (t.numel() // shape[0] or 1))
        for start in range(0, shape[0], rows):  # float32 scratch of at most 64 MiB
            t[start:start + rows] = torch.randn((min(rows, shape[0] - start), *shape[1:]), generator=gen) * std
        return t

    writer = ShardWriter(out)
    writer.add("model.embed_tokens.weight", rand(vocab, h))
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
    writer.add("lm_head.weight", rand(vocab, h))
    writer.close()
    return writer.total / 1e9


def layer_view(model: Path, out: Path, layers: int) -> Path:
    """A model directory holding only the first ``layers`` layers: a config and an index over the same shards."""
    out.mkdir(parents=True, exist_ok=True)
    config = json.loads((model / "config.json").read_text())
    config["num_hidden_layers"] = layers
    if "layer_types" in config:  # one entry per layer (full or sliding attention)
        config["layer_types"] = config["layer_types"][:layers]
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
import json, sys, time
import torch
import teeny_core.walker as walker
from teeny_core.modeling import ModelSource, peak_rss_bytes
from teeny_core.plugins import Plugins
from teeny_core.types import CalibrationSet
method, path, out, options = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
samples, tokens = json.loads(sys.argv[5]) if len(sys.argv) > 5 else (4, 256)  # calibration shape
cls = Plugins.load().get("quantizer", method)
quantizer_options = cls.Options.from_mapping(options)
cal = None
if cls.needs_calibration(quantizer_options):
    g = torch.Generator().manual_seed(0)
    cal = CalibrationSet("random", torch.randint(3, 500, (samples, tokens), generator=g).tolist())
facts = {}
walk = walker.walk
walker.walk = lambda *a, **k: facts.setdefault("walk", walk(*a, **k))  # keep the walker's per-layer times
start = time.perf_counter()
artifact = cls().quantize(ModelSource(path), cal, quantizer_options, __import__("pathlib").Path(out))
seconds = time.perf_counter() - start
layer_seconds = facts["walk"]["layer_seconds"] if "walk" in facts else []
print(json.dumps({"seconds": seconds, "peak": peak_rss_bytes(),
                  "layer_seconds": layer_seconds, "format": artifact.format, "file": artifact.file}))
"""

LOAD = r"""
import json, sys, time
from pathlib import Path
from teeny_core.modeling import Artifact, peak_rss_bytes
from teeny_core.plugins import Plugins
runtime_name, path, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
runtime = Plugins.load().get("runtime", runtime_name)
start = time.perf_counter()
model = runtime().load(Artifact.open(path), runtime.Options.from_mapping(options))
load_s = time.perf_counter() - start
start = time.perf_counter()
gen = model.generate(["def add(a, b):"], max_new_tokens=4)[0]
print(json.dumps({"load_s": load_s, "generate_s": time.perf_counter() - start, "tokens": gen.tokens,
                  "weight_bytes": model.weight_bytes() if hasattr(model, "weight_bytes") else None,
                  "peak": peak_rss_bytes()}))
"""


def child(script: str, *argv: str, timeout: float | None = None) -> dict:
    try:
        proc = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True,
                              env={**os.environ, "TEENY_NO_BAR": "1"}, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"{argv[0]} did not finish in {timeout:.0f} s") from None
    if proc.returncode:
        raise RuntimeError(f"{argv[0]} failed: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(method: str, model: Path, out: Path, options: dict, load: tuple[str, dict] | None = None) -> dict:
    """Quantize in a child process; with ``load=(runtime, options)`` load the artifact in another and generate."""
    out.mkdir(parents=True, exist_ok=True)
    result = child(CHILD, method, str(model), str(out), json.dumps(options))
    if load:
        try:
            result["load"] = child(LOAD, load[0], str(out), json.dumps(load[1]))
        except RuntimeError as exc:
            result["load"] = {"error": str(exc)}
        result["load"]["runtime"] = load[0]
    shutil.rmtree(out)
    return result


def attempt(method: str, model: Path, out: Path, options: dict, load: tuple[str, dict] | None = None) -> dict:
    """:func:`run`, with a failure recorded as the row's result instead of ending the benchmark."""
    try:
        result = run(method, model, out, options, load)
    except RuntimeError as exc:
        shutil.rmtree(out, ignore_errors=True)
        result = {"error": str(exc)}
    return {**result, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}


FULL = (  # method, options, where the artifact is loaded back
    ("rtn", {"bits": 4, "group_size": 128, "scheme": "asym"}, ("transformers", {"device": "cpu", "dtype": "bfloat16"})),
    ("gguf", {"type": "Q4_K_M", "imatrix": "off"}, ("llama.cpp", {})),
)
CALIBRATED = (
    ("gptq", {"bits": 4, "group_size": 128, "device": "cpu"}),
    ("awq", {"bits": 4, "group_size": 128, "device": "cpu"}),
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=FULL_LAYERS)
    ap.add_argument("--methods", nargs="+", default=["rtn", "gguf", "gptq", "awq"],
                    choices=["rtn", "gguf", "gptq", "awq"])
    ap.add_argument("--gguf-layers", type=int,
                    help="layers GGUF runs on (default: --layers); its conversion writes an F16 copy of the model "
                         "beside it before llama.cpp quantizes, so it needs about twice the model's size free on disk")
    ap.add_argument("--calibrated-layers", type=int, nargs="+", default=[2, 4, 8],
                    help="layer counts GPTQ and AWQ run on")
    ap.add_argument("--work", type=Path, default=Path("/tmp/teeny-scale"))
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    calibrated = [m for m, _ in CALIBRATED if m in args.methods]
    layers = max(([args.layers] if "rtn" in args.methods else []) + ([args.gguf_layers or args.layers]
                 if "gguf" in args.methods else []) + (args.calibrated_layers if calibrated else []))
    model = args.work / f"qwen14b-shape-{layers}"
    rows = []
    try:
        if not (model / "model.safetensors.index.json").exists():
            t = time.perf_counter()
            gb = write_model(model, layers)
            print(f"wrote {gb:.1f} GB ({layers} layers) in {time.perf_counter() - t:.0f} s", flush=True)
        for method, options, load in FULL:
            if method in args.methods:
                n = args.gguf_layers if method == "gguf" and args.gguf_layers else args.layers
                view = layer_view(model, args.work / f"view-{n}", n)
                r = attempt(method, view, args.work / f"out-{method}", options, load)
                rows.append((method, n, r))
                print(method, n, r, flush=True)
                write_results(rows, args)
        for method, options in CALIBRATED:
            for n in args.calibrated_layers if method in args.methods else []:
                view = layer_view(model, args.work / f"view-{n}", n)
                r = attempt(method, view, args.work / f"out-{method}-{n}", options)
                rows.append((method, n, r))
                print(method, n, r, flush=True)
                write_results(rows, args)
    finally:
        if not args.keep:
            shutil.rmtree(args.work, ignore_errors=True)


def measured_rows(rows, args) -> list[dict]:
    """This run's rows merged into those kept in ``scale.json`` (one per method and layer count, the newest
    wins), each with the date, commit and command that measured it."""
    kept = json.loads(MEASURED.read_text()) if MEASURED.exists() else []
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or "?"
    command = (f"python benchmarks/scale.py --layers {args.layers}"
               f"{f' --gguf-layers {args.gguf_layers}' if args.gguf_layers else ''} --methods {' '.join(args.methods)}"
               f" --calibrated-layers {' '.join(map(str, args.calibrated_layers))}")
    for method, n, r in rows:
        date = r["date"]  # when it finished
        if "error" not in r:
            if r["layer_seconds"]:  # the walker's clock: the rest is start-up and the tensors outside the layers
                per_layer, outside = statistics.median(r["layer_seconds"]), r["seconds"] - sum(r["layer_seconds"])
            else:  # not walked (GGUF's conversion and llama.cpp): the mean, which charges the rest to every layer
                per_layer, outside = r["seconds"] / n, None
            r = {"seconds": r["seconds"], "per_layer": per_layer, "outside": outside, "peak": r["peak"],
                 **({"load": r["load"]} if "load" in r else {})}
        else:
            r = {"error": r["error"]}
        entry = {"method": method, "layers": n, "result": r, "date": date, "commit": commit, "command": command,
                 "load_note": load_note()}
        kept = [e for e in kept if (e["method"], e["layers"]) != (method, n)] + [entry]
    order = ["rtn", "gguf", "gptq", "awq"]
    return sorted(kept, key=lambda e: (order.index(e["method"]), e["layers"]))


def write_results(rows, args) -> None:
    """Keep the measured rows in scale.json and rewrite the generated table of scale.md from all of them."""
    entries = measured_rows(rows, args)
    MEASURED.write_text(json.dumps(entries, indent=1) + "\n")
    lines = [
        f"Random bf16 weights of Qwen2.5-14B's shape; {platform.machine()}, {os.cpu_count()} cores, torch CPU. "
        "GPTQ and AWQ calibrate on 4 x 256 random token ids. Each run is its own process; each row says when, "
        "at which commit and by which command it was measured (`benchmarks/results/scale.json` keeps them).",
        "",
        "| method | layers run | wall s | s / layer (median; mean where not walked) | outside the layers s | "
        "peak RSS GiB | full 48-layer wall s | measured |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e in entries:
        method, n, r = e["method"], e["layers"], e["result"]
        when = f"{e['date']}, {e['commit']}"
        if "error" in r:
            lines.append(f"| {method} | {n} | failed: {r['error'][:300]} |  |  |  |  | {when} |")
            continue
        outside = "-" if r["outside"] is None else f"{r['outside']:.0f}"
        estimate = r["per_layer"] * FULL_LAYERS + (r["outside"] or 0)
        full = f"{r['seconds']:.0f}" if n == FULL_LAYERS else f"{estimate:.0f} (extrapolated)"
        lines.append(f"| {method} | {n} | {r['seconds']:.0f} | {r['per_layer']:.1f} | {outside} | "
                     f"{r['peak'] / GiB:.2f} | {full} | {when} |")
    loads = [e for e in entries if "load" in e["result"]]
    if loads:
        lines += ["", "Loaded back, each in a fresh process, and 4 tokens generated greedily:", "",
                  "| artifact | layers | runtime | load s | generate s | weights GiB | peak RSS GiB | measured |",
                  "|---|---:|---|---:|---:|---:|---:|---|"]
        for e in loads:
            ld, when = e["result"]["load"], f"{e['date']}, {e['commit']}"
            if "error" in ld:
                lines.append(f"| {e['method']} | {e['layers']} | {ld['runtime']} | failed: {ld['error'][:300]} "
                             f"|  |  |  | {when} |")
                continue
            weights = f"{ld['weight_bytes'] / GiB:.2f}" if ld.get("weight_bytes") else "-"
            lines.append(f"| {e['method']} | {e['layers']} | {ld['runtime']} | {ld['load_s']:.0f} | "
                         f"{ld['generate_s']:.1f} | {weights} | {ld['peak'] / GiB:.2f} | {when} |")
    lines += ["", "Commands, with the machine's load when each row was written:", ""]
    for command, note in dict.fromkeys((e["command"], e["load_note"]) for e in entries):
        lines.append(f"- `{command}`: {note}")
    write_section(RESULTS, "table", "\n".join(lines) + "\n")  # after every run: an interrupted run keeps its rows


if __name__ == "__main__":
    main()
