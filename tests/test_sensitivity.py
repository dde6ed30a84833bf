"""`teeny sensitivity` and the bit plan it feeds.

The walker-measured numbers are checked against independent float64 computations on the whole model held in
memory: the Hessian proxy against ``tr((W-Q) H (W-Q)^T) / out`` with ``H`` from the model's own forward pass
(relative tolerance 1e-3: the walker runs float32 activations), and the per-module KL against a KL computed
here with that one linear swapped. The dynamic-programming plan is checked against brute force.
"""

from __future__ import annotations

import itertools
import json
import random

import pytest

torch = pytest.importorskip("torch")

from teeny_core.errors import TeenyError  # noqa: E402
from teeny_core.sensitivity import average_bits, plan_bits, stored_bits  # noqa: E402
from teeny_core.modeling import ModelSource
from teeny_core.types import CalibrationSet

BITS = [2, 4, 8]


@pytest.fixture(scope="module")
def measured(tiny_model):
    from teeny_core.sensitivity import measure

    src = tiny_model("llama")
    gen = random.Random(0)
    calibration = CalibrationSet("test", [[gen.randrange(1, 500) for _ in range(32)] for _ in range(4)])
    windows = [[gen.randrange(1, 500) for _ in range(32)] for _ in range(2)]
    result = measure(ModelSource(str(src)), calibration, method="rtn", bits_list=BITS, group_size=32,
                     windows=windows, kl=True)
    return src, calibration, windows, result


def rtn_float64(weight, bits, group=32):
    w = weight.double().reshape(weight.shape[0], -1, group)
    lo, hi = w.amin(-1, keepdim=True).clamp(max=0), w.amax(-1, keepdim=True).clamp(min=0)
    scale = (hi - lo) / (2**bits - 1)
    zero = torch.round(-lo / scale)
    q = torch.clamp(torch.round(w / scale) + zero, 0, 2**bits - 1)
    return (scale * (q - zero)).reshape(weight.shape)


def test_every_linear_and_layer_is_measured_and_damage_falls_with_bits(measured):
    _, _, _, result = measured
    assert len(result["modules"]) == 14 and set(result["layers"]) == {"0", "1"}
    for name, entry in result["modules"].items():
        for score in ("proxy", "block", "kl"):
            values = [entry[score][str(b)] for b in BITS]
            assert values[0] > values[1] > values[2] >= 0, (name, score, values)
    assert result["model"] == ModelSource(result["model_path"]).identity() and result["group_size"] == 32
    assert result["spearman_block_kl"] > 0.8  # measured 0.99 on this model; the Hessian proxy ranks worse


def test_proxy_and_kl_match_whole_model_float64_references(measured):
    from transformers import AutoModelForCausalLM

    src, calibration, windows, result = measured
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float64).eval()
    name = "model.layers.1.mlp.down_proj"
    module = model.get_submodule(name)
    inputs = []
    handle = module.register_forward_pre_hook(lambda m, a: inputs.append(a[0].reshape(-1, m.in_features)))
    with torch.no_grad():
        reference = torch.log_softmax(model(input_ids=torch.tensor(windows)).logits, -1)
        inputs.clear()
        model(input_ids=torch.tensor(calibration.samples))
    handle.remove()
    x = torch.cat(inputs)
    hessian = x.t() @ x / x.shape[0]
    weight = module.weight.detach().clone()
    for bits in BITS:
        delta = weight - rtn_float64(weight, bits)
        proxy = float(((delta @ hessian) * delta).sum() / weight.shape[0])
        assert result["modules"][name]["proxy"][str(bits)] == pytest.approx(proxy, rel=1e-3)
    with torch.no_grad():
        module.weight.copy_(rtn_float64(weight, 4))
        got = torch.log_softmax(model(input_ids=torch.tensor(windows)).logits, -1)
    kl = float((reference.exp() * (reference - got)).sum(-1).mean())
    assert result["modules"][name]["kl"]["4"] == pytest.approx(kl, rel=0.02)  # float16-kept Q, float32 model


def test_kl_sample_measures_that_many_pairs_with_the_full_runs_numbers(measured, tmp_path):
    from teeny_core.sensitivity import heatmap, measure

    src, calibration, windows, full = measured
    result = measure(ModelSource(str(src)), calibration, method="rtn", bits_list=BITS, group_size=32,
                     windows=windows, kl=True, kl_sample=6, seed=1)
    pairs = [(n, b) for n, e in result["modules"].items() for b in e.get("kl", {})]
    assert len(pairs) == 6 == result["kl_pairs"] and len({n for n, _ in pairs}) >= 2
    for name, bits in pairs:
        assert result["modules"][name]["kl"][bits] == pytest.approx(full["modules"][name]["kl"][bits], rel=1e-6)
    assert -1 <= result["spearman_block_kl"] <= 1
    heatmap(result, tmp_path / "h.png")  # incomplete KL: the heatmap shows the proxy
    assert (tmp_path / "h.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_writes_json_and_heatmap_and_refuses_bad_group_size(tiny_model, tmp_path):
    from click.testing import CliRunner

    from teeny_core.cli import cli

    src = str(tiny_model("llama"))
    out = tmp_path / "sens.json"
    args = ["sensitivity", src, "-o", "bits=2,4", "-o", "group_size=64", "-c", "samples=2", "-c", "seq_len=32",
            "--no-kl", "--out", str(out)]
    done = CliRunner().invoke(cli, args)
    assert done.exit_code == 0, done.output
    data = json.loads(out.read_text())
    assert data["bits"] == [2, 4] and data["calibration"]["samples"] == 2 and "spearman_proxy_kl" not in data
    assert out.with_suffix(".png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = CliRunner().invoke(cli, [*args[:4], "-o", "group_size=48", *args[6:-1], str(tmp_path / "bad.json")])
    assert bad.exit_code == 2 and bad.output.count("\n") == 1 and bad.output.startswith("Error: ")
    assert "group_size=48" in bad.output and not (tmp_path / "bad.json").exists()


def test_plan_is_the_least_damage_within_the_budget():
    gen = random.Random(3)
    shapes = {f"m{i}": (gen.choice([64, 128, 256]), gen.choice([128, 256])) for i in range(6)}
    allowed = [2, 3, 4, 8]
    damage = {n: {b: gen.random() * 4.0 ** (4 - b) for b in allowed} for n in shapes}
    target = 3.5
    plan = plan_bits(shapes, damage, allowed, target, group_size=64)
    achieved = average_bits(shapes, plan, 64)
    assert achieved <= target and abs(achieved - target) <= 0.05
    best = min(sum(damage[n][b] for n, b in zip(shapes, combo))
               for combo in itertools.product(allowed, repeat=len(shapes))
               if average_bits(shapes, dict(zip(shapes, combo)), 64) <= target - 0.005)
    assert sum(damage[n][plan[n]] for n in shapes) <= best + 1e-12
    assert len(set(plan.values())) >= 2


def test_stored_bits_count_scales_zero_points_and_g_idx():
    # 128 x 256 at 4 bits, g64: codes, 4 groups x 128 outputs x (16-bit scale + 4-bit zero), int32 g_idx
    assert stored_bits(128, 256, 4, 64) == 128 * 256 * 4 + 4 * 128 * 20 + 32 * 256


def test_unreachable_target_is_one_line():
    shapes = {"a": (128, 128)}
    with pytest.raises(TeenyError, match=r"target_bits=1.5 cannot be reached with allowed_bits=\[2, 4\]"):
        plan_bits(shapes, {"a": {2: 1.0, 4: 0.1}}, [2, 4], 1.5, 64)


def without_kl(result, keep_spearman=True):
    """``result`` as a sensitivity without the per-module KL (optionally without its rank correlations)."""
    data = json.loads(json.dumps(result))
    for entry in data["modules"].values():
        entry.pop("kl", None)
    if not keep_spearman:
        data = {k: v for k, v in data.items() if not k.startswith("spearman_")}
    return data


def test_damage_score_is_the_kl_else_the_better_ranked_local_score_else_the_proxy(measured):
    from teeny_core.sensitivity import damage_score

    _, _, _, full = measured
    names = list(full["modules"])
    assert damage_score(full, names) == "kl"  # every (linear, bits) pair measured
    sampled = without_kl(full)
    sampled["modules"][names[0]]["kl"] = {"2": 0.1}  # what --kl-sample leaves: some pairs only
    assert full["spearman_block_kl"] > full["spearman_proxy_kl"]  # this random model: 0.99 vs 0.39
    assert damage_score(sampled, names) == "block"
    sampled.update(spearman_block_kl=0.63, spearman_proxy_kl=0.87)  # Qwen2.5-Coder-0.5B's 16 sampled pairs
    assert damage_score(sampled, names) == "proxy"
    assert damage_score(without_kl(full, keep_spearman=False), names) == "proxy"  # no KL at all


@pytest.mark.parametrize("target", [3.0, 3.5, 5.0, 6.0])
def test_chosen_score_plan_loses_no_more_measured_kl_than_the_other_local_score(measured, target):
    """With only the rank correlations known (a --kl-sample file), the plan from the score
    :func:`damage_score` picks, scored by the whole-model KL measured for every (linear, bits) pair, is no
    worse than the plan from the other local score (and the KL plan is the least of all)."""
    from teeny_core.sensitivity import damage_score

    _, _, _, result = measured
    modules = result["modules"]
    shapes = {n: tuple(e["shape"]) for n, e in modules.items()}

    def summed_kl(score):
        damage = {n: {b: e[score][str(b)] for b in BITS} for n, e in modules.items()}
        plan = plan_bits(shapes, damage, BITS, target, group_size=32)
        assert abs(average_bits(shapes, plan, 32) - target) <= 0.05
        return sum(modules[n]["kl"][str(b)] for n, b in plan.items())

    chosen = damage_score(without_kl(result), list(modules))
    other = {"proxy": "block", "block": "proxy"}[chosen]
    assert summed_kl("kl") <= summed_kl(chosen) * (1 + 1e-9) <= summed_kl(other) * (1 + 1e-9)
