"""The qat quantizer on tiny real-architecture models: the checkpoint holds exactly the trained grid and beats
RTN against a float64 reference, reruns are byte-identical, a killed run resumes, bad input is one line."""

import json

import pytest
import torch
from click.testing import CliRunner

from teeny_core.cli import cli
from teeny_core.testing import QuantizerContract
from teeny_core import Artifact, CalibrationSet, ModelSource

QUICK = {"bits": 2, "group_size": 32, "epochs": 2}


class TestQatContract(QuantizerContract):
    method = "qat"
    options = {"bits": 2, "group_size": 32, "epochs": 1}


class TestQatContractMoe(TestQatContract):
    """Routed experts stay in full precision (excluded in the checkpoint's config); the rest is trained."""

    arch = "qwen2_moe"


class TestQatContractGemma(TestQatContract):
    arch = "gemma3"


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    """Finished blocks are kept under Teeny's cache until the artifact is complete: one cache per test."""
    monkeypatch.setenv("TEENY_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def calibration(teeny_plugins, source, samples=8, seq_len=32, seed=0) -> CalibrationSet:
    cls = teeny_plugins.get("calibrator", "code")
    return cls().samples(source.load_tokenizer(), cls.Options.from_mapping({"samples": samples, "seq_len": seq_len}),
                         seed=seed)


def quantize(teeny_plugins, method, source, cal, options, out) -> Artifact:
    cls = teeny_plugins.get("quantizer", method)
    out.mkdir()
    parsed = cls.Options.from_mapping(options)
    return cls().quantize(source, cal if cls.needs_calibration(parsed) else None, parsed, out)


def test_checkpoint_is_the_trained_grid_and_beats_rtn_in_float64(teeny_plugins, tiny_model, tmp_path):
    from transformers import AutoModelForCausalLM

    from teeny_core.formats.gptq import dequantized_state_dict, read_quantized

    path = tiny_model("qwen2")  # tied embeddings, biases on q/k/v
    source = ModelSource(str(path))
    cal = calibration(teeny_plugins, source)
    qat = quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "qat")
    rtn = quantize(teeny_plugins, "rtn", source, None, {"bits": 2, "group_size": 32}, tmp_path / "rtn")
    linears, _ = read_quantized(qat.path)
    names = []
    for name, linear in linears:  # what an hf-gptq reader unpacks: 2-bit codes, v1 zero points, float16 scales
        names.append(name)
        assert int(linear.q.min()) >= 0 and int(linear.q.max()) <= 3
        assert int(linear.zero.min()) >= 1 and torch.equal(linear.scale, linear.scale.half().float())
    assert len(names) == 14 and names == qat.meta["quantized_layers"]
    cfg = json.loads((qat.path / "config.json").read_text())["quantization_config"]
    assert (cfg["quant_method"], cfg["bits"], cfg["group_size"], cfg["sym"], cfg["desc_act"]) == \
        ("gptq", 2, 32, False, False)

    ids = torch.tensor(calibration(teeny_plugins, source, samples=4, seq_len=64, seed=7).samples)

    def float64_logprobs(state=None):
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
        if state is not None:
            model.load_state_dict({k: v.double() for k, v in state.items()}, strict=False)
        with torch.no_grad():
            return torch.log_softmax(model(ids).logits, -1)

    reference = float64_logprobs()
    dequantized = {n: float64_logprobs(dequantized_state_dict(a.path)) for n, a in (("qat", qat), ("rtn", rtn))}
    kl = {n: float((reference.exp() * (reference - lp)).sum(-1).mean()) for n, lp in dequantized.items()}
    assert 0 < kl["qat"] < 0.9 * kl["rtn"], kl

    runtime = teeny_plugins.get("runtime", "transformers")  # the packed checkpoint computes the dequantized model
    loaded = runtime().load(Artifact.open(qat.path), runtime.Options.from_mapping({"device": "cpu",
                                                                                  "kernels": "dequant"}))
    try:
        assert torch.allclose(loaded.logprobs(ids.tolist()).double(), dequantized["qat"], atol=1e-4)
    finally:
        loaded.close()


def test_reruns_are_byte_identical_and_a_killed_run_resumes_at_the_next_block(teeny_plugins, tiny_model, tmp_path,
                                                                             monkeypatch, own_cache):
    import teeny_qat.training as training

    source = ModelSource(str(tiny_model("llama")))
    cal = calibration(teeny_plugins, source)
    first = quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "first")
    again = quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "again")
    other_seed = quantize(teeny_plugins, "qat", source, cal, {**QUICK, "seed": 1}, tmp_path / "seed1")
    weights = "model.safetensors"
    assert (first.path / weights).read_bytes() == (again.path / weights).read_bytes()
    assert (first.path / weights).read_bytes() != (other_seed.path / weights).read_bytes()
    assert first.meta["resumed_blocks"] == 0 and not any((own_cache / "qat-blocks").iterdir())

    real = training.qat_solver
    trained = []

    def killed_at_block_1(*args, **kwargs):
        solve = real(*args, **kwargs)

        def solve_or_die(work):
            if work.index == 1:
                raise KeyboardInterrupt  # the run dies after block 0 was finished and kept
            trained.append(work.index)
            return solve(work)
        return solve_or_die

    monkeypatch.setattr(training, "qat_solver", killed_at_block_1)
    with pytest.raises(KeyboardInterrupt):
        quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "killed")
    assert trained == [0] and len(list((own_cache / "qat-blocks").iterdir())) == 1
    monkeypatch.setattr(training, "qat_solver", real)
    resumed = quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "resumed")
    assert resumed.meta["resumed_blocks"] == 1 and list(resumed.meta["block_losses"]) == ["1"]
    assert (resumed.path / weights).read_bytes() == (first.path / weights).read_bytes()
    assert not any((own_cache / "qat-blocks").iterdir())  # removed once the artifact is complete


def test_gptq_init_starts_each_block_closer_than_rtn(teeny_plugins, tiny_model, tmp_path):
    source = ModelSource(str(tiny_model("llama")))
    cal = calibration(teeny_plugins, source)
    start = {}
    for init in ("rtn", "gptq"):
        art = quantize(teeny_plugins, "qat", source, cal, {**QUICK, "epochs": 1, "init": init}, tmp_path / init)
        start[init] = art.meta["block_losses"]["0"]["before"]
        assert art.meta["block_losses"]["0"]["after"] < start[init]
    assert start["gptq"] < start["rtn"]


def test_the_same_quantization_twice_at_once_is_refused_in_one_line_not_crashed(teeny_plugins, tiny_model,
                                                                                 tmp_path):
    """Two identical runs share one resume directory; before the lock, the first to finish removed it under the
    second, which died with a safetensors traceback. Now the second is refused before it writes anything."""
    from teeny_core import TeenyError
    from teeny_qat.quantizer import QatOptions, held, resume_dir

    source = ModelSource(str(tiny_model("llama")))
    cal = calibration(teeny_plugins, source)
    options = {"bits": 2, "group_size": 32, "epochs": 1}
    with held(resume_dir(source, cal, QatOptions.from_mapping(options))):
        with pytest.raises(TeenyError, match=r"^qat: another process is running this very quantization .*; wait "
                                             r"for it to finish, then run again$"):
            quantize(teeny_plugins, "qat", source, cal, options, tmp_path / "second")
        assert not any((tmp_path / "second").iterdir())
    assert quantize(teeny_plugins, "qat", source, cal, options, tmp_path / "after").meta["block_losses"]


@pytest.mark.parametrize("given,rates", [
    ({"bits": 2}, (1e-3, 1e-4)),
    ({"bits": 3}, (3e-4, 3e-5)),  # the rates measured to train Qwen2.5-Coder-0.5B at 3 bits (qat.md)
    ({"bits": 4}, (9e-5, 9e-6)),
    ({"bits": 3, "lr_scale": 0.01, "lr_weight": 0}, (0.01, 0.0)),  # given rates are kept, 0 included
])
def test_unset_learning_rates_shrink_with_each_bit(given, rates):
    from teeny_qat.quantizer import QatOptions, learning_rates

    assert learning_rates(QatOptions.from_mapping(given)) == pytest.approx(rates)


def test_an_early_overshoot_is_not_a_divergence_and_each_block_keeps_its_best_epoch(teeny_plugins, tiny_model,
                                                                                   tmp_path):
    """At lr_scale 0.01 block 1's loss after its first epoch is above its start; the cosine decay brings it
    back below, so the block is trained, not refused, and keeps the epoch with the lowest loss."""
    source = ModelSource(str(tiny_model("llama")))
    options = {"bits": 2, "group_size": 32, "epochs": 4, "lr_scale": 0.01, "lr_weight": 0}
    art = quantize(teeny_plugins, "qat", source, calibration(teeny_plugins, source), options, tmp_path / "qat")
    curve = art.meta["block_losses"]["1"]
    assert curve["epochs"][0] > curve["before"]
    for block in art.meta["block_losses"].values():
        assert block["after"] == min(block["epochs"]) < block["before"]
        assert block["epochs"][block["kept_epoch"] - 1] == block["after"]


@pytest.mark.parametrize("options,calibration_options,message", [
    (["bits=8"], [], "option bits=8 is not valid; expected 2|3|4"),
    (["group_size=48"], [], "not a multiple of group_size=48, which an hf-gptq checkpoint cannot hold"),
    (["lr_scale=1000", "lr_weight=1000"], [], "qat: block 0 diverged at step 2: the loss is nan"),
    (["lr_scale=0.05", "lr_weight=0"], [], "qat: block 0 diverged by step 2: its loss rose from"),
    ([], ["samples=2"], "the calibration set has 2 sample(s), fewer than one batch (batch_size=4)"),
])
def test_bad_input_is_one_error_line_and_nothing_is_written(tiny_model, tmp_path, own_cache, options,
                                                            calibration_options, message):
    out = tmp_path / "out"
    args = ["quantize", str(tiny_model("llama")), "-m", "qat", "--out", str(out), "-c", "seq_len=32", "-c",
            "samples=8"]
    args += [a for o in ["epochs=1", *options] for a in ("-o", o)]
    args += [a for o in calibration_options for a in ("-c", o)]
    r = CliRunner().invoke(cli, args)
    assert r.exit_code == 2, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], r.output
    assert not out.exists() and not list(tmp_path.glob(".staging-*"))
    assert not (own_cache / "qat-blocks").exists() or not any((own_cache / "qat-blocks").iterdir())


def test_end_to_end_phase_lowers_the_kl_and_the_checkpoint_holds_what_it_trained(teeny_plugins, tiny_model,
                                                                                 tmp_path):
    from transformers import AutoModelForCausalLM

    from teeny_core.formats.gptq import dequantized_state_dict

    path = tiny_model("llama")
    source = ModelSource(str(path))
    cal = calibration(teeny_plugins, source)
    blocks = quantize(teeny_plugins, "qat", source, cal, QUICK, tmp_path / "blocks")
    both = quantize(teeny_plugins, "qat", source, cal, {**QUICK, "e2e_steps": 8, "e2e_lr": 1e-3}, tmp_path / "e2e")
    e2e = both.meta["end_to_end"]
    assert e2e["steps"] == 8 and e2e["kl_after"] < 0.95 * e2e["kl_before"]
    before, after = dequantized_state_dict(blocks.path), dequantized_state_dict(both.path)
    for key in before:  # codes and zero points frozen: a weight moves only with its group's scale
        if key.endswith("proj.weight"):
            moved = before[key] != 0
            ratio = (after[key] / torch.where(moved, before[key], 1)).reshape(before[key].shape[0], -1, 32)
            moved = moved.reshape(ratio.shape)
            spread = torch.where(moved, ratio, -torch.inf).amax(-1) - torch.where(moved, ratio, torch.inf).amin(-1)
            assert float(spread[moved.any(-1)].max()) < 1e-5, key
            assert not torch.equal(after[key], before[key])
        elif "norm" not in key:
            assert torch.equal(after[key], before[key]), key
    assert any(not torch.equal(after[k], before[k]) for k in before if "norm" in k)

    ids = cal.tensor()

    def float64_kl(state):  # the written checkpoint's KL on the calibration windows, recomputed in float64
        original = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float64).eval()
        model.load_state_dict({k: v.double() for k, v in state.items()}, strict=False)
        with torch.no_grad():
            p, q = (torch.log_softmax(m(ids).logits, -1) for m in (original, model))
        return float((p.exp() * (p - q)).sum(-1).mean())

    assert float64_kl(before) == pytest.approx(e2e["kl_before"], rel=1e-3)
    assert float64_kl(after) == pytest.approx(e2e["kl_after"], rel=1e-3)
