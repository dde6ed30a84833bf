"""Every bad file in docs/experiment-format.md's "Bad files and their error" table is one ``Error:`` line,
exit status 2, naming the file, and changes nothing on disk (the cases are read from the doc's table)."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from teeny_core.cli import cli

DOC = Path(__file__).resolve().parents[1] / "docs" / "experiment-format.md"


def doc_rows() -> list[tuple[str, str, str]]:
    section = DOC.read_text().split("### Bad files and their error", 1)[1].split("\n\n", 3)[2]
    return [tuple(c.strip() for c in line.strip("|").split("|")) for line in section.splitlines()
            if re.match(r"^\| [a-z0-9]+(-[a-z0-9]+)+ \|", line)]


def write_gguf(path: Path) -> Path:
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tensor("token_embd.weight", np.random.default_rng(0).random((300, 1000), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def experiment(tmp: Path, model: Path) -> Path:
    exp = tmp / "exp.toml"
    exp.write_text(f'name = "t"\nmodel = "{model}"\noutput_dir = "{tmp / "runs"}"\ndevice = "cpu"\n'
                   '[evaluators.fidelity]\nchunks = 2\nchunk_len = 32\n')
    return exp


def model_copy(tmp: Path, tiny_model) -> Path:
    return Path(shutil.copytree(tiny_model("llama"), tmp / "model"))


def halve(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def shard_in_two(model: Path) -> None:
    """Split ``model.safetensors`` into two shards with an index, as large checkpoints come."""
    from safetensors.torch import load_file, save_file

    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    names = sorted(tensors)
    weight_map = {}
    for i, part in enumerate((names[:len(names) // 2], names[len(names) // 2:])):
        shard = f"model-{i + 1:05d}-of-00002.safetensors"
        save_file({k: tensors[k] for k in part}, model / shard, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, shard))
    (model / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))


def artifact(tmp: Path, tiny_model) -> Path:
    out = tmp / "art"
    r = CliRunner().invoke(cli, ["quantize", str(tiny_model("llama")), "-m", "rtn", "-o", "group_size=64",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    return out


def results(tmp: Path, variants) -> Path:
    run = tmp / "run"
    run.mkdir()
    (run / "results.json").write_text(json.dumps({"experiment": "t", "variants": variants}))
    return run


def case(name: str, tmp: Path, tiny_model) -> list[str]:
    """Make the bad file of case ``name`` under ``tmp``; the teeny arguments that read it."""
    if name.startswith(("config-", "safetensors-", "index-", "tokenizer-")):
        model = model_copy(tmp, tiny_model)
        if name.startswith("index-"):
            shard_in_two(model)
        if name == "index-not-json":
            (model / "model.safetensors.index.json").write_text('{"weight_map": ')
        elif name == "index-shard-missing":
            (model / "model-00002-of-00002.safetensors").unlink()
            return ["run", str(experiment(tmp, model))]
        elif name == "tokenizer-not-json":
            (model / "tokenizer.json").write_text("garbage{")
        elif name == "tokenizer-a-directory":
            (model / "tokenizer.json").unlink()
            (model / "tokenizer.json").mkdir()
            return ["run", str(experiment(tmp, model))]
        elif name == "config-not-json":
            (model / "config.json").write_text("garbage")
        elif name == "config-vocab-size-huge":
            config = json.loads((model / "config.json").read_text())
            (model / "config.json").write_text(json.dumps({**config, "vocab_size": 10**12}))
            return ["run", str(experiment(tmp, model))]
        elif name == "tokenizer-model-a-number":
            (model / "tokenizer.json").write_text('{"model": 5}')
            return ["run", str(experiment(tmp, model))]
        elif name == "tokenizer-files-missing":
            for file in model.glob("tokenizer*"):
                file.unlink()
            for file in ("vocab.json", "merges.txt", "special_tokens_map.json"):
                (model / file).unlink(missing_ok=True)
            return ["run", str(experiment(tmp, model))]
        elif name == "config-unknown-model-type":
            (model / "config.json").write_text(json.dumps({"model_type": "nonsense"}))
        elif name == "safetensors-random-bytes":
            (model / "model.safetensors").write_bytes(os.urandom(5000))
        else:
            halve(model / "model.safetensors")
            return ["run", str(experiment(tmp, model))]
        return ["quantize", str(model), "-m", "rtn", "--out", str(tmp / "out")]
    if name == "toml-not-utf8":
        exp = experiment(tmp, model_copy(tmp, tiny_model))
        exp.write_bytes(exp.read_bytes().replace(b'name = "t"', b'name = "t\xe9"'))  # Latin-1, not UTF-8
        return ["run", str(exp)]
    if name == "gguf-truncated-200kb":
        path = write_gguf(tmp / "m.gguf")
        path.write_bytes(path.read_bytes()[:200_000])
        return ["quantize", str(path), "-m", "rtn", "--out", str(tmp / "out")]
    if name == "gguf-magic-then-random":
        (tmp / "m.gguf").write_bytes(b"GGUF" + os.urandom(300_000))
        return ["run", str(experiment(tmp, tmp / "m.gguf"))]
    if name.startswith("artifact-"):
        art = artifact(tmp, tiny_model)
        (art / ("config.json" if name == "artifact-config-garbage" else "teeny-artifact.json")).write_text("garbage")
        return ["eval", str(art), "--bench", "fidelity", "-o", "chunks=2", "--out", str(tmp / "ev")]
    if name == "results-variants-not-objects":
        return ["report", str(results(tmp, [1, "x", None]))]
    if name == "results-variant-without-metrics":
        return ["report", str(results(tmp, [{"name": "w4", "method": "rtn"}]))]
    raise AssertionError(f"no scenario for the doc's case {name!r}")


def test_the_doc_lists_the_bad_files():
    assert len(doc_rows()) >= 10


@pytest.mark.parametrize("name,command,expected", doc_rows())
def test_a_bad_file_is_one_error_line_and_changes_nothing(name, command, expected, tmp_path, tiny_model):
    args = case(name, tmp_path, tiny_model)
    assert args[0] == command.split()[1], f"the doc says {command!r} for {name}"
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.output
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before
    assert not (tmp_path / "runs").exists() and not (tmp_path / "out").exists()
