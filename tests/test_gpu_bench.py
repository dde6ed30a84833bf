"""benchmarks/gpu_bench.py's dry run: the whole GPU benchmark flow (model built in memory, bf16 and packed w4
decode timed at two depths, weights counted, GPTQ and AWQ run in child processes, energy read or said
unavailable) on CPU with a tiny shape, and the JSON/Markdown writers. The figures themselves are the GPU run's."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "gpu_bench.py"


def expected_weight_bytes(shape: dict, layers: int = 48) -> tuple[int, int]:
    """Bytes of a Qwen2 model of ``shape`` at ``layers`` layers, counted from the shapes: bf16 everywhere, and
    w4 g128 with 4-bit codes, a bf16 scale and offset per 128 columns and the q/k/v biases kept in bf16."""
    h, i, v = shape["hidden_size"], shape["intermediate_size"], shape["vocab_size"]
    kv = h // shape["num_attention_heads"] * shape["num_key_value_heads"]
    linears = [(h, h), (kv, h), (kv, h), (h, h), (i, h), (i, h), (h, i)]  # (out, in)
    biases, norms, outside = h + 2 * kv, 2 * h, 2 * (2 * v * h + h)
    bf16_layer = 2 * (sum(o * n for o, n in linears) + biases + norms)
    w4_layer = sum(o * n // 2 + (n // 128) * o * 2 * 2 for o, n in linears) + 2 * biases + 2 * norms
    return outside + layers * bf16_layer, outside + layers * w4_layer


def test_the_dry_run_writes_every_key_with_its_type(tmp_path):
    proc = subprocess.run([sys.executable, str(BENCH), "--dry-run", "--out", str(tmp_path / "out"),
                           "--work", str(tmp_path / "work")], capture_output=True, text=True, timeout=600,
                          cwd=BENCH.parent)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads((tmp_path / "out" / "gpu.json").read_text())
    assert result["dry_run"] is True and result["device"] == "cpu" and isinstance(result["gpu"], str)
    for key in ("decode_tok_s_bf16", "decode_tok_s_w4", "gptq_seconds_14b_full", "awq_seconds_14b_full"):
        assert isinstance(result[key], float), (key, result.get(key), result.get(key.split("_")[0]))
    assert result["gptq_seconds_14b_full"] > 0 and result["awq_seconds_14b_full"] > 0
    assert isinstance(result["weight_bytes_bf16"], int) and isinstance(result["weight_bytes_w4"], int)
    bf16, w4 = expected_weight_bytes(result["shape"])
    assert abs(result["weight_bytes_bf16"] - bf16) <= 1024  # the rotary embedding's float32 buffers
    assert abs(result["weight_bytes_w4"] - w4) <= 1024
    assert result["layer_bytes_w4"] / result["layer_bytes_bf16"] < 0.3  # 4.5 bits (w4 g128) against 16, biases f32
    assert result["w4"]["packed_linears"] == 2 * 7
    if result["joules_per_token_w4"] is None:
        assert result["energy_source"].startswith("unavailable: ")
    else:
        assert result["joules_per_token_w4"] > 0
    assert not (tmp_path / "work").exists()  # the written model is removed
    page = (tmp_path / "out" / "gpu.md").read_text()
    assert "DRY RUN" in page and "decode tok/s at batch 1, w4 g128 packed" in page
