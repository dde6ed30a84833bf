"""gguf -o target_bits=X: per-tensor ggml types from the sensitivity, through llama.cpp's tensor-type overrides.
Checked from the written file's header alone: every planned tensor holds the planned type, and the planned
linears average X bits per weight within 0.05 (bytes over elements, as stored)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from teeny_core.cli import cli

pytest.importorskip("llama_cpp")


def _quantize(source_dir, out_dir, calibration, **options):
    from teeny_core import ModelSource
    from teeny_gguf.quantizer import GGUFQuantizer

    out_dir.mkdir(parents=True, exist_ok=True)
    opts = GGUFQuantizer.Options.from_mapping(options, where="gguf")
    return GGUFQuantizer().quantize(ModelSource(str(source_dir)), calibration, opts, out_dir)


def _header_types(artifact):
    from teeny_core.formats.gguf_header import read_gguf_header

    return {t.name: t for t in read_gguf_header(artifact.location).tensors}


def _planned(artifact):
    from teeny_core.arch import spec_for

    spec = spec_for("qwen2")
    return {spec.gguf_name(f"{name}.weight"): t for name, t in artifact.meta["bits_plan"].items()}


@pytest.mark.parametrize("target", [3.5, 5.0])
def test_target_bits_writes_the_planned_type_per_tensor(gguf_tiny_hf, gguf_calibration, tmp_path, target):
    from teeny_gguf.runtime import LlamaCppRuntime

    art = _quantize(gguf_tiny_hf("qwen2"), tmp_path / "q", gguf_calibration, type="Q4_K_M",
                    target_bits=target, imatrix="on")
    planned = _planned(art)
    header = _header_types(art)
    assert len(planned) == 14 and len(set(planned.values())) >= 2
    assert {n: header[n].type_name for n in planned} == planned
    stored = 8 * sum(header[n].n_bytes for n in planned) / sum(header[n].n_elements for n in planned)
    assert abs(stored - target) <= 0.05 and art.meta["achieved_bits"] == pytest.approx(stored, abs=1e-3)
    assert json.loads((tmp_path / "q" / "sensitivity.json").read_text())["method"] == "rtn"
    assert header["token_embd.weight"].type_name not in ("F16", "F32")  # Q4_K_M's own choice outside the plan
    loaded = LlamaCppRuntime().load(art, LlamaCppRuntime.Options.from_mapping({"n_threads": 2}))
    try:
        lp = loaded.logprobs([[1, 5, 9, 14, 20]])
        assert lp.shape[-1] > 100 and bool((lp <= 0).all())
    finally:
        loaded.close()


def test_types_whose_blocks_do_not_fit_the_rows_are_not_chosen(tiny_model, gguf_calibration, tmp_path):
    """Hidden 128: no k-quant fits a row of 128 weights (only ffn_down's rows of 256 take one), so those tensors
    get 32-weight block types, written as planned (no silent fallback)."""
    art = _quantize(tiny_model("qwen2"), tmp_path / "q", gguf_calibration, type="Q4_K_M", target_bits=5.5)
    planned = _planned(art)
    header = _header_types(art)
    narrow = {n: t for n, t in planned.items() if header[n].shape[0] % 256}
    assert len(narrow) == 12 and set(narrow.values()) <= {"IQ4_NL", "Q5_0", "Q8_0"}
    assert len(set(narrow.values())) >= 2
    assert {n: header[n].type_name for n in planned} == planned


def test_damage_between_measured_widths_is_log_linear():
    from teeny_gguf.mixed import interpolated

    scores = {"4": 1e-2, "8": 1e-6}
    assert interpolated(scores, 4) == 1e-2
    assert interpolated(scores, 6) == pytest.approx(1e-4, rel=1e-9)
    assert interpolated(scores, 5) == pytest.approx(1e-3, rel=1e-9)


@pytest.mark.parametrize("case", ["unwritable", "unreachable", "no-fit", "other-model", "float"])
def test_bad_mixed_gguf_input_is_one_line_before_work(gguf_tiny_hf, tiny_model, tmp_path, case):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"model": "abc", "group_size": 32, "bits": [2, 3, 4, 8], "modules": {}}))
    model = tiny_model("qwen2") if case == "no-fit" else gguf_tiny_hf("qwen2")
    options, expected = {
        "unwritable": (["target_bits=4", "allowed_types=Q4_K,F16"], "allowed_types=['Q4_K', 'F16'] holds ['F16']"),
        "unreachable": (["target_bits=1.5"], "target_bits=1.5 cannot be reached"),
        "no-fit": (["target_bits=3", "allowed_types=Q2_K,Q3_K"], "no type of allowed_types=['Q2_K', 'Q3_K'] fits"),
        "other-model": (["target_bits=4", f"sensitivity={other}"], "was measured on model"),
        "float": (["target_bits=4", "type=F16"], "target_bits needs a quantized type"),
    }[case]
    args = ["quantize", str(model), "--method", "gguf", "-c", "samples=2", "-c", "seq_len=32",
            "--out", str(tmp_path / "out")]
    for option in options:
        args[4:4] = ["-o", option]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 2 and done.output.count("\n") == 1, done.output
    assert done.output.startswith("Error: ") and expected in done.output, done.output
    assert not (tmp_path / "out").exists()
