"""Packed hf-gptq / hf-awq execution on CPU: same logits as the dequantized path, packed bytes in memory.

The checkpoints are written here from tiny real-architecture models with the core's own packers (sym, asym,
act-order, 3/4/8 bits, AWQ), so the test needs no quantizer plugin. Tolerances: with float32 activations the
packed kernel reproduces the dequantized float32 model to 1e-4 in log-probability (what is left is float32
rounding of ``(q - 8) * s + s * (8 - z)`` against ``s * (q - z)``); with bfloat16 activations (the default,
the kernel's fast path) the mean KL to the dequantized model stays below 2e-3 nats.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

torch = pytest.importorskip("torch")

from teeny_core.testing import build_quantized_checkpoint  # noqa: E402
from teeny_core.modeling import Artifact, ModelSource

if not hasattr(torch.ops.aten, "_weight_int4pack_mm_for_cpu"):
    pytest.skip("this torch has no CPU int4 kernel", allow_module_level=True)

IDS = [[(7 * i + 3) % 500 + 1 for i in range(48)], [(11 * i + 5) % 500 + 1 for i in range(48)]]


def load(artifact: Artifact, **options):
    from teeny_core.builtin.transformers_runtime import TransformersRuntime

    return TransformersRuntime().load(artifact, TransformersRuntime.Options.from_mapping({"device": "cpu", **options}))


def mean_kl(p, q) -> float:
    p, q = p.double(), q.double()
    return float((p.exp() * (p - q)).sum(-1).mean())


CASES = [
    ("llama", "gptq", dict(bits=4, sym=True)),
    ("qwen2", "gptq", dict(bits=4, sym=False)),
    ("gemma3", "gptq", dict(bits=4, sym=False, act_order=True)),
    ("llama", "gptq", dict(bits=8, sym=False, act_order=True)),
    ("qwen2", "gptq", dict(bits=3, sym=True, act_order=True)),
    ("gemma3", "gptq", dict(bits=4, sym=True, group=64)),
    ("llama", "awq", dict()),
    ("qwen2", "awq", dict()),
    ("gemma3", "awq", dict(group=64)),
]


@pytest.mark.parametrize("arch,kind,settings", CASES, ids=[f"{a}-{k}-{s}" for a, k, s in CASES])
def test_packed_logits_match_the_dequantized_model(tiny_model, tmp_path, arch, kind, settings):
    artifact = build_quantized_checkpoint(tiny_model(arch), tmp_path / "ckpt", kind, **settings)
    reference = load(artifact, kernels="dequant", dtype="float32")
    exact = load(artifact, kernels="packed", packed_compute="float32", dtype="float32")
    fast = load(artifact, kernels="packed", dtype="float32")
    assert reference.load_facts()["kernels"] == "dequant"
    for model in (exact, fast):
        facts = model.load_facts()
        assert facts["kernels"] == "packed" and facts["float_layers"] == {} and facts["packed_layers"] == 14
    ref = reference.logprobs(IDS)
    assert float((exact.logprobs(IDS) - ref).abs().max()) <= 1e-4
    assert mean_kl(ref, fast.logprobs(IDS)) <= 2e-3


def expected_packed_bytes(dequantized_model, linears: dict, settings: dict) -> int:
    """Bytes a packed model must hold, counted from the checkpoint's shapes independently of the loader:
    4-bit nibbles (two planes for 8-bit), a bf16 scale per 32..256-column kernel group, a bf16 offset beside it
    unless every offset of the plane is zero (symmetric 4-bit; the low plane of 8-bit codes), the act-order
    permutation, and every other tensor as the dequantized model holds it (the checkpoint's float16)."""
    total = 0
    for name, p in [*dequantized_model.named_parameters(), *dequantized_model.named_buffers()]:
        if name.rpartition(".")[0] not in linears:
            total += p.numel() * p.element_size()
    eight_bit = settings.get("bits", 4) == 8
    group = settings.get("group", 32)
    # bytes per kernel group and output: scale and offset, offset only where it is not all zero
    per_group = [2 + 2, 2] if eight_bit else [2 if settings.get("sym") else 2 + 2]
    for name in linears:
        out_f, in_f = dequantized_model.get_submodule(name).weight.shape
        total += len(per_group) * out_f * in_f // 2 + (in_f // group) * out_f * sum(per_group)
        if settings.get("act_order"):
            total += in_f * 8
    return total


@pytest.mark.parametrize("settings", [dict(bits=4, sym=False), dict(bits=4, sym=True),
                                      dict(bits=8, sym=False, act_order=True)],
                         ids=["w4", "w4-sym", "w8-act-order"])
def test_a_packed_model_holds_packed_weights(tiny_model, tmp_path, settings):
    from teeny_core.modeling import linear_layers
    from teeny_core.packed import PackedLinear

    artifact = build_quantized_checkpoint(tiny_model("llama"), tmp_path / "ckpt", "gptq", **settings)
    dequant, packed = load(artifact, kernels="dequant"), load(artifact)
    quantized = [n for n in linear_layers(dequant.model) if n != "lm_head"]
    assert all(isinstance(packed.model.get_submodule(n), PackedLinear) for n in quantized)
    assert not any(p.is_floating_point() and p.dim() == 2 and p.shape == dequant.model.get_submodule(n).weight.shape
                   for n in quantized for p in packed.model.get_submodule(n).buffers())
    assert packed.weight_bytes() == expected_packed_bytes(dequant.model, set(quantized), settings)
    held = [*packed.model.parameters(), *packed.model.buffers()]
    assert not [t for t in held if t.dtype == torch.float32 and t.numel() > 64]  # rotary inv_freq aside
    assert len({t.data_ptr() for t in held}) == len(held)  # no tensor held twice
    assert all(p.dtype == torch.float16 for p in packed.model.parameters())  # held as the checkpoint stores them
    offsets = [n for n, _ in packed.model.named_buffers() if ".scale_offset" in n]
    assert not offsets if settings["sym"] else offsets  # a symmetric grid's offsets are zero: not held
    quant_float = sum(dequant.model.get_submodule(n).weight.numel() * 2 for n in quantized)
    saved = dequant.weight_bytes() - packed.weight_bytes()
    assert saved > 0.6 * quant_float if settings["bits"] == 4 else saved > 0.2 * quant_float
    assert mean_kl(dequant.logprobs(IDS), packed.logprobs(IDS)) <= 2e-3


def test_a_layout_the_kernel_cannot_express_stays_float_and_says_why(tiny_model, tmp_path):
    cols = 128  # llama's attention inputs: groups of unequal width cannot be one kernel group size
    uneven = torch.cat([torch.zeros(48), torch.ones(16), torch.full((32,), 2), torch.full((32,), 3)]).int()
    artifact = build_quantized_checkpoint(tiny_model("llama"), tmp_path / "ckpt", "gptq", bits=4, g_idx_override=uneven)
    packed = load(artifact, packed_compute="float32", dtype="float32")
    facts = packed.load_facts()
    floats = facts["float_layers"]
    assert floats and all("unequal width" in why for why in floats.values())
    assert all(cols == packed.model.get_submodule(n).in_features for n in floats)
    assert facts["packed_layers"] == 14 - len(floats)
    ref = load(artifact, kernels="dequant", dtype="float32").logprobs(IDS)
    assert float((packed.logprobs(IDS) - ref).abs().max()) <= 1e-4


def test_rtn_writes_hf_gptq_when_its_grid_fits_and_runs_packed(teeny_plugins, tiny_model, tmp_path):
    rtn = teeny_plugins.get("quantizer", "rtn")
    src = ModelSource(str(tiny_model("qwen2")))
    made = {}
    for fmt in ("auto", "hf"):
        out = tmp_path / fmt
        out.mkdir()
        made[fmt] = rtn().quantize(src, None, rtn.Options.from_mapping({"bits": 4, "group_size": 32,
                                                                         "format": fmt}), out)
    assert made["auto"].format == "hf-gptq" and made["hf"].format == "hf"
    packed = load(Artifact.open(made["auto"].path), packed_compute="float32")
    assert packed.load_facts()["packed_layers"] == 14
    dequant = load(Artifact.open(made["auto"].path), kernels="dequant")
    assert float((packed.logprobs(IDS) - dequant.logprobs(IDS)).abs().max()) <= 1e-4
    # the hf artifact holds the same codes with float32 instead of float16 scales
    float_rtn = load(Artifact.open(made["hf"].path))
    assert mean_kl(float_rtn.logprobs(IDS), dequant.logprobs(IDS)) <= 1e-4

    # a group whose weights are all >= 0 gets zero point 0, which GPTQ v1 cannot store: its grid moves up a step
    from teeny_core.modeling import save_hf_model

    model, tokenizer = src.load(dtype="float32")
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[:, :32].abs_()
    positive = tmp_path / "positive-src"
    save_hf_model(model, tokenizer, positive)
    out = tmp_path / "lifted"
    out.mkdir()
    lifted = rtn().quantize(ModelSource(str(positive)), None,
                            rtn.Options.from_mapping({"bits": 4, "group_size": 32, "scheme": "asym"}), out)
    assert lifted.format == "hf-gptq" and lifted.meta["zero_points_lifted"] > 0
    packed = load(Artifact.open(lifted.path), packed_compute="float32")
    reference = load(Artifact.open(lifted.path), kernels="dequant")
    assert float((packed.logprobs(IDS) - reference.logprobs(IDS)).abs().max()) <= 1e-4

    out = tmp_path / "w5"
    out.mkdir()
    five = rtn().quantize(src, None, rtn.Options.from_mapping({"bits": 5, "group_size": 32}), out)
    assert five.format == "hf" and "bits=5" in five.meta["hf_gptq_misfit"]


def test_transformers_runtime_ranks_packed_cpu_formats_as_native():
    from teeny_core.builtin.transformers_runtime import TransformersRuntime

    native = TransformersRuntime.priority("hf", "cpu")
    assert TransformersRuntime.priority("hf-gptq", "cpu") == TransformersRuntime.priority("hf-awq", "cpu") == native
    from teeny_core.packed import available

    # on CUDA: packed where torch has the CUDA int4 kernel and a device, else dequantized on load (not native)
    assert TransformersRuntime.priority("hf-awq", "cuda") == (native if available("cuda") else 0)
    assert TransformersRuntime.priority("gguf", "cpu") == 0
    assert TransformersRuntime.priority("onnx", "cpu") is None


def test_checkpoint_tensors_read_without_mapping_equal_safetensors_own_reader(tiny_model, tmp_path):
    from safetensors.torch import load_file

    from teeny_core.formats.checkpoint import read_safetensors

    artifact = build_quantized_checkpoint(tiny_model("qwen2"), tmp_path / "ckpt", "gptq", bits=3, act_order=True)
    ours, theirs = read_safetensors(artifact.path / "model.safetensors"), load_file(artifact.path / "model.safetensors")
    assert ours.keys() == theirs.keys()
    assert all(ours[k].dtype == theirs[k].dtype and torch.equal(ours[k], theirs[k]) for k in theirs)


_HEAP_PROBE = """
import os, sys
from teeny_core.modeling import return_freed_memory
if sys.argv[1] == "worker":
    return_freed_memory()
def rss():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
x = b"x" * (16 << 20)  # a large block freed: glibc's default raises its mmap threshold past it
del x
blocks = [b"y" * (4 << 20) for _ in range(64)]  # 256 MiB of per-layer buffers, as a load makes
last = b"z" * (4 << 20)  # still held, above them
del blocks
print(rss())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator and /proc are Linux's")
def test_a_worker_gives_freed_load_buffers_back_to_the_system():
    """A worker's RSS is what it holds: buffers a load freed do not stay in the process (they did, ~900 MiB for a
    packed Qwen2.5-0.5B), while a process with glibc's default policy keeps them (the probe can tell)."""
    def rss(mode):
        out = subprocess.run([sys.executable, "-c", _HEAP_PROBE, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    worker, default = rss("worker"), rss("default")
    assert default - worker > 200 << 20  # the probe reproduces the retention
    assert worker < 120 << 20  # interpreter + the 4 MiB still held
