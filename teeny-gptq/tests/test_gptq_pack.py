"""GPTQ checkpoint packing: exact round trips and the standard bit layout, checked against Python big integers."""

import pytest
import torch

from teeny_core import TeenyError
from teeny_core.formats.gptq import (dequantize_linear, pack_linear, pack_qweight, pack_zeros, unpack_qweight,
                                     unpack_zeros)


def reference_pack_column(codes: list[int], bits: int) -> list[int]:
    """Independent packing: concatenate the codes into one little-endian integer, cut into 32-bit words."""
    stream = 0
    for k, c in enumerate(codes):
        stream |= c << (k * bits)
    words = len(codes) * bits // 32
    unsigned = [(stream >> (32 * w)) & 0xFFFFFFFF for w in range(words)]
    return [u - 2**32 if u >= 2**31 else u for u in unsigned]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qweight_round_trip_and_layout(bits):
    gen = torch.Generator().manual_seed(bits)
    q = torch.randint(0, 2**bits, (48, 64), generator=gen, dtype=torch.int32)  # [out, in]
    packed = pack_qweight(q, bits)
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (64 * bits // 32, 48)
    assert torch.equal(unpack_qweight(packed, bits), q)
    for col in (0, 17, 47):  # each output channel's codes, packed along the input dimension
        assert packed[:, col].tolist() == reference_pack_column(q[col].tolist(), bits)


def test_known_4bit_and_3bit_words():
    q = torch.arange(1, 9, dtype=torch.int32).repeat(4, 4)  # 32 inputs per row: 1..8 repeated
    assert pack_qweight(q, 4)[0, 0].item() == 0x87654321 - 2**32
    ones = torch.full((1, 32), 7, dtype=torch.int32)  # all bits set: three full words
    assert pack_qweight(ones, 3)[:, 0].tolist() == [-1, -1, -1]
    straddle = torch.zeros((1, 32), dtype=torch.int32)
    straddle[0, 10] = 0b101  # code 10 occupies bits 30..32: bits 30-31 of word 0 and bit 0 of word 1
    assert pack_qweight(straddle, 3)[:, 0].tolist() == [1 << 30, 1, 0]


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_qzeros_round_trip_v1_and_v2(bits):
    gen = torch.Generator().manual_seed(10 + bits)
    zero = torch.randint(1, 2**bits, (64, 5), generator=gen, dtype=torch.int32)  # [out, groups]
    v1 = pack_zeros(zero, bits, "gptq")
    assert tuple(v1.shape) == (5, 64 * bits // 32)
    assert torch.equal(unpack_zeros(v1, bits, "gptq"), zero)
    assert v1[0].tolist()[:1] == reference_pack_column((zero[:32 if bits == 3 else 32 // bits, 0] - 1).tolist(), bits)[:1]
    v2 = pack_zeros(zero, bits, "gptq_v2")
    assert torch.equal(unpack_zeros(v2, bits, "gptq_v2"), zero)


def test_v1_stores_zero_minus_one():
    sym_zero = torch.full((8, 1), 8)  # 4-bit symmetric zero point
    assert pack_zeros(sym_zero, 4, "gptq")[0, 0].item() == 0x77777777
    with pytest.raises(TeenyError, match="zero point of 0"):
        pack_zeros(torch.zeros((8, 1)), 4, "gptq")


def test_unpackable_shapes_are_one_line_errors():
    with pytest.raises(TeenyError, match="multiple of 32"):
        pack_qweight(torch.zeros((4, 48), dtype=torch.int32), 3)
    with pytest.raises(TeenyError, match="codes outside 0..15"):
        pack_qweight(torch.full((4, 32), 16, dtype=torch.int32), 4)
    with pytest.raises(TeenyError, match="supports bits"):
        pack_qweight(torch.zeros((4, 32), dtype=torch.int32), 5)


@pytest.mark.parametrize("bits", [3, 4])
def test_dequantize_linear_with_act_order_g_idx(bits):
    gen = torch.Generator().manual_seed(3)
    out_f, in_f, gs = 32, 64, 16
    q = torch.randint(0, 2**bits, (out_f, in_f), generator=gen, dtype=torch.int32)
    scale = (torch.rand((out_f, in_f // gs), generator=gen) + 0.01).half().float()
    zero = torch.randint(1, 2**bits, (out_f, in_f // gs), generator=gen).float()
    g_idx = (torch.randperm(in_f, generator=gen) // gs).to(torch.int32)  # shuffled, as act-order writes it
    t = pack_linear(q, scale, zero, g_idx, bits)
    assert t["scales"].dtype == torch.float16 and tuple(t["scales"].shape) == (in_f // gs, out_f)
    w = dequantize_linear(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], bits)
    expected = torch.empty(out_f, in_f, dtype=torch.float64)
    for j in range(in_f):  # float64 reference, column by column
        g = int(g_idx[j])
        expected[:, j] = scale[:, g].double() * (q[:, j].double() - zero[:, g].double())
    assert w.dtype == torch.float32
    assert torch.equal(w.double(), expected)  # products of a float16 and a small integer are exact in float32
