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


def expected_packed_bytes(dequantized_model, linears: dict, settings: dict, compact: bool) -> int:
    """Bytes a packed model must hold, counted from the checkpoint's shapes independently of the loader:
    4-bit nibbles (two planes for 8-bit), per 32..256-column kernel group and output either the kernel's bf16
    scale and offset (a plane below ``PackedLinear.compact_from`` groups x outputs) or a bf16 scale and the
    integer zero-point factor (int8 for 4-bit codes, int16 on the low plane of 8-bit codes, none where the
    offsets are all zero: a symmetric grid, the high plane of 8-bit codes), the act-order permutation, and every
    other tensor as the dequantized model holds it (the checkpoint's float16)."""
    total = 0
    for name, p in [*dequantized_model.named_parameters(), *dequantized_model.named_buffers()]:
        if name.rpartition(".")[0] not in linears:
            total += p.numel() * p.element_size()
    eight_bit = settings.get("bits", 4) == 8
    group = settings.get("group", 32)
    if not compact:
        per_group = [2 + 2, 2 + 2] if eight_bit else [2 + 2]
    elif eight_bit:
        per_group = [2, 2 + 2]  # high plane: 16 * scale, no offset; low plane: scale, int16 136 - zero
    else:
        per_group = [2 if settings.get("sym") else 2 + 1]  # scale, int8 8 - zero unless symmetric
    for name in linears:
        out_f, in_f = dequantized_model.get_submodule(name).weight.shape
        total += len(per_group) * out_f * in_f // 2 + (in_f // group) * out_f * sum(per_group)
        if settings.get("act_order"):
            total += in_f * 8
    return total


@pytest.mark.parametrize("compact", [False, True], ids=["held", "compact"])
@pytest.mark.parametrize("kind,settings", [("gptq", dict(bits=4, sym=False)), ("gptq", dict(bits=4, sym=True)),
                                           ("gptq", dict(bits=8, sym=False, act_order=True)), ("awq", dict())],
                         ids=["w4", "w4-sym", "w8-act-order", "awq"])
def test_a_packed_model_holds_packed_weights(tiny_model, tmp_path, monkeypatch, kind, settings, compact):
    """The tiny model's planes are all below the size rule's threshold (held); ``compact`` lowers it to 0 so every
    plane holds scales and factors only, as lm_head does in Qwen2.5-0.5B."""
    from teeny_core.modeling import linear_layers
    from teeny_core.packed import PackedLinear

    if compact:
        monkeypatch.setattr(PackedLinear, "compact_from", 0)
    artifact = build_quantized_checkpoint(tiny_model("llama"), tmp_path / "ckpt", kind, **settings)
    dequant, packed = load(artifact, kernels="dequant"), load(artifact)
    quantized = [n for n in linear_layers(dequant.model) if n != "lm_head"]
    assert all(isinstance(packed.model.get_submodule(n), PackedLinear) for n in quantized)
    assert not any(p.is_floating_point() and p.dim() == 2 and p.shape == dequant.model.get_submodule(n).weight.shape
                   for n in quantized for p in packed.model.get_submodule(n).buffers())
    assert packed.weight_bytes() == expected_packed_bytes(dequant.model, set(quantized), settings, compact)
    held = [*packed.model.parameters(), *packed.model.buffers()]
    assert not [t for t in held if t.dtype == torch.float32 and t.numel() > 64]  # rotary inv_freq aside
    assert len({t.data_ptr() for t in held}) == len(held)  # no tensor held twice
    assert all(p.dtype == torch.float16 for p in packed.model.parameters())  # held as the checkpoint stores them
    buffers = dict(packed.model.named_buffers())
    offsets = [n for n in buffers if ".scale_offset" in n]
    factors = {buffers[n].dtype for n in buffers if ".factor" in n}
    if not compact:
        assert offsets and not factors
    else:
        assert not offsets
        assert factors == ({torch.int16} if settings.get("bits") == 8 else set() if settings.get("sym") else
                           {torch.int8})
    quant_float = sum(dequant.model.get_submodule(n).weight.numel() * 2 for n in quantized)
    saved = dequant.weight_bytes() - packed.weight_bytes()
    assert saved > 0.6 * quant_float if settings.get("bits", 4) == 4 else saved > 0.2 * quant_float
    assert mean_kl(dequant.logprobs(IDS), packed.logprobs(IDS)) <= 2e-3


def quantized_linear(out_features: int, in_features: int, bits: int, group: int, sym: bool = False):
    """RTN codes of a random weight with float16 scales (most are not bfloat16 values), as checkpoints hold them."""
    from teeny_core.quant import QuantizedLinear, quantize_weight

    w = torch.randn(out_features, in_features, generator=torch.Generator().manual_seed(bits))
    q, scale, zero = quantize_weight(w, bits, "sym" if sym else "asym", "group", group)
    return QuantizedLinear(q=q, scale=scale.half().float(), zero=zero.round(), g_idx=torch.arange(in_features) // group,
                           bits=bits)


@pytest.mark.parametrize("bits,sym", [(4, True), (4, False), (8, False), (3, False)])
@pytest.mark.parametrize("compute", ["bfloat16", "float32"])
def test_a_rebuilt_scale_offset_equals_the_held_one_bit_for_bit(monkeypatch, bits, sym, compute):
    from teeny_core.packed import PackedLinear, pack_linear

    layer = quantized_linear(64, 512, bits, 64, sym)
    held, _ = pack_linear(layer, compute)
    monkeypatch.setattr(PackedLinear, "compact_from", 0)
    rebuilt, _ = pack_linear(layer, compute)
    for i in range(held.n_planes):
        assert not hasattr(rebuilt, f"scale_offset{i}") and hasattr(held, f"scale_offset{i}")
        a, b = held.scale_offset(i), rebuilt.scale_offset(i)
        assert a.dtype == b.dtype == getattr(torch, compute) and a.is_contiguous() and b.is_contiguous()
        assert torch.equal(a.view(torch.int16 if compute == "bfloat16" else torch.int32),
                           b.view(torch.int16 if compute == "bfloat16" else torch.int32))
    if sym:  # what the symmetric plane was built with before: scales beside zeros
        scale = rebuilt.scale0
        assert torch.equal(rebuilt.scale_offset(0), torch.stack([scale, torch.zeros_like(scale)], dim=-1))
    x = torch.randn(5, 512).to(getattr(torch, compute))
    assert torch.equal(held(x), rebuilt(x))


def test_the_size_rule_compacts_planes_of_at_least_2_18_groups_x_outputs():
    from teeny_core.packed import PackedLinear, pack_linear

    assert PackedLinear.compact_from == 1 << 18
    big, _ = pack_linear(quantized_linear(2048, 4096, 4, 32))  # 128 groups x 2048 outputs = 2**18
    small, _ = pack_linear(quantized_linear(1024, 4096, 4, 32))
    assert big.scale0.shape == (128, 2048) and big.factor0.dtype == torch.int8 and not hasattr(big, "scale_offset0")
    assert small.scale_offset0.shape == (128, 1024, 2) and not hasattr(small, "scale0")


def test_zero_points_that_are_not_integers_stay_float_and_say_why():
    from teeny_core.packed import pack_linear

    layer = quantized_linear(64, 512, 4, 64)
    layer.zero[0, 0] += 0.5  # no integer factor 8 - zero: the offset could not be rebuilt from int8
    assert pack_linear(layer) == (None, "zero points that are not integers")


@pytest.mark.parametrize("bits", [4, 8])
def test_an_asymmetric_plane_is_its_bf16_scale_times_q_minus_zero_in_float64(monkeypatch, bits):
    """Rebuilt offsets are ``scale_bf16 * (8 - zero)`` (``136 - zero`` for 8-bit) computed in float64 and rounded
    once to bfloat16: exactly, since float32 holds the product of a bfloat16 and an integer below 2**16. So the
    plane's weight ``(q - 8) * scale + offset`` is ``scale_bf16 * (q - zero)`` up to that one rounding (at most
    half a bfloat16 ulp of the offset), and the kernel's bfloat16 product is within 1% of the output's largest
    magnitude of the float64 ``x @ (scale_bf16 * (q - zero)).T`` (bfloat16 activations and output)."""
    from teeny_core.packed import PackedLinear, pack_linear

    monkeypatch.setattr(PackedLinear, "compact_from", 0)
    layer = quantized_linear(96, 512, bits, 128)
    module, _ = pack_linear(layer)
    scale16 = layer.scale.to(torch.bfloat16).double().t()  # [groups, out], as the kernel's scales
    zero = layer.zero.double().t()
    low = module.n_planes - 1  # the plane holding the offset: the only one for 4 bits, the low one for 8
    factor = (8.0 if bits == 4 else 136.0) - zero
    assert torch.equal(getattr(module, f"factor{low}").double(), factor)
    offset = module.scale_offset(low)[..., 1].double()
    assert torch.equal(offset, (scale16 * factor).to(torch.bfloat16).double())
    assert float((offset - scale16 * factor).abs().max()) <= float((scale16 * factor).abs().max()) * 2.0 ** -9
    if bits == 8:
        assert torch.equal(module.scale_offset(0)[..., 0].double(), 16 * scale16)
        assert not module.scale_offset(0)[..., 1].any()
    x = torch.randn(4, 512, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    weight = scale16.t().repeat_interleave(128, dim=1) * (layer.q.double() - zero.t().repeat_interleave(128, dim=1))
    expected = x.double() @ weight.t()
    assert float((module(x).double() - expected).abs().max()) <= 0.01 * float(expected.abs().max())


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
