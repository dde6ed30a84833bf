"""The GPTQ update checked against an independent float64 implementation of the paper's column-by-column
OBS formulation (explicit inverse Hessian with Gaussian elimination, no Cholesky, no blocks)."""

import logging

import pytest
import torch

from teeny_core.formats.gptq import dequantize_linear, pack_linear
from teeny_core.quant import dequantize_weight, quantize, quantize_weight
from teeny_gptq.gptq import HessianAccumulator, gptq_quantize, group_params


def correlated_inputs(n=512, cols=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mix = torch.randn(cols, cols, generator=gen, dtype=torch.float64) / cols**0.5 + torch.eye(cols, dtype=torch.float64)
    scales = torch.linspace(0.2, 3.0, cols, dtype=torch.float64)[torch.randperm(cols, generator=gen)]
    return (torch.randn(n, cols, generator=gen, dtype=torch.float64) @ mix) * scales


def reference_gptq(W, H, bits, group_size, sym, act_order, static_groups, damp):
    """Straightforward float64 GPTQ: quantize one column, spread its error with the inverse Hessian,
    then eliminate that column from the inverse."""
    W, H = W.double().clone(), H.double().clone()
    rows, cols = W.shape
    maxq = 2**bits - 1
    gs = group_size if 0 < group_size < cols else cols
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    order = torch.argsort(torch.diag(H), descending=True, stable=True).tolist() if act_order else list(range(cols))
    dynamic = gs < cols and not static_groups
    params = {}
    if not dynamic:
        for g in range(cols // gs):
            params[g] = group_params(W[:, g * gs:(g + 1) * gs], bits, sym)
    Hinv = torch.linalg.inv(H + damp * torch.diag(H).mean() * torch.eye(cols, dtype=torch.float64))
    Q = torch.zeros_like(W)
    g_idx = [0] * cols
    for pos, j in enumerate(order):
        g = pos // gs if dynamic else j // gs
        if dynamic and pos % gs == 0:
            params[g] = group_params(W[:, order[pos:pos + gs]], bits, sym)
        scale, zero = params[g]
        q = torch.clamp(torch.round(W[:, j] / scale) + zero, 0, maxq)
        Q[:, j] = scale * (q - zero)
        g_idx[j] = g
        err = (W[:, j] - Q[:, j]) / Hinv[j, j]
        W -= torch.outer(err, Hinv[j, :])
        Hinv -= torch.outer(Hinv[:, j], Hinv[j, :]) / Hinv[j, j]
    return Q, torch.tensor(g_idx, dtype=torch.int32)


CASES = [  # bits, group_size, sym, act_order, static_groups, block_size
    (4, -1, True, False, False, 128),
    (3, 16, False, False, False, 8),   # groups straddle lazy blocks
    (4, 16, True, True, True, 16),     # act-order with static groups
    (2, 32, False, True, False, 24),   # act-order, groups found while sweeping
    (8, 16, False, False, False, 128),
]


@pytest.mark.parametrize("bits,group_size,sym,act_order,static_groups,block_size", CASES)
def test_blockwise_cholesky_gptq_matches_float64_reference(bits, group_size, sym, act_order, static_groups,
                                                          block_size):
    X = correlated_inputs()
    W = torch.randn(24, 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    H = 2 * X.T @ X / X.shape[0]
    ours = gptq_quantize(W, H, bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                         static_groups=static_groups, block_size=block_size, damp_percent=0.01)
    expected, g_idx = reference_gptq(W, H, bits, group_size, sym, act_order, static_groups, 0.01)
    assert ours.w_hat.dtype == torch.float64
    assert torch.allclose(ours.w_hat, expected, rtol=0, atol=1e-9)
    assert torch.equal(ours.g_idx, g_idx)
    if act_order and not static_groups:
        assert not torch.equal(g_idx, torch.sort(g_idx).values)  # genuinely permuted groups
    # the float32 computation (what runs on models) picks the same codes up to a few rounding ties
    ours32 = gptq_quantize(W.float(), H.float(), bits=bits, group_size=group_size, sym=sym, act_order=act_order,
                           static_groups=static_groups, block_size=block_size, damp_percent=0.01)
    assert (ours32.q == ours.q).float().mean() > 0.99


def proxy_error(W, W_hat, X):
    return torch.linalg.norm((W.double() - W_hat.double()) @ X.T.double()).item()


@pytest.mark.parametrize("bits,group_size", [(4, 16), (3, -1), (2, 32)])
def test_gptq_beats_rtn_on_output_error(bits, group_size):
    X = correlated_inputs(seed=2)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(3))
    acc = HessianAccumulator(64)
    for chunk in X.float().split(100):
        acc.add(chunk)
    assert torch.allclose(acc.H.double(), 2 * X.T @ X / X.shape[0], rtol=1e-4, atol=1e-4)
    gptq = gptq_quantize(W, acc.H, bits=bits, group_size=group_size, sym=False)
    gran = "group" if group_size > 0 else "channel"
    q, s, z = quantize_weight(W, bits, "asym", gran, group_size if group_size > 0 else 128)
    rtn = dequantize_weight(q, s, z)
    assert proxy_error(W, gptq.w_hat, X) < 0.9 * proxy_error(W, rtn, X)


def test_act_order_static_groups_g_idx_and_exact_dequantization():
    X = correlated_inputs(seed=4)
    W = torch.randn(32, 64, generator=torch.Generator().manual_seed(5))
    H = (2 * X.T @ X / X.shape[0]).float()
    r = gptq_quantize(W, H, bits=4, group_size=16, sym=False, act_order=True, static_groups=True)
    assert torch.equal(r.g_idx, torch.arange(64, dtype=torch.int32) // 16)  # static groups stay contiguous
    t = pack_linear(r.q, r.scale, r.zero, r.g_idx, 4)
    assert torch.equal(dequantize_linear(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4), r.w_hat)
    dyn = gptq_quantize(W, H, bits=4, group_size=16, sym=False, act_order=True)
    assert sorted(torch.bincount(dyn.g_idx).tolist()) == [16, 16, 16, 16]  # 4 groups of 16 columns each
    t = pack_linear(dyn.q, dyn.scale, dyn.zero, dyn.g_idx, 4)
    assert torch.equal(dequantize_linear(t["qweight"], t["qzeros"], t["scales"], t["g_idx"], 4), dyn.w_hat)


def test_scales_are_float16_and_zero_points_fit_v1():
    W = torch.rand(16, 32) + 0.5  # all positive: a plain asymmetric grid would put the zero point at 0
    r = gptq_quantize(W, torch.eye(32), bits=2, group_size=-1, sym=False)
    assert torch.equal(r.scale, r.scale.half().float())
    assert int(r.zero.min()) >= 1
    assert (r.w_hat - W).abs().max() <= r.scale.max()  # the widened grid still covers the range


def test_singular_hessian_escalates_damping(caplog):
    X = correlated_inputs(seed=6)
    X[:, 3] = 0            # a dead input column
    X[:, 7] = X[:, 9]      # and two identical ones: H is singular
    H = (2 * X.T @ X / X.shape[0]).float()
    W = torch.randn(16, 64, generator=torch.Generator().manual_seed(7))
    with caplog.at_level(logging.WARNING, logger="teeny_gptq"):
        r = gptq_quantize(W, H, bits=4, group_size=16, damp_percent=0.0, damp_increment=0.01, name="toy.linear")
    assert r.escalations >= 1 and r.damp >= 0.01
    assert "toy.linear: Hessian not positive definite" in caplog.text
    assert torch.isfinite(r.w_hat).all()
    assert torch.all(r.w_hat[:, 3] == 0)  # the dead column's weight never sees an input
    q, s, z = quantize_weight(W, 4, "sym", "group", 16)
    assert proxy_error(W, r.w_hat, X) < proxy_error(W, dequantize_weight(q, s, z), X)


def test_non_finite_hessian_falls_back_to_rtn(caplog):
    H = torch.eye(32)
    H[0, 1] = float("nan")
    W = torch.randn(8, 32)
    with caplog.at_level(logging.WARNING, logger="teeny_gptq"):
        r = gptq_quantize(W, H, bits=4, group_size=-1)
    assert "round-to-nearest" in caplog.text
    _, s, z = quantize_weight(W, 4, "sym", "channel")
    assert torch.equal(r.q, quantize(W, s.half().float(), z, 4).int())  # RTN on the float16 scale
