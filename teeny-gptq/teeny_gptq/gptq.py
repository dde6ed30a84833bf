"""The GPTQ algorithm (Frantar et al., 2022) for one linear layer, in plain torch (CPU or CUDA, same code).

Given a weight ``W [out, in]`` and the Hessian ``H = 2/n X^T X`` of its calibration inputs, columns are
quantized one at a time and each column's rounding error is spread over the not-yet-quantized columns with
the upper Cholesky factor of ``H^-1``, in lazy blocks of ``block_size`` columns.

Grid: ``q = clamp(round(w / scale) + zero, 0, 2**bits - 1)``, ``w_hat = scale * (q - zero)``. Scales are rounded
to float16 *before* any code is chosen, so the float32 ``w_hat`` used for error compensation is exactly what a
GPTQ checkpoint dequantizes to. Zero points are kept in ``1 .. 2**bits - 1`` so checkpoint format v1 (which
stores ``zero - 1``) can hold them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math

log = logging.getLogger("teeny_gptq")

FP16_MIN_SUBNORMAL = 2.0**-24
FP16_MAX = 65504.0
MAX_DAMP = 10.0  # relative to the mean diagonal; beyond this the Hessian is unusable and RTN is used


@dataclasses.dataclass
class MSESearch:
    """Clipping search: try ranges shrunk by ``1 - i/grid`` for ``i < max_shrink*grid``, keep the lowest
    ``sum |w - w_hat|^norm`` per row."""

    grid: int = 100
    max_shrink: float = 0.8
    norm: float = 2.4


@dataclasses.dataclass
class GPTQResult:
    """Integer codes ``q [out, in]`` (int32), float32 ``scale``/``zero`` ``[out, groups]`` (scale exactly
    representable in float16), ``g_idx [in]`` (int32), the dequantized weight ``w_hat`` (compute dtype), the
    relative damping finally used, how many times it was escalated, and the GPTQ loss
    ``sum((w - w_hat)^2 / diag(H^-1)) / 2``."""

    q: object
    scale: object
    zero: object
    g_idx: object
    w_hat: object
    damp: float
    escalations: int
    loss: float


class HessianAccumulator:
    """Running ``H = 2/n sum x x^T`` over every token row ``x`` seen at a linear's input."""

    def __init__(self, columns: int, device=None, dtype=None) -> None:
        import torch

        self.H = torch.zeros((columns, columns), device=device, dtype=dtype or torch.float32)
        self.rows = 0
        self._factor: HessianFactor | None = None

    def factor(self, **options) -> "HessianFactor":
        """:func:`factor_hessian` of ``H`` (the identity if no row came), made once for every linear sharing this
        accumulator: the first call factors ``H`` in place and lets it go, later calls return the same factor."""
        import torch

        if self._factor is None:
            H = self.H if self.rows else torch.eye(self.H.shape[0], device=self.H.device, dtype=self.H.dtype)
            self.H = None
            self._factor = factor_hessian(H, overwrite=True, **options)
        return self._factor

    def add(self, x) -> None:
        x = x.reshape(-1, self.H.shape[0]).to(self.H.dtype)
        m = x.shape[0]
        if m == 0:
            return
        # one BLAS call rescales the running mean and adds the batch: H <- n/(n+m) H + 2/(n+m) x^T x
        self.H.addmm_(x.t(), x, beta=self.rows / (self.rows + m), alpha=2.0 / (self.rows + m))
        self.rows += m


def round_scale(scale):
    """Scale as the checkpoint stores it: float16, kept positive and finite, returned in the input dtype."""
    return scale.clamp(FP16_MIN_SUBNORMAL, FP16_MAX).half().to(scale.dtype)


def group_params(w, bits: int, sym: bool, mse: MSESearch | None = None):
    """Scale and zero (each ``[rows]``) for quantizing the columns of ``w [rows, k]`` as one group."""
    import torch

    from teeny_core.quant import qparams

    maxq = 2**bits - 1
    scheme = "sym" if sym else "asym"

    def params(clip: float):
        scale, zero = qparams(w, bits, scheme, clip=clip)
        scale, zero = round_scale(scale.to(w.dtype)).flatten(), zero.to(w.dtype).flatten()
        low = zero < 1  # v1 checkpoints cannot store zero 0: use zero 1 and widen the scale to cover the max
        if bool(low.any()):
            top = (w.max(dim=1).values * clip).clamp(min=0) / (maxq - 1)
            scale = torch.where(low, round_scale(torch.maximum(top, scale)), scale)
            zero = torch.where(low, torch.ones_like(zero), zero)
        return scale, zero

    scale, zero = params(1.0)
    if mse is None:
        return scale, zero
    best = torch.full_like(scale, float("inf"))
    for i in range(int(mse.max_shrink * mse.grid)):
        s, z = params(1 - i / mse.grid)
        err = (dequant(quant(w, s[:, None], z[:, None], maxq), s[:, None], z[:, None]) - w).abs().pow(mse.norm).sum(1)
        better = err < best
        best = torch.where(better, err, best)
        scale, zero = torch.where(better, s, scale), torch.where(better, z, zero)
    return scale, zero


def quant(w, scale, zero, maxq: int):
    """Codes (in ``w``'s dtype) on the grid ``scale * (q - zero)``."""
    import torch

    return torch.clamp(torch.round(w / scale) + zero, 0, maxq)


def dequant(q, scale, zero):
    return scale * (q - zero)


def inverse_cholesky(H, damp_percent: float, damp_increment: float, name: str = ""):
    """Upper Cholesky factor of ``(H + damp * mean(diag H) * I)^-1``, raising ``damp`` by ``damp_increment``
    until the factorization succeeds with no vanishing pivot. Returns ``(U, damp, escalations)``; a Hessian that
    never factorizes (non-finite values) gives the identity, which makes GPTQ plain round-to-nearest, with a warning.

    One Cholesky and one triangular inverse, without forming ``H^-1``: with ``J`` the reversal permutation and
    ``J H J = L L^T``, ``H^-1 = J L^-T L^-1 J = U^T U`` for the upper triangular ``U = J L^-1 J``."""
    import torch

    def eye():
        return torch.eye(H.shape[0], dtype=H.dtype, device=H.device)

    mean_diag = torch.diag(H).mean()
    # a pivot this small means the factorization only "succeeded" through rounding: treat it as singular
    tiny_pivot = H.shape[0] * torch.finfo(H.dtype).eps * mean_diag
    step = damp_increment if damp_increment > 0 else 0.0025
    damp, escalations = damp_percent, 0
    if bool(torch.isfinite(H).all()):
        while damp <= MAX_DAMP:
            damped = H.flip(0, 1)
            damped.diagonal().add_(damp * mean_diag)
            L, info = torch.linalg.cholesky_ex(damped)
            del damped
            if int(info) == 0 and bool(torch.diag(L).square().min() > tiny_pivot):
                identity = eye()
                inverse = torch.linalg.solve_triangular(L, identity, upper=False, out=identity)  # in place
                del L, identity  # before the flip's copy: at most H, L and L^-1 at once
                U = inverse.flip(0, 1)
                del inverse
                if bool(torch.isfinite(U).all()):
                    if escalations:
                        log.warning("%s: Hessian not positive definite at damp_percent=%g; succeeded at %g "
                                    "after %d increase(s)", name or "linear", damp_percent, damp, escalations)
                    return U, damp, escalations
            damp += step
            escalations += 1
    log.warning("%s: Hessian unusable (non-finite or not positive definite up to damp %g); quantizing with "
                "round-to-nearest", name or "linear", MAX_DAMP)
    return eye(), float("nan"), escalations


@contextlib.contextmanager
def few_threads(device):
    """Run GPTQ's sweep on one CPU thread: its per-column vector ops and the block updates are small or
    memory-bound, and intra-op threading costs more than it gives at these sizes (on a busy machine several
    times more, as each parallel region waits for a descheduled thread). The factorization
    (:func:`factor_hessian`) keeps every thread: measured 1.5x faster on 2 threads at 2048 columns."""
    import torch

    if device.type != "cpu":
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@dataclasses.dataclass
class HessianFactor:
    """What GPTQ takes from a Hessian, computed once for all the linears that share it (q/k/v, gate/up): the
    columns no input reached, the visiting order, and the upper Cholesky factor ``U`` of the damped ``H^-1`` in
    that order, with the damping it took."""

    dead: object
    perm: object
    U: object
    damp: float
    escalations: int


def factor_hessian(H, *, act_order: bool = False, damp_percent: float = 0.01, damp_increment: float = 0.0025,
                   dtype=None, name: str = "", overwrite: bool = False) -> HessianFactor:
    """:class:`HessianFactor` of ``H`` in ``dtype`` (default: ``H``'s). With ``act_order`` the columns are
    visited by decreasing ``diag(H)``. ``overwrite`` lets it change ``H`` instead of copying it first (one
    Hessian less in memory: 0.76 GB for a 13824-column down projection)."""
    import torch

    H = H.detach().to(dtype or H.dtype, copy=not overwrite)
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    positions = torch.arange(H.shape[0], device=H.device)
    perm = torch.argsort(torch.diag(H), descending=True, stable=True) if act_order else positions
    if act_order:
        H = H[perm][:, perm]
    U, damp, escalations = inverse_cholesky(H, damp_percent, damp_increment, name)
    return HessianFactor(dead, perm, U, damp, escalations)


def gptq_quantize(W, H, *, bits: int, group_size: int = 128, sym: bool = True, act_order: bool = False,
                  static_groups: bool = False, block_size: int = 128, damp_percent: float = 0.01,
                  damp_increment: float = 0.0025, mse: MSESearch | None = None, name: str = "",
                  factor: HessianFactor | None = None) -> GPTQResult:
    """Quantize ``W [out, in]`` with GPTQ given the Hessian ``H [in, in]`` of its inputs (or its ``factor``,
    made with the same ``act_order`` and damping, when several linears share it; ``H`` is then unused).

    Computes in ``W``'s dtype when it is float64, else float32. ``group_size`` <= 0 means one group per row.
    With ``act_order`` columns are visited by decreasing ``diag(H)``; ``static_groups`` fixes every group's
    scale and zero from the original weights first (so ``g_idx`` stays contiguous), otherwise a group's
    parameters are found when its first column (in visiting order) comes up, from the updated weights.
    """
    import torch

    dtype = torch.float64 if W.dtype == torch.float64 else torch.float32
    if factor is None:
        factor = factor_hessian(H, act_order=act_order, damp_percent=damp_percent, damp_increment=damp_increment,
                                dtype=dtype, name=name)
    with few_threads(W.device):
        return _gptq_quantize(W.detach().to(dtype).clone(), factor, bits=bits, group_size=group_size, sym=sym,
                              act_order=act_order, static_groups=static_groups, block_size=block_size, mse=mse)


def _gptq_quantize(W, factor: HessianFactor, *, bits, group_size, sym, act_order, static_groups, block_size, mse):
    import torch

    rows, cols = W.shape
    gs = group_size if 0 < group_size < cols else cols
    n_groups = math.ceil(cols / gs)
    dynamic = gs < cols and not static_groups  # group parameters found while sweeping
    W[:, factor.dead] = 0

    # the sweep works on W^T and stores scale/zero as [groups, rows]: every visited column is a contiguous row
    scale = torch.zeros((n_groups, rows), dtype=W.dtype, device=W.device)
    zero = torch.zeros_like(scale)
    if not dynamic:
        for g in range(n_groups):
            scale[g], zero[g] = group_params(W[:, g * gs:(g + 1) * gs], bits, sym, mse)

    positions = torch.arange(cols, device=W.device)
    perm = factor.perm
    if act_order:
        W = W[:, perm]
    W = W.t().contiguous()

    codes, W_hat = torch.empty_like(W), torch.empty_like(W)
    col_group = positions // gs if dynamic else perm // gs  # the group of each visited position
    loss = _sweep(W, factor.U.to(W.dtype), codes, W_hat, scale, zero, col_group.tolist(), gs if dynamic else 0,
                  block_size, bits, sym, mse)
    del W
    g_idx = torch.empty(cols, dtype=torch.int32, device=codes.device)
    g_idx[perm] = col_group.to(torch.int32)
    if act_order:
        inverse = torch.argsort(perm)
        codes, W_hat = codes[inverse], W_hat[inverse]
    codes = codes.t().to(torch.int32, memory_format=torch.contiguous_format)
    W_hat = W_hat.t().contiguous()
    return GPTQResult(q=codes, scale=scale.t().contiguous(), zero=zero.t().contiguous(), g_idx=g_idx, w_hat=W_hat,
                      damp=factor.damp, escalations=factor.escalations, loss=float(loss))


def _sweep(W, U, codes, W_hat, scale, zero, group_of: list[int], dynamic_gs: int, block_size: int, bits: int,
           sym: bool, mse: MSESearch | None):
    """GPTQ's column sweep on ``W^T [cols, rows]`` (updated in place) with the upper factor ``U`` of ``H^-1``:
    fills ``codes`` and ``W_hat`` (``[cols, rows]``) and, when ``dynamic_gs`` (the group size) is set, each
    group's ``scale``/``zero`` rows as its first column comes up. Returns the loss."""
    import torch

    cols, maxq, gs = W.shape[0], 2**bits - 1, dynamic_gs
    loss = torch.zeros((), dtype=torch.float64, device=W.device)
    for i1 in range(0, cols, block_size):
        i2 = min(i1 + block_size, cols)
        W1 = W[i1:i2]  # a view: these rows are not read again once the block is swept
        Err1 = torch.empty_like(W1)
        U1 = U[i1:i2, i1:i2]
        w_rows, err_rows, u_rows = W1.unbind(0), Err1.unbind(0), U1.unbind(0)
        for i in range(i2 - i1):
            col = i1 + i
            g = group_of[col]
            if gs and col % gs == 0:  # from the group's weights as updated so far (columns past this
                # block have not had this block's lazy update yet: apply it to them here)
                later = W[i2:col + gs] - U[i1:i1 + i, i2:col + gs].t() @ Err1[:i]
                scale[g], zero[g] = group_params(torch.cat([W1[i:i + gs], later]).t(), bits, sym, mse)
            s, z, w, err, q, w_q = scale[g], zero[g], w_rows[i], err_rows[i], codes[col], W_hat[col]
            torch.div(w, s, out=q).round_().add_(z).clamp_(0, maxq)  # quant(), in place
            torch.sub(q, z, out=w_q).mul_(s)  # dequant()
            torch.sub(w, w_q, out=err).div_(u_rows[i][i])
            W1[i:].addr_(u_rows[i][i:], err, alpha=-1)
        loss += Err1.double().square().sum() / 2
        W[i2:] -= U[i1:i2, i2:].t() @ Err1
    return loss
