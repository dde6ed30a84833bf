"""docs/writing-a-plugin.md works as written: its files are extracted, the package is installed with pip
(offline, into a temporary prefix), `teeny plugins` lists it, the doc's own tests pass, and `teeny run`
runs the doc's experiment on a tiny model with the plugin's quantizer."""

import json
import math
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "writing-a-plugin.md"
FILE_BLOCK = re.compile(r"^File `(?P<path>[^`]+)`:\n\n```[a-z]*\n(?P<body>.*?)^```$", re.M | re.S)
PLUGIN_FILES = ("teeny-prune/pyproject.toml", "teeny-prune/teeny_prune.py")


def doc_files() -> dict[str, str]:
    """Every block introduced by a line "File `path`:" in the doc, by path."""
    return {m["path"]: m["body"] for m in FILE_BLOCK.finditer(DOC.read_text())}


def teeny_env(site: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TEENY_")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(site), env.get("PYTHONPATH", "")) if p)
    env["COLUMNS"] = "200"
    env.update(extra)
    return env


def teeny(site: Path, *args: str, cwd: Path, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "teeny_core.cli", *args], cwd=cwd, env=teeny_env(site, **extra),
                          capture_output=True, text=True, timeout=600)


def to_toml(data: dict) -> str:
    """Enough TOML for an experiment: top-level scalars, tables of tables and the [[variants]] array."""
    def value(v):
        return json.dumps(v)  # strings, numbers, booleans and lists of them are the same in JSON and TOML

    lines = [f"{k} = {value(v)}" for k, v in data.items() if not isinstance(v, (dict, list)) or
             (isinstance(v, list) and not any(isinstance(x, dict) for x in v))]
    for key, tables in data.items():
        if isinstance(tables, dict):
            for name, opts in tables.items():
                lines.append(f"[{key}.{json.dumps(name)}]")
                lines += [f"{k} = {value(v)}" for k, v in opts.items()]
    for variant in data.get("variants", []):
        lines.append("[[variants]]")
        lines += [f"{k} = {value(v)}" for k, v in variant.items()]
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(work dir holding the doc's files, site dir where pip installed teeny-prune)."""
    pytest.importorskip("setuptools", reason="building the doc's package offline needs setuptools installed")
    work = tmp_path_factory.mktemp("doc-plugin")
    for rel, body in doc_files().items():
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text(body)
    site = work / "site"
    pip = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index",
                          "--disable-pip-version-check", "-q", "--target", str(site), str(work / "teeny-prune")],
                         capture_output=True, text=True, timeout=300)
    assert pip.returncode == 0, pip.stderr
    return work, site


def test_doc_has_the_plugin_its_tests_and_an_experiment():
    files = doc_files()
    assert set(files) == {*PLUGIN_FILES, "teeny-prune/tests/test_prune.py", "prune.toml"}


def test_the_plugin_is_under_40_lines_of_code():
    files = doc_files()
    code = [line for rel in PLUGIN_FILES for line in files[rel].splitlines() if line.strip()]
    assert len(code) < 40
    assert re.search(rf"\b{len(code)} lines of code\b", DOC.read_text()), "the doc states a stale line count"


def test_the_plugin_module_does_not_import_torch_at_import_time(installed):
    _, site = installed
    probe = "import sys, teeny_prune; assert 'torch' not in sys.modules and 'transformers' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", probe], env=teeny_env(site), capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_teeny_plugins_and_list_show_it(installed):
    work, site = installed
    out = teeny(site, "plugins", "--json", cwd=work)
    assert out.returncode == 0, out.stderr
    [info] = [i for i in json.loads(out.stdout) if i["name"] == "prune"]
    assert info == {"name": "prune", "distribution": "teeny-prune", "version": "0.1.0", "builtin": False,
                    "hooks": ["teeny_register_quantizers"], "components": ["quantizer:prune"], "error": None,
                    "unavailable": {}}
    listed = teeny(site, "list", "quantizer", cwd=work, TEENY_LOAD_PLUGINS="prune")
    assert listed.returncode == 0, listed.stderr
    assert "prune  Unstructured magnitude pruning" in listed.stdout
    assert "sparsity (float, default 0.5): fraction of each row's weights set to zero" in listed.stdout


def test_the_docs_tests_pass(installed):
    work, site = installed
    out = subprocess.run([sys.executable, "-m", "pytest", "teeny-prune/tests", "-q", "-p", "no:cacheprovider"],
                         cwd=work, env=teeny_env(site, TEENY_LOAD_PLUGINS="prune", TEENY_STRICT_PLUGINS="1"),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert re.search(r"\b4 passed\b", out.stdout), out.stdout[-1000:]  # 2 contract tests + the doc's 2


@pytest.fixture(scope="module")
def run(installed, tiny_model):
    """`teeny run` on the doc's experiment, pointed at a tiny model and shrunk to a few short windows."""
    work, site = installed
    exp = tomllib.loads(doc_files()["prune.toml"])
    out_dir = work / "runs"
    exp = {"name": exp["name"], "model": str(tiny_model("llama")), "output_dir": str(out_dir), "device": "cpu",
           "limit": 3, **{k: v for k, v in exp.items() if k not in ("name", "model")}}
    exp["evaluators"]["fidelity"]["chunk_len"] = 64
    exp["profilers"] = {"system": {"benchmark": False}}
    (work / "prune-tiny.toml").write_text(to_toml(exp))
    out = teeny(site, "run", "prune-tiny.toml", cwd=work, TEENY_LOAD_PLUGINS="prune")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    root = out_dir / exp["name"]
    return out.stdout, root, json.loads((root / "results.json").read_text())


def test_teeny_run_prints_every_variant(run):
    stdout, _, _ = run
    for name in ("original", "prune-30", "prune-50", "rtn-w4"):
        assert name in stdout


def test_teeny_run_measures_the_pruned_variants(run):
    _, _, results = run
    by_name = {v["name"]: v for v in results["variants"]}
    assert list(by_name) == ["original", "prune-30", "prune-50", "rtn-w4"]
    kl = {}
    for name in ("prune-30", "prune-50"):
        v = by_name[name]
        assert v["method"] == "prune"
        fid = v["metrics"]["fidelity"]
        assert fid["chunks"] == 3
        for key in ("perplexity", "kl_mean", "top1_mean", "perplexity_se", "kl_se"):
            assert math.isfinite(fid[key]), (name, key, fid[key])
        assert fid["kl_mean"] > 0 and 0 < fid["top1_mean"] <= 1 and fid["perplexity"] > 1
        kl[name] = fid["kl_mean"]
    assert kl["prune-50"] > kl["prune-30"]  # prune-50 zeroes a superset of the weights prune-30 zeroes


def test_teeny_run_stored_the_pruned_weights(run, tiny_model):
    from safetensors.torch import load_file

    _, root, _ = run
    meta = json.loads((root / "prune-50" / "artifact" / "teeny-artifact.json").read_text())
    assert meta["format"] == "hf" and meta["meta"] == {"method": "prune", "sparsity": 0.5}
    w = load_file(root / "prune-50" / "artifact" / "model.safetensors")["model.layers.0.mlp.up_proj.weight"]
    assert float((w == 0).double().mean()) == 0.5


def test_formats_doc_names_every_file_and_field_the_run_wrote(run):
    """docs/formats.md stays true: each file the run store wrote, and each field of its JSON files, is named."""
    _, root, results = run
    doc = (ROOT / "docs" / "formats.md").read_text()
    variants = {v["name"] for v in results["variants"]}
    names = set()
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if parts[0] == "_cache" and len(parts) > 2 or parts[0] == "plots" and len(parts) > 1:
            continue  # content-hash and plot names
        if len(parts) > 2 and parts[1] == "artifact" and parts[2] != "teeny-artifact.json":
            continue  # the checkpoint's own files belong to its format
        names.update(p for p in parts if p not in variants)
    undocumented = sorted(n for n in names if n not in doc)
    assert not undocumented, f"docs/formats.md does not mention {undocumented}"

    variant_dir = root / "prune-50"
    fields = set(results) | set(results["variants"][1]) | set(results["manifest"])
    fields |= set(results["manifest"]["hardware"])
    fields |= set(json.loads((variant_dir / "variant.json").read_text()))
    fields |= set(json.loads((variant_dir / "done.json").read_text()))
    fields |= set(json.loads((variant_dir / "metrics.json").read_text())["fidelity"])
    for line in (variant_dir / "samples.jsonl").read_text().splitlines():
        fields |= set(json.loads(line))
    profile = json.loads((variant_dir / "profile.json").read_text())
    for stage in ("quantize", "load", "evaluate:fidelity"):
        fields |= set(profile[stage])
    fields |= set(profile["benchmark"]) | {"benchmark", "peak_rss_bytes"}
    undocumented = sorted(f for f in fields if f"`{f}`" not in doc and f'"{f}"' not in doc)
    assert not undocumented, f"docs/formats.md does not name the fields {undocumented}"
