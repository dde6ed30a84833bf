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
