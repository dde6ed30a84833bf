"""Packed hf-gptq / hf-awq linears for torch's CUDA int4 kernel (teeny_core.packed_cuda).

On CPU: the converter's input layout (uint8 nibble pairs, column 2i high) and the planes pack_linear builds for a
CUDA device (scale/offset, 8-bit as two planes, act-order permutation, bias) are checked by running a
CudaPackedLinear whose kernel is replaced by a float64 decode of that documented layout, against the
checkpoint's own dequantized weight in float64 (tolerance 1e-9: only float64 rounding, the planes are exact in
bfloat16 for the power-of-two scales used). On a CUDA GPU (``-m cuda``): the real kernel against the same
float64 reference (bfloat16 activations and products: max error within 2% of the output's largest magnitude),
and a packed checkpoint in the transformers runtime against its dequantized load.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from teeny_core import packed, packed_cuda  # noqa: E402
from teeny_core.quant import QuantizedLinear, quantize_weight  # noqa: E402

needs_cuda = pytest.mark.skipif(not packed_cuda.available(), reason="no CUDA device or no CUDA int4 kernel")


def quantized_linear(out_features: int, in_features: int, bits: int, group: int, act_order: bool = False,
                     bias: bool = True, seed: int = 0) -> QuantizedLinear:
    """RTN codes of a random weight; scales rounded to powers of two so bfloat16 holds every plane exactly."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_features, in_features, generator=g)
    q, scale, zero = quantize_weight(w, bits, "asym", "group", group)
    scale = torch.exp2(torch.round(torch.log2(scale)))
    g_idx = torch.arange(in_features) // group
    if act_order:  # shuffle the columns' groups: a non-monotonic g_idx, equal group widths
        g_idx = g_idx[torch.randperm(in_features, generator=g)]
        q = torch.randint(0, 2**bits, (out_features, in_features), generator=g, dtype=torch.int32)
    b = torch.randn(out_features, generator=g) if bias else None
    return QuantizedLinear(q=q, scale=scale, zero=zero.round(), g_idx=g_idx, bits=bits, bias=b)


def reference_int4_mm(x, pairs, group: int, scale_offset):
    """float64 ``x @ w.T`` from the converter's input layout: ``w = (q - 8) * scale + offset`` per group."""
    codes = torch.stack([pairs >> 4, pairs & 15], dim=-1).reshape(pairs.shape[0], -1).double()
    scale = scale_offset[..., 0].double().t().repeat_interleave(group, dim=1)
    offset = scale_offset[..., 1].double().t().repeat_interleave(group, dim=1)
    return x.double() @ ((codes - 8) * scale + offset).t()


def test_nibble_pairs_put_even_columns_in_the_high_nibble():
    codes = torch.randint(0, 16, (8, 64), dtype=torch.int32)
    pairs = packed_cuda.nibble_pairs(codes)
    assert pairs.dtype == torch.uint8 and pairs.shape == (8, 32)
    assert torch.equal((pairs >> 4).long(), codes[:, 0::2].long())
    assert torch.equal((pairs & 15).long(), codes[:, 1::2].long())


def test_inner_k_tiles_and_the_shapes_the_kernel_refuses():
    assert packed_cuda.inner_k_tiles(5120) == 8 and packed_cuda.inner_k_tiles(13824) == 8
    assert packed_cuda.inner_k_tiles(96) == 2 and packed_cuda.inner_k_tiles(100) is None
    assert packed_cuda.unsupported(1024, 5120) == ""
    assert "12 output features" in packed_cuda.unsupported(12, 64)
    assert "100 input features" in packed_cuda.unsupported(16, 100)
    layer = quantized_linear(12, 64, 4, 32)
    assert packed.pack_linear(layer, device="cuda") == (None, packed_cuda.unsupported(12, 64))


@pytest.mark.parametrize("bits,group,act_order", [(4, 32, False), (4, 128, True), (8, 64, True), (3, 256, False),
                                                  (4, 512, False)])
def test_planes_for_cuda_decode_to_the_checkpoint_weight(monkeypatch, bits, group, act_order):
    """The CUDA path's planes, run through a float64 decode of the converter's documented input, give
    ``x @ dequantize().T + bias`` in float64. The CUDA layout is chosen with the tensors left on the CPU."""
    monkeypatch.setattr(packed, "_is_cuda", lambda device: True)
    monkeypatch.setattr(packed_cuda, "convert", lambda codes, device: packed_cuda.nibble_pairs(codes))
    monkeypatch.setattr(packed_cuda.CudaPackedLinear, "int4_mm",
                        lambda self, x, codes, so: reference_int4_mm(x, codes, self.group, so))
    layer = quantized_linear(64, 1024, bits, group, act_order)
    module, reason = packed.pack_linear(layer, "float32", device="cpu")
    assert reason == "" and isinstance(module, packed_cuda.CudaPackedLinear)
    assert module.n_planes == (2 if bits == 8 else 1) and (module.perm is not None) == act_order
    x = torch.randn(3, 1024).double()  # float32 values: the module's float32 cast keeps them
    expected = x @ layer.dequantize().double().t() + layer.bias.double()
    got = module(x)
    assert float((got - expected).abs().max()) <= 1e-9 * float(expected.abs().max())


def test_packed_compute_float32_on_cuda_is_refused_before_loading(monkeypatch, tmp_path):
    from teeny_core.builtin import transformers_runtime as rt
    from teeny_core.errors import TeenyError
    from teeny_core.modeling import Artifact

    monkeypatch.setattr("teeny_core.modeling.resolve_device", lambda device: "cuda")
    monkeypatch.setattr(rt, "packed_available", lambda device="cpu": True)
    monkeypatch.setattr(rt, "load_packed", lambda *a, **k: pytest.fail("loaded before refusing"))
    artifact = Artifact(path=tmp_path, format="hf-gptq")
    options = rt.TransformersRuntime.Options.from_mapping({"device": "cuda", "packed_compute": "float32"})
    with pytest.raises(TeenyError, match="packed_compute=float32 on cuda: the CUDA int4 kernel takes bfloat16"):
        rt.TransformersRuntime().load(artifact, options)


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("bits,group,act_order", [(4, 128, False), (4, 32, True), (8, 128, True), (3, 64, False)])
def test_cuda_kernel_matches_a_float64_reference(bits, group, act_order):
    layer = quantized_linear(1024, 5120, bits, group, act_order)
    module, reason = packed.pack_linear(layer, "bfloat16", device="cuda")
    assert reason == "" and module.codes0.is_cuda
    x = torch.randn(5, 5120, dtype=torch.bfloat16, device="cuda")
    expected = x.double() @ layer.dequantize().double().cuda().t() + layer.bias.double().cuda()
    got = module(x).double()
    assert float((got - expected).abs().max()) <= 0.02 * float(expected.abs().max())


@pytest.mark.cuda
@needs_cuda
@pytest.mark.parametrize("kind,settings", [("gptq", dict(bits=4, sym=False, act_order=True)),
                                           ("gptq", dict(bits=8, sym=False)), ("awq", dict())])
def test_a_packed_checkpoint_on_cuda_matches_its_dequantized_load(tiny_model, tmp_path, kind, settings):
    from teeny_core.builtin.transformers_runtime import TransformersRuntime
    from teeny_core.packed import PackedLinear
    from teeny_core.testing import build_quantized_checkpoint

    artifact = build_quantized_checkpoint(tiny_model("qwen2"), tmp_path / "ckpt", kind, **settings)

    def load(**options):
        opts = TransformersRuntime.Options.from_mapping({"device": "cuda", "dtype": "bfloat16", **options})
        return TransformersRuntime().load(artifact, opts)

    reference, fast = load(kernels="dequant"), load(kernels="packed")
    facts = fast.load_facts()
    assert facts["kernels"] == "packed" and facts["float_layers"] == {} and facts["packed_layers"] == 14
    assert all(isinstance(m, packed_cuda.CudaPackedLinear) for m in fast.model.modules()
               if isinstance(m, PackedLinear))
    assert facts["weight_bytes"] < reference.load_facts()["weight_bytes"]
    ids = [[(7 * i + 3) % 500 + 1 for i in range(48)]]
    p, q = reference.logprobs(ids).double(), fast.logprobs(ids).double()
    assert float((p.exp() * (p - q)).sum(-1).mean()) <= 2e-3  # mean KL, nats (both in bfloat16)
