"""The teeny CLI as a user runs it: light start-up, listings, quantize then eval, one-line errors."""

import json
import subprocess
import sys

from click.testing import CliRunner

from teeny_core.cli import cli


def test_help_and_plugin_listing_do_not_import_torch():
    code = ("import sys; from click.testing import CliRunner; from teeny_core.cli import cli, plugins;"
            "plugins().add_commands(cli);"
            "[CliRunner().invoke(cli, a, catch_exceptions=False) for a in (['--help'], ['plugins'], ['list'])];"
            "heavy = [m for m in ('torch', 'transformers', 'scipy', 'matplotlib', 'llama_cpp', 'gguf') if m in sys.modules];"
            "print(heavy); sys.exit(1 if heavy else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_list_shows_components_with_options():
    out = CliRunner().invoke(cli, ["list", "quantizer"])
    assert out.exit_code == 0
    assert "rtn" in out.output and "group_size (int, default 128)" in out.output


def test_plugins_json_lists_builtins():
    out = CliRunner().invoke(cli, ["plugins", "--json"])
    data = {p["name"]: p for p in json.loads(out.output)}
    assert data["rtn"]["components"] == ["quantizer:rtn"] and data["rtn"]["error"] is None


def test_quantize_then_eval_against_the_reference(tiny_model, tmp_path):
    model = str(tiny_model("llama"))
    out = tmp_path / "w4"
    r = CliRunner().invoke(cli, ["quantize", model, "--method", "rtn", "-o", "bits=4", "-o", "group_size=64",
                                 "-o", "scheme=sym", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert json.loads((out / "teeny-artifact.json").read_text())["meta"]["scheme"] == "sym"
    args = ["eval", str(out), "--bench", "fidelity", "-o", "chunks=2", "-o", "chunk_len=32", "--reference", model,
            "--out", str(tmp_path / "ev")]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())["fidelity"]
    assert metrics["chunks"] == 2 and 0 < metrics["kl_mean"] < 1 and 0 <= metrics["top1_mean"] <= 1
    again = CliRunner().invoke(cli, args)  # resumes: nothing redone, same numbers
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["fidelity"] == metrics, again.output
    assert len((tmp_path / "ev" / "samples.jsonl").read_text().splitlines()) == 2


def test_errors_are_one_line_with_exit_status_2(tiny_model, tmp_path):
    cases = [
        (["quantize", str(tiny_model("llama")), "--method", "nope", "--out", str(tmp_path / "x")],
         "Error: unknown quantizer 'nope'; installed quantizers:"),
        (["quantize", str(tiny_model("llama")), "-m", "rtn", "-o", "bits=9", "--out", str(tmp_path / "x")],
         "Error: rtn: option bits=9 is not valid; expected 2|3|4|5|6|7|8|16"),
        (["quantize", str(tmp_path / "missing"), "-m", "rtn", "--out", str(tmp_path / "x")],
         "not found; expected an HF model directory, a .gguf file or a hub id"),
        (["eval", str(tiny_model("llama")), "--bench", "fidelity", "-o", "chunks=0"],
         "Error: fidelity: option chunks=0 is out of range"),
        (["run", str(tmp_path / "none.toml")], "Error: experiment file"),
    ]
    for args, message in cases:
        r = CliRunner().invoke(cli, args)
        assert r.exit_code == 2, (args, r.output)
        assert message in r.output and len(r.output.strip().splitlines()) == 1, r.output


def test_quantizing_an_unsupported_architecture_is_one_line_naming_the_supported_ones(tiny_tokenizer, tmp_path):
    import transformers

    model = tmp_path / "gpt2"
    config = transformers.GPT2Config(vocab_size=len(tiny_tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(model)
    tiny_tokenizer.save_pretrained(model)
    r = CliRunner().invoke(cli, ["quantize", str(model), "-m", "rtn", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2, r.output
    assert r.output.strip() == ("Error: architecture 'gpt2' is not supported for layer-by-layer quantization; "
                                "supported: gemma3, gemma3_text, llama, mistral, phi3, qwen2, qwen2_moe"), r.output


def one_line_error(args, *fragments):
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, (args, r.output)
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), r.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_bad_values_are_one_line_before_any_work(tiny_model, tmp_path):
    model = str(tiny_model("llama"))
    one_line_error(["eval", model, "--bench", "fidelity", "--limit", "-1", "--out", str(tmp_path / "ev")],
                   "--limit", "-1 is not in the range x>=0")
    one_line_error(["quantize", model, "-m", "rtn", "--device", "tpu", "--out", str(tmp_path / "q")],
                   "device='tpu' is not valid; expected auto, cpu, cuda or cuda:N")
    one_line_error(["quantize", model, "-m", "rtn", "--dtype", "float8", "--out", str(tmp_path / "q")],
                   "--dtype", "'float8' is not one of")
    one_line_error(["quantize", model, "-m", "rtn", "--out", str(tmp_path / ("a" * 300))],
                   "is 300 characters; file systems allow 255 bytes")
    assert list(tmp_path.iterdir()) == []


def test_a_cuda_device_that_does_not_exist_is_one_line(tiny_model, tmp_path):
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = f"cuda:{count}"
    one_line_error(["quantize", str(tiny_model("llama")), "-m", "rtn", "--device", device,
                    "--out", str(tmp_path / "q")], f"device {device!r} asked for")


def test_read_only_targets_are_one_line_before_any_work(tiny_model, tmp_path, read_only):
    model = str(tiny_model("llama"))
    art = tmp_path / "art"
    made = CliRunner().invoke(cli, ["quantize", model, "-m", "rtn", "-o", "group_size=64", "--out", str(art)])
    assert made.exit_code == 0, made.output
    ro = tmp_path / "ro"
    ro.mkdir()
    read_only(ro)
    one_line_error(["quantize", model, "-m", "rtn", "--out", str(ro / "q")], "--out", f"{ro} is not writable")
    one_line_error(["eval", str(art), "--bench", "fidelity", "-o", "chunks=2", "--out", str(ro / "ev")],
                   "--out", f"{ro} is not writable")
    assert list(ro.iterdir()) == []


def test_eval_takes_the_run_lock_of_its_out(tiny_model, tmp_path):
    import os
    import time

    from teeny_core.store import RunLock

    model = str(tiny_model("llama"))
    args = ["eval", model, "--bench", "fidelity", "-o", "chunks=6", "-o", "chunk_len=32", "--out", str(tmp_path / "ev")]
    with RunLock(tmp_path / "ev"):
        one_line_error(args, f"pid {os.getpid()}", "is in use by another teeny run")
    assert not (tmp_path / "ev" / "samples.jsonl").exists()
    teeny = [sys.executable, "-m", "teeny_core.cli"]
    first = subprocess.Popen(teeny + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    second = subprocess.run(teeny + args, capture_output=True, text=True, timeout=600)
    first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode in (0, 2), second.stderr
    assert second.returncode == 0 or "is in use by another teeny run" in second.stderr
    lines = (tmp_path / "ev" / "samples.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["key"] for line in lines) == [f"chunk-{i}" for i in range(6)]
