"""Issue 25's acceptance on a tiny model: in one `teeny run`, qat at 2 bits, group 32 keeps the original's
next-token distributions closer than rtn on the same grid, and its checkpoint loads packed in `teeny eval`."""

import json

from click.testing import CliRunner

from teeny_core.cli import cli

GRID = ["bits = 2", "group_size = 32"]


def test_qat_beats_rtn_at_2_bits_and_its_checkpoint_loads_packed(tiny_model, tmp_path):
    model = tiny_model("llama")
    root = tmp_path / "runs"
    (tmp_path / "exp.toml").write_text("\n".join([
        'name = "qat"', f'model = "{model}"', f'output_dir = "{root}"', 'device = "cpu"',
        "[calibration]", 'method = "code"', "samples = 8", "seq_len = 64",
        "[evaluators.fidelity]", "chunks = 4", "chunk_len = 64", "[profilers.system]", "benchmark = false",
        "[[variants]]", 'name = "rtn-w2"', 'method = "rtn"', 'scheme = "asym"', *GRID,
        "[[variants]]", 'name = "qat-w2"', 'method = "qat"', *GRID, "epochs = 8",
    ]) + "\n")
    r = CliRunner().invoke(cli, ["run", str(tmp_path / "exp.toml")])
    assert r.exit_code == 0, r.output
    by_name = {v["name"]: v for v in json.loads((root / "qat" / "results.json").read_text())["variants"]}
    kl = {n: by_name[n]["metrics"]["fidelity"]["kl_mean"] for n in ("rtn-w2", "qat-w2")}
    assert 0 < kl["qat-w2"] < 0.9 * kl["rtn-w2"], kl
    load = by_name["qat-w2"]["profile"]["load"]["runtime"]
    assert load["kernels"] == "packed" and load["float_layers"] == {}

    artifact = root / "qat" / "qat-w2" / "artifact"
    meta = json.loads((artifact / "teeny-artifact.json").read_text())
    assert meta["format"] == "hf-gptq"
    for block in meta["meta"]["block_losses"].values():  # every block was trained to a lower loss
        assert block["after"] < block["before"] and block["steps"] == 16
    r = CliRunner().invoke(cli, ["eval", str(artifact), "-b", "fidelity", "-o", "chunks=4", "-o", "chunk_len=64",
                                 "--reference", str(model), "--out", str(tmp_path / "eval")])
    assert r.exit_code == 0, r.output
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())["fidelity"]
    assert metrics["kl_mean"] == by_name["qat-w2"]["metrics"]["fidelity"]["kl_mean"]
