"""The 14B-shape GPU benchmark: packed w4 against bf16 decode, weight bytes, GPTQ/AWQ time, energy per token.

    python benchmarks/gpu_bench.py [--layers 4] [--quant-layers 2] [--calibration 128x2048] [--out benchmarks/results]
    python benchmarks/gpu_bench.py --dry-run --out /tmp/x    # the whole flow on CPU with a tiny shape

Decode: a Qwen2.5-14B-shaped model (scale.py's SHAPE) with ``--layers`` layers is built with random bf16 weights
directly in device memory (nothing on disk), and greedy generation at batch 1 through transformers' ``generate``
(what the core's transformers runtime calls) is timed with all layers and with half of them; the time per token
is extrapolated linearly to the 48 layers of the real model. The same model is then made w4 g128 (RTN codes of
its own weights, every decoder linear packed by :func:`teeny_core.packed.pack_linears` for the device's int4
kernel, lm_head kept bf16 as checkpoints do) and timed the same way. Weight bytes are counted as held
(:func:`teeny_core.packed.tensor_bytes`) and extrapolated exactly (outside the layers + 48 x one layer).
Energy: the device's energy counter (the system profiler's reader: NVML, RAPL) over the w4 decode gives its mean
power; joules per token at 48 layers is that power over the extrapolated decode rate (decode is memory-bound, so
the power changes little with depth); None with the reason where no counter is readable.
GPTQ and AWQ: the model (``--quant-layers`` layers) is written to ``--work`` with scale.py's writer (the quantizers
read a checkpoint, so this part needs the disk) and quantized in a child process each with ``--calibration``
random tokens on the device; the 48-layer time is the median time per layer x 48 plus the time spent outside the
layers, as scale.py extrapolates.

Writes ``gpu.json`` (keys: gpu, decode_tok_s_bf16, decode_tok_s_w4, weight_bytes_bf16, weight_bytes_w4,
gptq_seconds_14b_full, awq_seconds_14b_full, joules_per_token_w4, plus what was measured) and ``gpu.md`` in
``--out``. A dry run checks the flow and the writers, not the figures.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import statistics
import sys
import time
from pathlib import Path

import scale
from gemma import load_note

TINY = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2, vocab_size=1024,
            max_position_embeddings=4096, rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False)
KEYS = ("gpu", "decode_tok_s_bf16", "decode_tok_s_w4", "weight_bytes_bf16", "weight_bytes_w4",
        "gptq_seconds_14b_full", "awq_seconds_14b_full", "joules_per_token_w4")
PROMPT_TOKENS = 64


def build_model(shape: dict, layers: int, device: str):
    """A Qwen2 causal LM of ``shape`` with random bf16 weights, allocated on ``device`` directly."""
    import torch
    import transformers

    config = transformers.Qwen2Config(**shape, num_hidden_layers=layers, bos_token_id=1, eos_token_id=2,
                                      dtype="bfloat16")
    with torch.device(device):
        model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    return model.eval()


def keep_layers(model, n: int) -> None:
    """Cut the decoder to its first ``n`` layers in place."""
    model.model.layers = model.model.layers[:n]
    model.config.num_hidden_layers = n
    if getattr(model.config, "layer_types", None):
        model.config.layer_types = model.config.layer_types[:n]


def seconds_per_token(model, device: str, new_tokens: int, repeats: int) -> float:
    """Decode seconds per token at batch 1: best of ``repeats`` of (N new tokens - 1 new token) / (N - 1)."""
    import torch

    ids = torch.randint(3, model.config.vocab_size, (1, PROMPT_TOKENS), generator=torch.Generator().manual_seed(0))
    ids = ids.to(device)

    def timed(n: int) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.no_grad():  # min_new_tokens: random weights may pick EOS, the count must stay N
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                           do_sample=False, pad_token_id=0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    timed(2)  # warm-up
    return min((timed(new_tokens) - timed(1)) / (new_tokens - 1) for _ in range(repeats))


def at_full_depth(full: float, half: float, layers: int, half_layers: int) -> float:
    """A per-model figure measured at ``layers`` and ``half_layers`` layers, extrapolated linearly to 48."""
    per_layer = (full - half) / (layers - half_layers)
    return full + (scale.FULL_LAYERS - layers) * per_layer


def decode_rate(model, device: str, layers: int, new_tokens: int, repeats: int) -> tuple[float, dict]:
    """Tokens/s at 48 layers from timings at ``layers`` and half as many (the model is cut in place)."""
    half = max(1, layers // 2)
    full_s = seconds_per_token(model, device, new_tokens, repeats)
    keep_layers(model, half)
    half_s = seconds_per_token(model, device, new_tokens, repeats)
    s48 = at_full_depth(full_s, half_s, layers, half)
    return 1 / s48, {f"s_per_token_{layers}_layers": full_s, f"s_per_token_{half}_layers": half_s}


def weight_bytes_at_full_depth(model) -> int:
    """Bytes held by ``model``, with its decoder layers counted as 48 copies of its first layer."""
    from teeny_core.packed import tensor_bytes

    layers = model.model.layers
    return tensor_bytes(model) + (scale.FULL_LAYERS - len(layers)) * tensor_bytes(layers[0])


def quantize_w4(model, device: str) -> dict:
    """Replace every decoder linear with a packed w4 g128 (asym RTN) linear on ``device``; returns the facts."""
    import torch

    from teeny_core.modeling import linear_layers
    from teeny_core.packed import pack_linears
    from teeny_core.quant import QuantizedLinear, quantize_weight

    def linears():
        for name, module in list(linear_layers(model).items()):
            if name.startswith("lm_head"):
                continue
            q, s, z = quantize_weight(module.weight.detach(), 4, "asym", "group", 128)
            cols = q.shape[1]
            yield name, QuantizedLinear(q=q.cpu(), scale=s.cpu(), zero=z.cpu(), g_idx=torch.arange(cols) // 128,
                                        bits=4, bias=None if module.bias is None else module.bias.detach().cpu())

    packed, fallback, reasons = pack_linears(model, linears(), "bfloat16", device)
    if fallback:
        raise RuntimeError(f"layers the int4 kernel could not hold: {reasons}")
    return {"packed_linears": len(packed)}


def energy_reader():
    """The system profiler's energy reader (NVML on GPUs, RAPL on CPUs)."""
    from teeny_core.builtin.system_profiler import _Energy

    return _Energy()


def decode_power(model, device: str, new_tokens: int) -> tuple[float | None, str]:
    """Mean watts over a timed w4 decode at batch 1, or ``(None, why)``."""
    energy = energy_reader()
    e0 = energy.read()
    t0 = time.perf_counter()
    seconds_per_token(model, device, new_tokens, repeats=3)
    seconds = time.perf_counter() - t0
    used = energy.since(e0)
    if used["energy_joules"] is None:
        return None, used["energy_source"]
    return used["energy_joules"] / seconds, used["energy_source"]


def quantizer_seconds(method: str, shape_layers: int, work: Path, device: str, calibration: tuple[int, int],
                      extra: dict, timeout: float) -> dict:
    """Quantize the written model with ``method`` in a child process; the 48-layer seconds as scale.py does."""
    model_dir = work / f"model-{shape_layers}"
    options = {"bits": 4, "group_size": 128, "device": device, **extra}
    try:
        r = scale.child(scale.CHILD, method, str(model_dir), str(work / f"out-{method}"), json.dumps(options),
                        json.dumps(list(calibration)), timeout=timeout)
    except RuntimeError as exc:
        return {"error": str(exc)}
    finally:
        shutil.rmtree(work / f"out-{method}", ignore_errors=True)
    per_layer = statistics.median(r["layer_seconds"])
    outside = r["seconds"] - sum(r["layer_seconds"])
    return {"seconds": r["seconds"], "layers": shape_layers, "per_layer": per_layer, "outside": outside,
            "peak_rss": r["peak"], "full": outside + scale.FULL_LAYERS * per_layer}


def log(what: str, start: float = time.perf_counter()) -> None:
    print(f"gpu_bench: {what} at {time.perf_counter() - start:.0f}s", flush=True)


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"cpu ({platform.processor() or platform.machine()})"


def run(args) -> dict:
    """Measure everything, writing the results after each stage (a stage cut short leaves the others)."""
    import torch
    import transformers

    from teeny_core.packed import tensor_bytes

    shape = TINY if args.tiny else scale.SHAPE
    device = args.device
    result: dict = {"gpu": device_name(device), "dry_run": args.dry_run, "device": device,
                    "torch": torch.__version__, "transformers": transformers.__version__,
                    "layers_measured": args.layers, "quant_layers": args.quant_layers,
                    "calibration": f"{args.calibration[0]} x {args.calibration[1]}",
                    "shape": {k: shape[k] for k in ("hidden_size", "intermediate_size", "num_attention_heads",
                                                    "num_key_value_heads", "vocab_size")},
                    "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                    "load_note": load_note(), **{k: None for k in KEYS[1:]}}
    decode = (args.new_tokens, args.repeats)
    t0 = time.perf_counter()
    model = build_model(shape, args.layers, device)
    log("built the bf16 model")
    result["build_seconds"] = time.perf_counter() - t0
    result["weight_bytes_bf16"] = weight_bytes_at_full_depth(model)
    result["layer_bytes_bf16"] = tensor_bytes(model.model.layers[0])
    result["decode_tok_s_bf16"], result["bf16_timings"] = decode_rate(model, device, args.layers, *decode)
    write_results(result, args.out)
    log("bf16 decode timed")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    model = build_model(shape, args.layers, device)
    t0 = time.perf_counter()
    result["w4"] = quantize_w4(model, device)
    result["w4"]["pack_seconds"] = time.perf_counter() - t0
    result["weight_bytes_w4"] = weight_bytes_at_full_depth(model)
    result["layer_bytes_w4"] = tensor_bytes(model.model.layers[0])
    result["weight_ratio_w4_vs_bf16"] = result["weight_bytes_w4"] / result["weight_bytes_bf16"]
    watts, source = decode_power(model, device, args.new_tokens)
    result["decode_tok_s_w4"], result["w4_timings"] = decode_rate(model, device, args.layers, *decode)
    result["energy_source"] = source
    result["decode_watts_w4"] = watts
    result["joules_per_token_w4"] = watts / result["decode_tok_s_w4"] if watts is not None else None
    result["speedup_w4_vs_bf16"] = result["decode_tok_s_w4"] / result["decode_tok_s_bf16"]
    write_results(result, args.out)
    log("w4 decode timed")
    del model
    if device.startswith("cuda"):
        torch.cuda.empty_cache()

    args.work.mkdir(parents=True, exist_ok=True)
    try:
        written = scale.write_model(args.work / f"model-{args.quant_layers}", args.quant_layers, shape)
        result["quant_model_gb_written"] = written
        for method in ("gptq", "awq"):
            extra = {"grid": 2} if method == "awq" and args.dry_run else {}  # the flow, not AWQ's full search
            r = quantizer_seconds(method, args.quant_layers, args.work, device, args.calibration, extra,
                                  args.quant_timeout)
            result[method] = r
            result[f"{method}_seconds_14b_full"] = r.get("full")
            write_results(result, args.out)
            log(f"{method} timed")
    finally:
        shutil.rmtree(args.work, ignore_errors=True)
    return result


def markdown(r: dict) -> str:
    """The results as a short Markdown page (figures at the 48-layer 14B shape, how they were measured)."""
    def num(x, fmt="{:.1f}"):
        return "-" if x is None else fmt.format(x)

    r = {"speedup_w4_vs_bf16": None, "weight_ratio_w4_vs_bf16": None, "energy_source": "not measured", **r}

    title = "GPU benchmark, 14B shape" + (" (DRY RUN on CPU, tiny shape: checks the flow, not the figures)"
                                          if r["dry_run"] else " (tiny shape)" if r["shape"]["hidden_size"] < 5120
                                          else "")
    rows = [
        ("decode tok/s at batch 1, bf16", num(r["decode_tok_s_bf16"])),
        ("decode tok/s at batch 1, w4 g128 packed", num(r["decode_tok_s_w4"])),
        ("w4 / bf16 decode speed (target >= 1.8)", num(r["speedup_w4_vs_bf16"], "{:.2f}x")),
        ("weights bf16", num(r["weight_bytes_bf16"] and r["weight_bytes_bf16"] / 1e9, "{:.2f} GB")),
        ("weights w4", num(r["weight_bytes_w4"] and r["weight_bytes_w4"] / 1e9, "{:.2f} GB")),
        ("w4 / bf16 weights (target <= 0.30)", num(r["weight_ratio_w4_vs_bf16"], "{:.3f}")),
        ("w4 / bf16, decoder layers only (embedding and lm_head stay bf16)",
         num(r.get("layer_bytes_w4") and r["layer_bytes_w4"] / r["layer_bytes_bf16"], "{:.3f}")),
        ("GPTQ w4 g128, 48 layers (target <= 360 s)", num(r["gptq_seconds_14b_full"], "{:.0f} s")),
        ("AWQ w4 g128, 48 layers (target <= 600 s)", num(r["awq_seconds_14b_full"], "{:.0f} s")),
        ("joules per token, w4", num(r["joules_per_token_w4"], "{:.3f} J")
         + ("" if r["joules_per_token_w4"] is not None else f" ({r['energy_source']})")),
    ]
    errors = [f"- {m}: {r[m]['error']}" for m in ("gptq", "awq") if "error" in r.get(m, {})]
    return "\n".join([
        f"# {title}", "",
        f"{r['gpu']}, torch {r['torch']}, transformers {r['transformers']}, {r['date']}; {r['load_note']}.", "",
        "| figure (48 layers) | value |", "|---|---|", *[f"| {a} | {b} |" for a, b in rows], "",
        f"Decode measured on {r['layers_measured']} and {max(1, r['layers_measured'] // 2)} layers of random bf16 "
        "weights built in device memory, extrapolated linearly to 48; weights counted as held, outside the layers "
        f"plus 48 x one layer. GPTQ/AWQ on {r['quant_layers']} written layers with {r['calibration']} random "
        "calibration tokens: median seconds per layer x 48 plus the time outside the layers. Joules per token: "
        "mean power over the w4 decode / the 48-layer decode rate. Raw timings in gpu.json.",
        *([""] + errors if errors else []), ""])


def write_results(r: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu.json").write_text(json.dumps(r, indent=2) + "\n")
    (out / "gpu.md").write_text(markdown(r))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="a tiny shape instead of the 14B one")
    ap.add_argument("--dry-run", action="store_true",
                    help="--device cpu --tiny, 2 layers (1 quantized), 2 x 32 calibration, 4 new tokens, "
                         "1 repeat, AWQ grid 2")
    ap.add_argument("--layers", type=int, default=4, help="decoder layers the decode is measured on")
    ap.add_argument("--quant-layers", type=int, default=2, help="layers GPTQ and AWQ are timed on")
    ap.add_argument("--calibration", default="128x2048", help="samples x tokens for GPTQ/AWQ")
    ap.add_argument("--new-tokens", type=int, default=32, help="tokens generated per timed decode")
    ap.add_argument("--repeats", type=int, default=3, help="timed decodes per depth (the fastest counts)")
    ap.add_argument("--quant-timeout", type=float, default=100, help="seconds each of GPTQ and AWQ may take")
    ap.add_argument("--work", type=Path, default=Path("/tmp/teeny-gpu-bench"))
    ap.add_argument("--out", type=Path, default=scale.ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)
    if args.dry_run:
        args.device, args.tiny, args.layers, args.quant_layers, args.calibration = "cpu", True, 2, 1, "2x32"
        args.new_tokens, args.repeats = 4, 1
    args.calibration = tuple(int(x) for x in args.calibration.lower().split("x"))
    if args.layers < 2 or args.new_tokens < 2:
        sys.exit("gpu_bench: --layers and --new-tokens must be at least 2 (the decode rate is a difference of "
                 "two depths and of two lengths)")
    result = run(args)
    write_results(result, args.out)
    print(json.dumps({k: result[k] for k in KEYS}, indent=2))


if __name__ == "__main__":
    main()
