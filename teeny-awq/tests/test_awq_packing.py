"""AutoAWQ GEMM packing in teeny_core.formats.awq, checked against a word-by-word reference of the layout."""

import pytest
import torch

from teeny_core import TeenyError
from teeny_core.formats import awq as fmt


def reference_pack(codes_out_in):
    """The layout as AutoAWQ documents it: word (i, j) holds output channels 8j..8j+7 of input row i,
    nibble k holding channel 8j + [0, 2, 4, 6, 1, 3, 5, 7][k]; the word is read as a signed int32."""
    out, cols = codes_out_in.shape
    words = [[0] * (out // 8) for _ in range(cols)]
    for i in range(cols):
        for j in range(out // 8):
            word = 0
            for k, channel in enumerate((0, 2, 4, 6, 1, 3, 5, 7)):
                word |= int(codes_out_in[8 * j + channel, i]) << (4 * k)
            words[i][j] = word - (1 << 32) if word >= 1 << 31 else word
    return torch.tensor(words, dtype=torch.int32)


def test_pack_matches_the_documented_layout_and_round_trips():
    g = torch.Generator().manual_seed(0)
    q = torch.randint(0, 16, (24, 40), generator=g, dtype=torch.int32)
    packed = fmt.pack_awq(q)
    assert packed.dtype == torch.int32 and tuple(packed.shape) == (40, 3)
    assert torch.equal(packed, reference_pack(q))
    assert torch.equal(fmt.unpack_awq(packed), q)


def test_one_word_by_hand():
    # channels 0..7 of one input row hold codes 0..7; nibbles read 0,2,4,6,1,3,5,7 -> 0x75316420
    q = torch.arange(8, dtype=torch.int32).reshape(8, 1)
    assert int(fmt.pack_awq(q)[0, 0]) == 0x75316420
    q = torch.full((8, 1), 15, dtype=torch.int32)  # all ones: -1 as a signed int32
    assert int(fmt.pack_awq(q)[0, 0]) == -1


def test_zeros_and_scales_round_trip():
    g = torch.Generator().manual_seed(1)
    zero = torch.randint(0, 16, (16, 3), generator=g).float()
    qzeros = fmt.pack_zeros(zero)
    assert tuple(qzeros.shape) == (3, 2) and qzeros.dtype == torch.int32
    assert torch.equal(fmt.unpack_zeros(qzeros).float(), zero)
    scale = torch.rand(16, 3, generator=g).half().float()
    scales = fmt.pack_scales(scale)
    assert scales.dtype == torch.float16 and tuple(scales.shape) == (3, 16)
    assert torch.equal(fmt.unpack_scales(scales), scale)


def test_dequantize_packed_matches_float64():
    g = torch.Generator().manual_seed(2)
    out, cols, gs = 16, 64, 32
    q = torch.randint(0, 16, (out, cols), generator=g, dtype=torch.int32)
    zero = torch.randint(0, 16, (out, cols // gs), generator=g).float()
    scale = (torch.rand(out, cols // gs, generator=g) * 0.1).half().float()
    w = fmt.dequantize_packed(fmt.pack_awq(q), fmt.pack_zeros(zero), fmt.pack_scales(scale))
    expected = scale.double().repeat_interleave(gs, dim=1) * (q.double() - zero.double().repeat_interleave(gs, dim=1))
    assert w.dtype == torch.float32
    assert torch.equal(w.double(), expected)  # fp16 scale times a small integer is exact in float32


def test_other_widths_and_bad_shapes_are_one_line_errors():
    q = torch.zeros(8, 4, dtype=torch.int32)
    with pytest.raises(TeenyError, match="bits=4 only, got bits=3"):
        fmt.pack_awq(q, bits=3)
    with pytest.raises(TeenyError, match="multiple of 8, got 12"):
        fmt.pack_awq(torch.zeros(12, 4, dtype=torch.int32))
    with pytest.raises(TeenyError, match="0..15"):
        fmt.pack_awq(torch.full((8, 4), 16, dtype=torch.int32))


def test_not_an_awq_checkpoint(tmp_path):
    (tmp_path / "config.json").write_text('{"quantization_config": {"quant_method": "gptq"}}')
    with pytest.raises(TeenyError, match="quant_method is 'gptq', expected 'awq'"):
        fmt.dequantized_state_dict(tmp_path)
