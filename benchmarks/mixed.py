"""Mixed precision under a size budget against uniform bit-widths on Qwen2.5-Coder-0.5B-Instruct (the demo model).

    nice python benchmarks/mixed.py [--work DIR] [--samples 4] [--seq-len 128] [--chunks 6] [--kl-windows 1]
                                    [--kl-pairs 16] [--sensitivity-method rtn]
    nice python benchmarks/mixed.py --rows gguf      # only the GGUF rows (the GPTQ ones stay cached)

The original is the demo's Q4_K_M GGUF as its bfloat16 float copy (what `teeny run` quantizes). Every row uses the
same calibration (the ``code`` calibrator, seed 0) and is scored on the same held-out windows (pydoc topics, the
fidelity evaluator's text): KL(float copy || variant) over the reference's top 256 tokens plus the rest, mean over
windows with its standard error; the float reference runs in float32 in transformers, GPTQ rows in transformers
(float32 compute), GGUF rows in llama.cpp. The sensitivity is measured once by ``teeny sensitivity``'s code path
(``--sensitivity-method``, symmetric as the GPTQ rows, bits 2,3,4,8, g128) and used by every mixed row; the
full-model KL of ``--kl-pairs`` random (linear, bits) pairs, on ``--kl-windows`` windows of 128 tokens that come
before the scored windows in the same text, gives the proxies' rank correlations (all 672 pairs would take hours
on this 2-core machine), and the plans minimise the local score that ranks it better
(``teeny_core.sensitivity.damage_score``; the Hessian proxy on this model). Finished rows are cached in
``--work/rows.json``; the table is written to benchmarks/results/mixed.md after each row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != HERE] + [str(HERE)]

from gemma import load_note, score, write_section  # noqa: E402

ROOT = HERE.parent
RESULTS = ROOT / "benchmarks" / "results" / "mixed.md"
SENS_LEN = 128


def gptq_rows(target_w3: float) -> list[tuple[str, dict]]:
    sens = {"allowed_bits": [2, 3, 4, 8], "group_size": 128}
    return [
        ("gptq w3 g128", {"bits": 3, "group_size": 128}),
        (f"gptq mixed {target_w3:.3f} (w3's size)", {**sens, "target_bits": round(target_w3, 4)}),
        ("gptq w2 g64", {"bits": 2, "group_size": 64}),
        ("gptq mixed 2.5", {**sens, "target_bits": 2.5}),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=Path.home() / ".cache" / "teeny" / "bench-mixed")
    parser.add_argument("--samples", type=int, default=4, help="calibration windows")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per calibration window")
    parser.add_argument("--chunks", type=int, default=6, help="scored windows of 256 tokens")
    parser.add_argument("--kl-windows", type=int, default=1, help="windows of 128 tokens for the sensitivity's KL")
    parser.add_argument("--kl-pairs", type=int, default=16, help="(linear, bits) pairs whose full-model KL is measured")
    parser.add_argument("--sensitivity-method", default="rtn", choices=["rtn", "gptq"],
                        help="how each module is rounded while measuring (rtn: minutes; gptq: about 4 GPTQ runs)")
    parser.add_argument("--rows", nargs="*", default=["gptq", "gguf"], choices=["gptq", "gguf"],
                        help="which rows to compute (none: only render the cached ones)")
    parser.add_argument("--merge", type=Path, nargs="*", default=[],
                        help="rows.json files of other --work directories to add to the table")
    args = parser.parse_args()

    from teeny_core.builtin.fidelity import FidelityOptions, reference_stats, token_chunks
    from teeny_core.demo import qwen_model
    from teeny_core.modeling import quiet_libraries, resolve_source
    from teeny_core.plugins import Plugins
    from teeny_core.sensitivity import average_bits, heatmap, measure
    from teeny_core.store import write_json
    from teeny_core import Artifact, ModelSource
    from teeny_core.walker import layer_matrices, safetensors_dir

    quiet_libraries()
    args.work.mkdir(parents=True, exist_ok=True)
    plugins = Plugins.load()
    copy = safetensors_dir(resolve_source(qwen_model(), dtype="bfloat16"))
    source = ModelSource(str(copy))
    tokenizer = source.load_tokenizer()
    code = plugins.get("calibrator", "code")
    calibration = code().samples(tokenizer, code.Options.from_mapping({"samples": args.samples,
                                                                       "seq_len": args.seq_len}), seed=0)
    # sensitivity windows first, then the scored ones: one text, no token shared
    sens_text = token_chunks(tokenizer, FidelityOptions.from_mapping({"chunks": args.kl_windows,
                                                                      "chunk_len": SENS_LEN}))
    skip = args.kl_windows * SENS_LEN
    all_chunks = token_chunks(tokenizer, FidelityOptions.from_mapping(
        {"chunks": args.chunks + (skip + 255) // 256, "chunk_len": 256}))
    chunks = all_chunks[-args.chunks:]
    cache = args.work / "rows.json"
    rows: dict[str, dict] = json.loads(cache.read_text()) if cache.exists() else {}
    for other in args.merge:
        rows.update(json.loads(other.read_text()))
    refs_file = args.work / "refs.pt"
    import torch

    if refs_file.exists():
        refs = torch.load(refs_file)
    else:
        runtime = plugins.get("runtime", "transformers")
        reference = runtime().load(Artifact(format="hf", path=copy),
                                   runtime.Options.from_mapping({"device": "cpu", "dtype": "float32"}))
        refs = [reference_stats(reference.logprobs([ids])[0], ids, 256) for ids in chunks]
        reference.close()
        torch.save(refs, refs_file)

    sens_file = args.work / f"sensitivity-{args.sensitivity_method}.json"
    if not sens_file.exists():
        started = time.perf_counter()
        result = measure(source, calibration, method=args.sensitivity_method, bits_list=[2, 3, 4, 8], group_size=128,
                         windows=sens_text, kl=True, sym=True, kl_sample=args.kl_pairs)
        result["wall_seconds"] = round(time.perf_counter() - started, 1)
        write_json(sens_file, result)
        heatmap(result, sens_file.with_suffix(".png"))
        print(f"sensitivity: {result['wall_seconds']} s", file=sys.stderr, flush=True)
    sens = json.loads(sens_file.read_text())

    linears, _ = layer_matrices(copy)
    target_w3 = average_bits(linears, dict.fromkeys(linears, 3), 128)

    def save(label: str, row: dict) -> None:
        rows[label] = row
        cache.write_text(json.dumps(rows, indent=1))
        write_section(RESULTS, "table", render(rows, sens, args))
        print(f"done: {label}: {row}", file=sys.stderr, flush=True)

    for label, row in rows.items():  # rows of an earlier version counted the tokenizer and sensitivity.json too
        if row["family"] == "gptq" and artifact_dir(args.work, label).is_dir():
            row["bytes"] = weight_bytes(artifact_dir(args.work, label))

    if "gptq" in args.rows:
        gptq = plugins.get("quantizer", "gptq")
        for label, options in gptq_rows(target_w3):
            if label in rows:
                continue
            if "target_bits" in options:
                options = {**options, "sensitivity": str(sens_file)}
            out = artifact_dir(args.work, label)
            started = time.perf_counter()
            made = gptq().quantize(source, calibration, gptq.Options.from_mapping(options), out)
            seconds = time.perf_counter() - started
            from teeny_core.testing import checkpoint_bits_per_weight

            achieved, bits_of = checkpoint_bits_per_weight(out)
            counts = {str(b): list(bits_of.values()).count(b) for b in sorted(set(bits_of.values()))}
            save(label, {"family": "gptq", "bytes": weight_bytes(out), "achieved_bits": achieved,
                         "modules_per_bits": counts, "seconds": round(seconds, 1),
                         **score(out, "hf-gptq", chunks, refs)})

    if "gguf" in args.rows:
        from teeny_core.arch import spec_for
        from teeny_gguf.mixed import layer_linear_bits
        from teeny_gguf.reader import gguf_stats

        spec = spec_for("qwen2")
        names = [spec.gguf_name(f"{n}.weight") for n in linears]
        gguf = plugins.get("quantizer", "gguf")
        base = {"type": "Q3_K_M", "imatrix": "on"}
        runs = [("gguf Q3_K_M imatrix", base)]
        for label, options in runs + [("gguf mixed at Q3_K_M's size, imatrix", None)]:
            if label in rows:
                continue
            if options is None:  # the planned linears' bits per weight of the Q3_K_M file, its importance matrix
                first = artifact_dir(args.work, "gguf Q3_K_M imatrix")
                options = {**base, "target_bits": round(rows["gguf Q3_K_M imatrix"]["linear_bits"], 4),
                           "sensitivity": str(sens_file), "imatrix_file": str(first / "imatrix.gguf")}
            out = artifact_dir(args.work, label)
            out.mkdir(parents=True, exist_ok=True)
            started = time.perf_counter()
            made = gguf().quantize(source, calibration, gguf.Options.from_mapping(options), out)
            seconds = time.perf_counter() - started
            stats = gguf_stats(made.location)
            bits, types = layer_linear_bits(made.location, names)
            counts = {t: list(types.values()).count(t) for t in sorted(set(types.values()))}
            save(label, {"family": "gguf", "bytes": made.location.stat().st_size,
                         "achieved_bits": stats["bits_per_weight"], "linear_bits": bits, "linear_types": counts,
                         "seconds": round(seconds, 1),
                         **score(out, "gguf", chunks, refs, runtime_name="llama.cpp", file=made.file)})
    write_section(RESULTS, "table", render(rows, sens, args))
    print(render(rows, sens, args))


def artifact_dir(work: Path, label: str) -> Path:
    return work / "".join(c for c in label.replace(" ", "-") if c.isalnum() or c in "-._")


def weight_bytes(directory: Path) -> int:
    """The checkpoint's tensors on disk (its safetensors shards; not the tokenizer or the kept sensitivity)."""
    return sum(p.stat().st_size for p in directory.glob("*.safetensors"))


def render(rows: dict[str, dict], sens: dict, args) -> str:
    lines = [
        f"Command: `nice python benchmarks/mixed.py --samples {args.samples} --seq-len {args.seq_len} "
        f"--chunks {args.chunks} --kl-windows {args.kl_windows} --kl-pairs {args.kl_pairs} "
        f"--sensitivity-method {args.sensitivity_method}`; {load_note()}.",
        "",
        f"Sensitivity (method {sens['method']}, symmetric, bits 2/3/4/8, g128, {len(sens['modules'])} linears): "
        f"{sens.get('wall_seconds', sens['seconds'])} s wall; Spearman rank correlation with the full-model KL "
        f"({sens.get('kl_pairs')} random (linear, bits) pairs, {args.kl_windows} x {SENS_LEN} tokens): Hessian proxy {sens.get('spearman_proxy_kl', float('nan')):.3f}, "
        f"block output error {sens.get('spearman_block_kl', float('nan')):.3f}.",
        "",
        "| variant | artifact MiB | bits/weight (quantized linears) | modules per bits | KL ± s.e. | top-1 | PPL | "
        "quantize s |",
        "|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for label, r in rows.items():
        per = ", ".join(f"w{b}: {n}" for b, n in r.get("modules_per_bits", {}).items()) or \
            ", ".join(f"{t}: {n}" for t, n in r.get("linear_types", {}).items())
        bits = r["linear_bits"] if r["family"] == "gguf" else r["achieved_bits"]
        lines.append(f"| {label} | {r['bytes'] / 2**20:.1f} | {bits:.3f} | {per} | {r['kl']:.4f} ± "
                     f"{r['kl_se']:.4f} | {100 * r['top1']:.1f}% | {r['ppl']:.3f} | {r['seconds']:.0f} |")
    lines.append("")
    for mixed, uniform in (("gptq mixed", "gptq w3 g128"), ("gguf mixed", "gguf Q3_K_M imatrix")):
        m = next((r for k, r in rows.items() if k.startswith(mixed) and "2.5" not in k and "before" not in k),
                 None)
        if m and uniform in rows:
            u = rows[uniform]
            lines.append(f"- {mixed} / {uniform}: KL ratio {m['kl'] / u['kl']:.3f}, size ratio "
                         f"{m['bytes'] / u['bytes']:.4f}")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
