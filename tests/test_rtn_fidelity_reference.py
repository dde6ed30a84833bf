"""`teeny run` with rtn at 8/4/2 bits: the fidelity table orders as expected and matches an independent
float64 computation of the same quantization (own quantizer code, float64 model, full-vocabulary KL)."""

import json
import math

import pytest
from click.testing import CliRunner

VARIANTS = [
    ("w8-asym-channel", dict(bits=8, scheme="asym", granularity="channel")),
    ("w8-sym-group", dict(bits=8, scheme="sym", granularity="group", group_size=32)),
    ("w4-asym-group", dict(bits=4, scheme="asym", granularity="group", group_size=32)),
    ("w4-sym-channel", dict(bits=4, scheme="sym", granularity="channel")),
    ("w2-asym-group", dict(bits=2, scheme="asym", granularity="group", group_size=32)),
    ("w2-sym-channel", dict(bits=2, scheme="sym", granularity="channel")),
]
CHUNKS, CHUNK_LEN = 3, 64


def fake_quant_f64(w, bits, scheme, granularity, group_size, return_step=False):
    """Reference RTN in float64, written independently of teeny_core.quant (optionally with each weight's step)."""
    import torch

    rows, cols = w.shape
    gs = cols if granularity == "channel" else group_size
    g = w.double().reshape(rows, cols // gs, gs)
    maxq = 2**bits - 1
    lo = g.amin(-1, keepdim=True).clamp(max=0)
    hi = g.amax(-1, keepdim=True).clamp(min=0)
    if scheme == "sym":
        hi = torch.maximum(-lo, hi)
        lo = -hi
        scale = (hi - lo) / maxq
        zero = torch.full_like(scale, 2 ** (bits - 1))
    else:
        scale = (hi - lo) / maxq
        zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(g / scale) + zero, 0, maxq)
    out = (scale * (q - zero)).reshape(rows, cols)
    return (out, scale.expand_as(g).reshape(rows, cols)) if return_step else out


def reference_metrics(model_dir, options):
    """(mean KL(orig || variant), perplexity of variant) in float64 over the fidelity chunks."""
    import torch
    from pydoc_data.topics import topics
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    text = "\n\n".join(topics[k] for k in sorted(topics))
    ids = tok.encode(text, add_special_tokens=False)
    chunks = [ids[i * CHUNK_LEN:(i + 1) * CHUNK_LEN] for i in range(CHUNKS)]
    orig = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    var = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    with torch.no_grad():
        for name, mod in var.named_modules():
            if isinstance(mod, torch.nn.Linear) and name != "lm_head":
                mod.weight.copy_(fake_quant_f64(mod.weight, **options))
        x = torch.tensor(chunks)
        p = torch.log_softmax(orig(x).logits, -1)
        q = torch.log_softmax(var(x).logits, -1)
    kl = (p.exp() * (p - q)).sum(-1).mean(-1)  # per chunk
    nll = -q[:, :-1].gather(-1, x[:, 1:, None]).squeeze(-1)
    return float(kl.mean()), math.exp(float(nll.mean()))


@pytest.fixture(scope="module")
def results(tiny_model, tmp_path_factory):
    from teeny_core.cli import cli

    root = tmp_path_factory.mktemp("rtn-run")
    lines = [f'name = "rtn"', f'model = "{tiny_model("llama")}"', f'output_dir = "{root}"', 'device = "cpu"',
             "[evaluators.fidelity]", f"chunks = {CHUNKS}", f"chunk_len = {CHUNK_LEN}", "kl_top_k = 100000",
             "[profilers.system]", "benchmark = false"]
    for name, opts in VARIANTS:
        lines += ["[[variants]]", f'name = "{name}"', 'method = "rtn"', 'format = "hf"']  # float32 weights
        lines += [f"{k} = {json.dumps(v)}" for k, v in opts.items()]
    (root / "exp.toml").write_text("\n".join(lines) + "\n")
    out = CliRunner().invoke(cli, ["run", str(root / "exp.toml")])
    assert out.exit_code == 0, out.output
    data = json.loads((root / "rtn" / "results.json").read_text())
    return out.output, {v["name"]: v for v in data["variants"]}


def test_table_is_printed(results):
    output, _ = results
    for name, _ in VARIANTS:
        assert name in output
    assert "fidelity" in output and "KL" in output


def test_kl_orders_by_bits(results):
    _, by_name = results
    kl = {n: by_name[n]["metrics"]["fidelity"]["kl_mean"] for n, _ in VARIANTS}
    assert by_name["original"]["metrics"]["fidelity"]["kl_mean"] == 0.0
    assert 10 * kl["w8-asym-channel"] < kl["w4-asym-group"] < kl["w2-asym-group"]
    assert 10 * kl["w8-sym-group"] < kl["w4-sym-channel"] < kl["w2-sym-channel"]
    assert kl["w4-asym-group"] < kl["w4-sym-channel"]  # finer groups and a free zero point help


@pytest.mark.parametrize("name,options", VARIANTS, ids=[n for n, _ in VARIANTS])
def test_matches_float64_reference(results, tiny_model, name, options):
    _, by_name = results
    kl_ref, ppl_ref = reference_metrics(tiny_model("llama"), {"group_size": 0, **options})
    got = by_name[name]["metrics"]["fidelity"]
    assert got["kl_mean"] == pytest.approx(kl_ref, rel=0.03, abs=2e-7)
    assert got["perplexity"] == pytest.approx(ppl_ref, rel=1e-3)


@pytest.mark.parametrize("name,options", VARIANTS, ids=[n for n, _ in VARIANTS])
def test_weights_equal_float64_reference_up_to_rounding_ties(results, tiny_model, tmp_path_factory, name, options):
    """float32 and float64 may round a value sitting exactly on a .5 tie differently: at most one step apart."""
    import torch
    from safetensors.torch import load_file

    model_dir = tiny_model("llama")
    root = next(tmp_path_factory.getbasetemp().glob("rtn-run*"))
    stored = load_file(root / "rtn" / name / "artifact" / "model.safetensors")
    original = load_file(model_dir / "model.safetensors")
    opts = {"group_size": 0, **options}
    checked = 0
    for key, w in original.items():
        if not key.endswith("proj.weight"):
            assert torch.equal(stored[key], w), key  # unquantized tensors are untouched
            continue
        ref, step = fake_quant_f64(w, **opts, return_step=True)
        diff = (stored[key].double() - ref).abs()
        off = diff > 1e-6
        assert off.float().mean() < 0.01, key
        assert bool((diff[off] <= step[off] * 1.001).all()), key
        checked += 1
    assert checked == 14
