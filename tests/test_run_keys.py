"""The keys that name stored results do not move: a resumed run reuses every finished variant. The values below
were computed on main before the run code was split into executor/worker/plan/pipeline and options were
parsed once; they must stay what they are. Two changed on purpose, named in CHANGED: GGUF variants whose
options compute no importance matrix (Q8_0, and Q4_K_M with imatrix=auto) no longer get a calibration set,
so their keys no longer hold the calibration settings."""

import os
import shutil

import pytest

from teeny_core.experiment import build_experiment
from teeny_core.plan import Plan

VARIANTS = [
    {"name": "rtn-w4", "method": "rtn", "bits": 4, "group_size": 32},
    {"name": "rtn-mixed", "method": "rtn", "target_bits": 3.5},
    {"name": "gptq-w4", "method": "gptq", "bits": 4, "group_size": 32},
    {"name": "awq-w4", "method": "awq", "bits": 4, "group_size": 32},
    {"name": "gguf-q8", "method": "gguf", "type": "Q8_0"},
    {"name": "gguf-q4km", "method": "gguf", "type": "Q4_K_M"},
    {"name": "gguf-q2k", "method": "gguf", "type": "Q2_K"},
]
SPEC = {"name": "pinned", "seed": 7, "device": "cpu", "limit": 3,
        "calibration": {"method": "code", "samples": 4, "seq_len": 32},
        "evaluators": {"fidelity": {"chunks": 6, "chunk_len": 32}}, "variants": VARIANTS}
MAIN = {  # computed on main (21eccfc) with Pipeline's methods of the same names
    "config_hash": "b3d91b5a64d0858e",
    "baseline_id": "2492917cd6cd4e18",
    "calibration_file": "894aacacbdec78d0.json",
    "evaluator_config": "55daac65dd10",
    "evaluation_signature": "aa52a4b6743ec331",
    "keys": {"original": "29b99b27a7487d65", "rtn-w4": "f69b4f32d7c2a901", "rtn-mixed": "d48c9a46c706d8cd",
             "gptq-w4": "ea3696914ff42f10", "awq-w4": "462e6debee301fff", "gguf-q8": "05bfebfe00f3ef59",
             "gguf-q4km": "604f97867f21e3af", "gguf-q2k": "dc7d71424774b9b2"},
}
CHANGED = {"gguf-q8": "e49ef3debf531e3f", "gguf-q4km": "2f01c4889957f686"}  # no calibration set any more


@pytest.fixture
def plan(tiny_model, tmp_path, teeny_plugins):
    """The pinned experiment on a copy of the tiny llama whose file times are fixed (they are in the model's
    identity, with the file names and sizes)."""
    missing = {v["method"] for v in VARIANTS} - set(teeny_plugins.names("quantizer"))
    if missing:
        pytest.fail(f"quantizers {sorted(missing)} are not installed; .ci/install installs them")
    model = shutil.copytree(tiny_model("llama"), tmp_path / "model")
    for path in model.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    exp = build_experiment({**SPEC, "model": str(model), "output_dir": str(tmp_path / "runs")}, teeny_plugins)
    return Plan(exp, teeny_plugins)


def test_the_config_hash_is_the_one_main_computed(teeny_plugins):
    exp = build_experiment({**SPEC, "model": "org/tiny-llama", "output_dir": "runs"}, teeny_plugins)
    assert exp.config_hash() == MAIN["config_hash"]


def test_store_keys_are_the_ones_main_computed(plan):
    assert plan.baseline_id() == MAIN["baseline_id"]
    assert plan.calibration_path().name == MAIN["calibration_file"]
    assert plan.evaluator_config("fidelity") == MAIN["evaluator_config"]
    keys = {v.name: plan.variant_key(v) for v in plan.exp.all_variants()}
    assert keys == {**MAIN["keys"], **CHANGED}
    assert all(MAIN["keys"][name] != key for name, key in CHANGED.items())
    assert {plan.evaluation_signature(v) for v in plan.exp.all_variants()} == {MAIN["evaluation_signature"]}


def test_only_variants_that_calibrate_get_a_calibration_set(plan):
    calibrating = {v.name for v in plan.exp.variants if plan.needs_calibration(v)}
    assert calibrating == {"rtn-mixed", "gptq-w4", "awq-w4", "gguf-q2k"}
    assert not plan.needs_calibration(plan.variant("original"))


def test_a_run_whose_variants_do_not_calibrate_builds_no_calibration_set(tiny_model, tmp_path, teeny_plugins):
    from teeny_core.worker import VariantRunner

    exp = build_experiment({**SPEC, "model": str(tiny_model("llama")), "output_dir": str(tmp_path),
                            "variants": [VARIANTS[0], VARIANTS[4]]}, teeny_plugins)
    plan = Plan(exp, teeny_plugins)
    assert not plan.needs_preparation()
    VariantRunner(plan, emit=lambda event: None).prepare_shared()
    assert not (plan.cache_dir / "calibration").exists()
