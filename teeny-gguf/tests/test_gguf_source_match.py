"""A GGUF variant that repeats a quantized GGUF source's quantization is flagged (issue 11): the source,
dequantized to a float baseline, lies on that grid, so re-quantizing it to the same types is near an identity."""

from __future__ import annotations

import json

import pytest

from teeny_core.source_match import compare_layouts, gguf_layout, source_match

pytest.importorskip("llama_cpp")


def _gguf(source_dir, out_dir, **options):
    from teeny_core.modeling import ModelSource
    from teeny_gguf.quantizer import GGUFQuantizer

    out_dir.mkdir(parents=True, exist_ok=True)
    opts = GGUFQuantizer.Options.from_mapping(options, where="gguf")
    return GGUFQuantizer().quantize(ModelSource(str(source_dir)), None, opts, out_dir)


def test_layout_rule_counts_the_source_quantized_tensors():
    source = ("MOSTLY_Q4_K_M", {"a": ("Q4_K", 600), "b": ("Q6_K", 400), "c": ("Q5_0", 400),
                                "norm": ("F32", 10_000)})
    same = compare_layouts(source, ("MOSTLY_Q4_K_M", dict(source[1])))
    assert same["flagged"] and same["same_type_tensors"] == 3 and "(Q4_K_M): 3 of the source's 3" in same["reason"]
    partial = compare_layouts(source, ("MOSTLY_Q6_K", {"a": ("Q6_K", 600), "b": ("Q6_K", 400), "c": ("Q8_0", 400)}))
    assert partial["same_type_tensors"] == 1 and not partial["flagged"] and partial["reason"] is None
    majority = compare_layouts(source, ("MOSTLY_Q5_K_M", {"a": ("Q4_K", 600), "b": ("Q6_K", 400), "c": ("Q5_1", 400)}))
    assert majority["flagged"] and majority["same_type_tensors"] == 2
    assert compare_layouts(("MOSTLY_F16", {"a": ("F16", 600)}), ("MOSTLY_Q4_K_M", {"a": ("Q4_K", 600)})) is None


def test_a_huge_embedding_in_the_same_type_does_not_flag_a_different_quantization():
    """Gemma 3 270M: the Q8_0 embedding is 168M of 268M parameters and every llama.cpp type keeps it in Q8_0."""
    blocks = {f"blk.{i}.ffn_up.weight": ("Q4_K", 400_000) for i in range(18)}
    source = ("MOSTLY_Q4_K_M", {"token_embd.weight": ("Q8_0", 168_000_000), **blocks})
    q2 = ("MOSTLY_Q2_K", {"token_embd.weight": ("Q8_0", 168_000_000),
                          **{name: ("Q2_K", n) for name, (_, n) in blocks.items()}})
    match = compare_layouts(source, q2)
    assert match["same_type_weight_share"] > 0.9 and not match["flagged"]


def test_real_files_same_type_flagged_other_type_not(tiny_model, tmp_path):
    import gguf

    from teeny_core.errors import TeenyError
    from teeny_core.modeling import ModelSource

    q4 = _gguf(tiny_model("llama"), tmp_path / "q4", type="Q4_K_M")
    source = ModelSource(str(q4.path), gguf_file=q4.file)
    again = _gguf(tiny_model("llama"), tmp_path / "again", type="Q4_K_M")
    q8 = _gguf(tiny_model("llama"), tmp_path / "q8", type="Q8_0")
    for art in (q4, again):  # the header-only reader agrees with the gguf package's full reader
        reader = gguf.GGUFReader(str(art.location))
        assert gguf_layout(art.location) == (
            gguf.LlamaFileType(int(reader.fields["general.file_type"].contents())).name,
            {t.name: (t.tensor_type.name, int(t.n_elements)) for t in reader.tensors})
    with pytest.raises(TeenyError, match="unreadable GGUF header"):
        cut = tmp_path / "cut.gguf"
        cut.write_bytes(q4.location.read_bytes()[:200])
        gguf_layout(cut)
    flagged = source_match(source, again.path)
    assert flagged["flagged"] and flagged["source_file_type"] == flagged["variant_file_type"] == "MOSTLY_Q4_K_M"
    other = source_match(source, q8.path)
    assert other["variant_file_type"] == "MOSTLY_Q8_0" and not other["flagged"]
    assert other["same_type_tensors"] < other["source_quantized_tensors"] / 2
    f16 = _gguf(tiny_model("llama"), tmp_path / "f16", type="F16")
    assert source_match(ModelSource(str(f16.path), gguf_file=f16.file), again.path) is None  # float source
    assert source_match(ModelSource(str(tiny_model("llama"))), again.path) is None  # HF source


def test_run_of_a_q4_k_m_source_flags_its_q4_k_m_variant_in_results_and_report(tiny_model, tmp_path):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    # qwen2: transformers reads this tiny GGUF's special tokens back for qwen2 (not for a llama-arch gpt2 vocab)
    q4 = _gguf(tiny_model("qwen2"), tmp_path / "src", type="Q4_K_M")
    exp = tmp_path / "exp.toml"
    exp.write_text(f'''name = "bias"
model = "{q4.location}"
output_dir = "{tmp_path / 'runs'}"
device = "cpu"
[evaluators.fidelity]
chunks = 2
chunk_len = 32
[[variants]]
name = "same-q4"
method = "gguf"
type = "Q4_K_M"
[[variants]]
name = "q8"
method = "gguf"
type = "Q8_0"
''')
    result = CliRunner().invoke(cli, ["run", str(exp)])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "bias"
    variants = {v["name"]: v for v in json.loads((run / "results.json").read_text())["variants"]}
    assert variants["original"]["source_match"] is None
    assert variants["same-q4"]["source_match"]["flagged"]
    assert "same quantization as the source (Q4_K_M)" in variants["same-q4"]["source_match"]["reason"]
    assert not variants["q8"]["source_match"]["flagged"]
    report = (run / "report.md").read_text()
    assert "| same-q4 (same quantization as the source) |" in report
    assert "| q8 |" in report
    assert "same-q4: same quantization as the source (Q4_K_M)" in report
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["windows"]["rule"] == "document-prefix/1"
