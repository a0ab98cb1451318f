"""SDP-FO: a first-order solver of the dual of the SDP relaxation, sound for any multipliers.

The SDP of :class:`~trustlab.certify.sdp.SDPRelaxation` (Raghunathan, Steinhardt & Liang 2018), in the scaled
variables ``v = (v_0, t, s)`` of order ``n = 1 + d + m``, with every constant multiplied by ``P_00`` (= 1), is
``min <C, P>`` over ``P >= 0`` (PSD) subject to ``<E, P> = 1`` (``E = e_0 e_0^T``) and the constraints below,
written as quadratic forms of the rank-one ``P = v v^T`` (``<A, v v^T> = v^T A v``), each with its multiplier::

    objective   v_0 (cost_s . s + cost_t . t)
    box         t_k^2 - v_0^2                                   <= 0   alpha_k >= 0
    ReLU        -v_0 s_i                                        <= 0   lam0_i >= 0
                v_0 (w_i . t + b_i v_0 - s_i)                   <= 0   lam1_i >= 0
                s_i^2 - s_i (w_i . t) - b_i v_0 s_i             =  0   nu_i (free)
    bounds      s_i^2 - (lo_i + hi_i) v_0 s_i + lo_i hi_i v_0^2 <= 0   beta_i >= 0
    l_2 ball    q . t^2 + v_0 g . t + h v_0^2                   <= 0   gamma >= 0

Sound dual (Dathathri et al. 2020, Sec. 3, in its trace-bounded form): every feasible ``P`` has
``tr(P) <= T = 1 + d + sum_i hi_i^2``, because ``P_00 = 1``, the box gives ``P_tk,tk <= P_00 = 1``, and the
2 x 2 minor ``S_ii >= s_i^2`` with the bound constraint gives ``(s_i - lo_i)(s_i - hi_i) <= 0``, so
``S_ii <= (lo_i + hi_i) s_i - lo_i hi_i <= hi_i^2`` (``0 <= lo_i <= hi_i <= 1`` after the scaling). For any
``lambda >= 0``, ``nu`` and ``mu``, with ``M = C + sum lambda_i A_i + sum nu_j F_j - mu E``, every feasible ``P``
satisfies ``<C, P> >= <M, P> + mu >= mu + T min(0, lambda_min(M))``, so ::

    SDP optimum >= mu + T min(0, lambda_min(M))

holds at EVERY multiplier: an optimisation stopped after one step, or any number of them, still gives a valid
(looser) bound. With ``tr(P) <= T`` implied, this dual has the SDP's optimum as its supremum (zero duality gap under
Slater's condition, which a moment matrix of points spread over the network's graph satisfies).

Algorithm: the multipliers start at a closed-form dual point that gives the interval bound of the last layer
(each ``t_k`` in ``[-1, 1]``, each ``s_i`` in ``[lo_i, hi_i]``, exactly as the 1-D S-lemma gives it) and follow
projected Adam ascent on the bound, the step size decaying linearly to 0; its supergradient in a multiplier is
``T <A_i, v v^T>`` (and ``1 - T v_0^2`` for ``mu``) with ``v`` the unit eigenvector of ``lambda_min(M)`` when it is
negative (Overton 1992). Each multiplier's step is scaled by its natural size (:func:`_scales`). During the
iterations ``v`` and ``lambda_min`` are estimated by :data:`LANCZOS_STEPS` Lanczos steps warm-started from the last
``v``, using the structure of ``M`` (its ``t`` block is diagonal, so a product with ``M`` costs two products with
``w``); all (example, row) pairs are iterated together, padded with zero rows (which only add zero eigenvalues and
so do not change ``min(0, lambda_min(M))``) to a fixed size, so that an example's bound does not depend on the
batch (CERT-10). The last iterate is certified, its ``mu`` first replaced by the exact maximiser over ``mu``
(:func:`best_mu`). (Keeping each row's iterate of best estimate instead was worse: mid-run Lanczos estimates
overstate the bound, and the largest overstatement wins.)

Certified value (:func:`certified_min_eigenvalue`): at the final multipliers ``M`` is formed densely in float64,
``sigma`` is ``torch.linalg.eigvalsh``'s smallest eigenvalue less a margin, and ``lambda_min(M) >= sigma - delta``
is PROVEN by a float64 Cholesky factorisation of ``M - sigma I`` that runs to completion, with ``delta`` Demmel's
backward-error bound of Cholesky (``|dA_ij| <= gamma_{n+1} / (1 - gamma_{n+1}) sqrt(a_ii a_jj)``, so
``||dA||_2 <= gamma_{n+1} / (1 - gamma_{n+1}) tr(A)``; Higham 2002, Thm 10.3 and Sec. 10.1.1; Rump 2006) plus the
rounding of ``M``'s entries and of the shift (an entrywise bound ``gamma_K |.|`` of each sum, Higham Sec. 3.1). The
reported bound also loses the rounding of ``mu + T lambda + const``. The SDP's data (``w``, ``b``, the costs) are
float64 numbers computed exactly from the float32 network up to a few float64 roundings each, far below the float32
widening of the intermediate bounds; the bound is rigorous for the SDP on those data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

__all__ = ["DUAL", "DualResult", "sdp_fo", "certified_min_eigenvalue", "dense_dual_matrix"]

DUAL = "dual"  # the solver status of a first-order dual bound: sound, not necessarily the SDP's optimum
LANCZOS_STEPS = 32  # Krylov dimension of the eigenvalue estimate per iteration
_EPS = float(np.finfo(np.float64).eps) / 2  # unit roundoff u of float64
_TINY = 1e-30
_NAMES = ("mu", "alpha", "lam0", "lam1", "nu", "beta", "gamma")
_SIGNED = ("mu", "nu")  # free multipliers; the rest are projected onto >= 0


@dataclass(frozen=True)
class DualResult:
    """Bounds of the rows of several relaxations.

    Args:
        lower: the certified lower bound of each row's SDP optimum (with the objective's constant), ``-inf`` if
            the eigenvalue could not be certified; ``(E, S)`` float64.
        estimate: the last iteration's (uncertified) estimate of the same bound, ``(E, S)``.
        steps: the iterations run (fewer than asked when ``time_limit`` stopped them).
        seconds: wall time.
    """

    lower: np.ndarray
    estimate: np.ndarray
    steps: int
    seconds: float


class _Data:
    """The relaxations padded to common ``d`` and ``m``, with ``S`` rows each, as tensors on ``device``.

    Shapes:
        w (E, m, d); b, lo, hi, mask_s (E, m); mask_t, q, g (E, d); h, trace (E,);
        cost_s (E, S, m), cost_t (E, S, d), const (E, S).
    """

    def __init__(self, relaxations: Sequence, costs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *,
                 dtype: torch.dtype, device: torch.device, pad: tuple[int, int] | None = None) -> None:
        e = len(relaxations)
        self.dims = [(r.w.shape[1], r.w.shape[0]) for r in relaxations]  # (d, m) of each
        d, m = max(k[0] for k in self.dims), max(k[1] for k in self.dims)
        if pad is not None:
            if pad[0] < d or pad[1] < m:
                raise ValueError(f"pad must be at least the largest (d, m) = {(d, m)}, got {pad}")
            d, m = pad
        s = costs[0][0].shape[0]
        arrays = {k: np.zeros(shape) for k, shape in (
            ("w", (e, m, d)), ("b", (e, m)), ("lo", (e, m)), ("hi", (e, m)), ("mask_s", (e, m)), ("mask_t", (e, d)),
            ("q", (e, d)), ("g", (e, d)), ("h", (e,)), ("has_ball", (e,)), ("cost_s", (e, s, m)),
            ("cost_t", (e, s, d)), ("const", (e, s)))}
        for i, (rel, (cost_s, cost_t, const)) in enumerate(zip(relaxations, costs)):
            di, mi = self.dims[i]
            arrays["w"][i, :mi, :di] = rel.w
            for key, value in (("b", rel.b), ("lo", rel.s_lo), ("hi", rel.s_hi), ("mask_s", 1.0)):
                arrays[key][i, :mi] = value
            arrays["mask_t"][i, :di] = 1.0
            if rel.ball is not None:
                arrays["q"][i, :di], arrays["g"][i, :di], arrays["h"][i] = rel.ball
                arrays["has_ball"][i] = 1.0
            arrays["cost_s"][i, :, :mi], arrays["cost_t"][i, :, :di], arrays["const"][i] = cost_s, cost_t, const
        for key, value in arrays.items():
            setattr(self, key, torch.as_tensor(value, dtype=dtype, device=device))
        self.trace = torch.as_tensor([trace_bound(r) for r in relaxations], dtype=dtype, device=device)
        self.shape = (e, s, d, m)


def trace_bound(relaxation) -> float:
    """``T = 1 + d + sum hi_i^2`` bounds ``tr(P)`` on the SDP's feasible set (module docstring), rounded up."""
    m, d = relaxation.w.shape
    total = 1.0 + d + float(np.sum(np.maximum(relaxation.s_hi, relaxation.s_lo) ** 2))
    return total * (1.0 + 4 * (m + 2) * _EPS)


def _pieces(data: _Data, lam: dict[str, Tensor]) -> dict[str, Tensor]:
    """The blocks of ``M``: ``m00`` (E, S), ``m0t`` (E, S, d), ``m0s`` (E, S, m), diagonals ``dt``, ``ds``; the
    ``s``-``t`` block is ``-nu_i w_ik / 2``."""
    b, lo, hi = data.b[:, None], data.lo[:, None], data.hi[:, None]
    m00 = (-lam["alpha"].sum(-1) + (lam["lam1"] * b).sum(-1) + (lam["beta"] * lo * hi).sum(-1)
           + lam["gamma"] * data.h[:, None] - lam["mu"])
    m0t = (data.cost_t + torch.bmm(lam["lam1"], data.w) + lam["gamma"][..., None] * data.g[:, None]) / 2
    m0s = (data.cost_s - lam["lam0"] - lam["lam1"] - lam["nu"] * b - lam["beta"] * (lo + hi)) / 2
    dt = lam["alpha"] + lam["gamma"][..., None] * data.q[:, None]
    ds = lam["nu"] + lam["beta"]
    return {"m00": m00, "m0t": m0t, "m0s": m0s, "dt": dt, "ds": ds, "nu": lam["nu"]}


def _matvec(data: _Data, pieces: dict[str, Tensor], v: Tensor) -> Tensor:
    """``M v`` for ``v`` (E, S, n), using the diagonal ``t`` block: two batched products with ``w``."""
    _, _, d, _ = data.shape
    v0, vt, vs = v[..., 0], v[..., 1 : 1 + d], v[..., 1 + d :]
    wvt = torch.bmm(vt, data.w.transpose(1, 2))  # (E, S, d) -> (E, S, m)
    wnv = torch.bmm(pieces["nu"] * vs, data.w)  # (E, S, m) -> (E, S, d)
    out0 = pieces["m00"] * v0 + (pieces["m0t"] * vt).sum(-1) + (pieces["m0s"] * vs).sum(-1)
    outt = pieces["m0t"] * v0[..., None] + pieces["dt"] * vt - wnv / 2
    outs = pieces["m0s"] * v0[..., None] + pieces["ds"] * vs - pieces["nu"] * wvt / 2
    return torch.cat([out0[..., None], outt, outs], dim=-1)


def _lanczos(data: _Data, pieces: dict[str, Tensor], start: Tensor, steps: int) -> tuple[Tensor, Tensor, Tensor]:
    """The smallest Ritz value (an upper estimate of ``lambda_min(M)``), its unit Ritz vector, and the largest
    absolute Ritz value (an estimate of ``||M||_2``) after ``steps`` Lanczos steps from ``start`` (E, S, n): each
    step the three-term recurrence, then one pass of full reorthogonalisation against the whole basis (Paige
    1972; a second pass, as before, took a quarter more time, and its mean bound on 7 MNIST images of a 784-100-10
    net at eps 0.1 was 1% higher, 2.310 against 2.285); a breakdown leaves zero vectors, whose Ritz values are 0
    and so never lower ``min(0, lambda)``. Only the estimate and the search direction depend on it: the bound is
    certified from the final multipliers alone."""
    k = min(steps, start.shape[-1])
    basis = start.new_zeros((*start.shape[:-1], k, start.shape[-1]))  # (E, S, k, n), filled a row per step
    basis[..., 0, :] = start / start.norm(dim=-1, keepdim=True).clamp_min(_TINY)
    alphas: list[Tensor] = []
    betas: list[Tensor] = []
    tol = math.sqrt(torch.finfo(start.dtype).eps)  # a smaller residual is a breakdown: the Krylov space is invariant
    for j in range(k):
        q = basis[..., j, :]
        z = _matvec(data, pieces, q)
        size = z.norm(dim=-1)
        alphas.append((q * z).sum(-1))
        z = z - alphas[-1][..., None] * q  # the three-term recurrence first ...
        if betas:
            z = z - betas[-1][..., None] * basis[..., j - 1, :]
        stack = basis[..., : j + 1, :]  # (E, S, j + 1, n)
        # ... then one pass of full reorthogonalisation (Paige); products and sums rather than einsum or bmm,
        # whose kernels depend on the batch size or are slower for these matrix-vector shapes (CERT-10)
        z = z - ((stack * z[..., None, :]).sum(-1)[..., None] * stack).sum(-2)
        if j + 1 < k:
            norm = z.norm(dim=-1)
            live = norm > tol * size.clamp_min(_TINY)
            betas.append(torch.where(live, norm, torch.zeros_like(norm)))
            basis[..., j + 1, :] = torch.where(live[..., None], z / norm[..., None].clamp_min(_TINY),
                                               torch.zeros_like(z))
    tri = torch.diag_embed(torch.stack(alphas, -1))
    if betas:
        off = torch.stack(betas, -1)
        tri = tri + torch.diag_embed(off, 1) + torch.diag_embed(off, -1)
    theta, vecs = torch.linalg.eigh(tri)
    v = (vecs[..., 0][..., None] * basis).sum(-2)
    return theta[..., 0], v / v.norm(dim=-1, keepdim=True).clamp_min(_TINY), theta.abs().amax(-1)


def _forms(data: _Data, v: Tensor) -> dict[str, Tensor]:
    """``<A_i, v v^T>`` of every constraint at the unit vectors ``v`` (E, S, n): the supergradient directions."""
    _, _, d, _ = data.shape
    v0, vt, vs = v[..., 0], v[..., 1 : 1 + d], v[..., 1 + d :]
    b, lo, hi = data.b[:, None], data.lo[:, None], data.hi[:, None]
    wvt = torch.bmm(vt, data.w.transpose(1, 2))  # (E, S, m)
    v00 = (v0 * v0)[..., None]
    return {
        "mu": -(v0 * v0),
        "alpha": (vt * vt - v00) * data.mask_t[:, None],
        "lam0": -v0[..., None] * vs,
        "lam1": v0[..., None] * wvt + b * v00 - v0[..., None] * vs,
        "nu": vs * vs - vs * wvt - b * v0[..., None] * vs,
        "beta": vs * vs - (lo + hi) * v0[..., None] * vs + lo * hi * v00,
        "gamma": ((data.q[:, None] * vt * vt).sum(-1) + v0 * (data.g[:, None] * vt).sum(-1)
                  + data.h[:, None] * v0 * v0) * data.has_ball[:, None],
    }


def _initial(data: _Data) -> dict[str, Tensor]:
    """A dual point of the interval bound: ``alpha_k = |cost_t,k| / 2``, ``beta_i = |cost_s,i| / (hi_i - lo_i)``,
    the other inequality multipliers 0, and ``mu`` the Schur complement of the resulting arrowhead ``M`` at 0
    (then ``lambda_min(M) = 0`` and the bound is ``-||cost_t||_1 + sum_i min(cost_s,i lo_i, cost_s,i hi_i)``)."""
    e, s, d, m = data.shape
    zeros = data.cost_s.new_zeros((e, s, m))
    alpha = data.cost_t.abs() / 2
    width = (data.hi - data.lo).clamp_min(1e-6)[:, None]
    beta = data.cost_s.abs() / width
    lam = {"alpha": alpha, "lam0": zeros, "lam1": zeros.clone(), "nu": zeros.clone(), "beta": beta,
           "gamma": data.cost_s.new_zeros((e, s)), "mu": data.cost_s.new_zeros((e, s))}
    p = _pieces(data, lam)
    schur = (p["m0t"] ** 2 / alpha.clamp_min(_TINY)).sum(-1) + (p["m0s"] ** 2 / beta.clamp_min(_TINY)).sum(-1)
    lam["mu"] = p["m00"] - schur
    return lam


def _scales(data: _Data) -> dict[str, Tensor]:
    """The size of each multiplier's Adam step (times ``step_size``): ``c``, the row's largest cost, for ``mu`` and
    ``gamma``; ``|cost_s,i| + c / 100`` for the multipliers of ReLU ``i`` (a barely unstable ReLU has a small cost
    but large scaled weights, and a large step on its multipliers couples every input); for ``alpha`` a floor
    ``|cost_t,k| / 2 + c / 1000``, the step being relative, ``max(alpha_k, floor)``, so that one step cannot
    remove the diagonal of the t block."""
    c = torch.cat([data.cost_s.abs(), data.cost_t.abs(), data.cost_s.new_zeros((*data.cost_s.shape[:2], 1))],
                  -1).amax(-1).clamp_min(_TINY)  # (E, S)
    unit = data.cost_s.abs() + c[..., None] / 100
    return {"mu": c, "gamma": c, "alpha": data.cost_t.abs() / 2 + c[..., None] / 1000, "lam0": unit, "lam1": unit,
            "nu": unit, "beta": unit}


def _start_vectors(data: _Data) -> Tensor:
    """Seeded Gaussian vectors (E, S, n) that start Lanczos and keep it from breaking down, drawn per example on
    its own coordinates so that an example's bound does not depend on the others in the batch."""
    e, s, d, m = data.shape
    out = data.w.new_zeros((e, s, 1 + d + m))
    for i, (di, mi) in enumerate(data.dims):
        draw = torch.randn((s, 1 + di + mi), generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        out[i, :, : 1 + di] = draw[:, : 1 + di].to(out)
        out[i, :, 1 + d : 1 + d + mi] = draw[:, 1 + di :].to(out)
    return out


def sdp_fo(relaxations: Sequence, costs: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]], *, steps: int,
           step_size: float, time_limit: float | None = None, device: torch.device | str = "cpu",
           dtype: torch.dtype = torch.float32, pad: tuple[int, int] | None = None) -> DualResult:
    """Certified lower bounds of ``min cost_s . s + cost_t . t + const`` over the SDP of each relaxation, per row.

    Args:
        relaxations: ``E`` :class:`~trustlab.certify.sdp.SDPRelaxation` (each with at least one relaxed ReLU or
            an l_2 constraint).
        costs: per relaxation ``(cost_s (S, m), cost_t (S, d), const (S,))``, the same ``S`` for all.
        steps: Adam iterations (0: the initial interval dual point, certified).
        step_size: Adam's step, relative to each multiplier's natural size (:func:`_scales`).
        time_limit: stop the iterations after this many seconds (the bound stays sound), or None.
        device, dtype: where and in what precision to iterate; the certificate is always float64 on the CPU.
        pad: the ``(d, m)`` every relaxation is padded to (at least the largest), or None for the largest. With
            the same ``pad`` (the network's input and hidden sizes) every product has the same shape whatever the
            batch, so an example's bound does not depend on the examples beside it (CERT-10).

    Returns:
        :class:`DualResult` with ``(E, S)`` bounds.

    Reference:
        Dathathri et al., "Enabling certification of verification-agnostic networks via memory-efficient
        semidefinite programming", NeurIPS 2020, arXiv:2010.11645, Sec. 3-4 (SDP-FO); Raghunathan, Steinhardt &
        Liang 2018, arXiv:1811.01057 (the SDP).

    Guarantee:
        ``lower`` is at most the SDP's optimum for every number of steps (module docstring), up to the float64
        rounding of the SDP's data.
    """
    tic = time.perf_counter()
    data = _Data(relaxations, costs, dtype=dtype, device=torch.device(device), pad=pad)
    e, s, d, m = data.shape
    lam = _initial(data)
    scale = _scales(data)
    masks = {"alpha": data.mask_t[:, None], "lam0": data.mask_s[:, None], "lam1": data.mask_s[:, None],
             "nu": data.mask_s[:, None], "beta": data.mask_s[:, None], "gamma": data.has_ball[:, None]}
    moment = {k: torch.zeros_like(v) for k, v in lam.items()}
    second = {k: torch.zeros_like(v) for k, v in lam.items()}
    noise = _start_vectors(data)
    v = noise.clone()
    floor = 16 * torch.finfo(dtype).eps
    estimate = torch.full((e, s), -math.inf, dtype=dtype, device=data.w.device)
    beta1, beta2, adam_eps = 0.9, 0.999, 1e-12
    done = 0
    for it in range(1, steps + 1):
        if time_limit is not None and time.perf_counter() - tic > time_limit:
            break
        pieces = _pieces(data, lam)
        theta, v, norm = _lanczos(data, pieces, v + 1e-3 * noise, LANCZOS_STEPS)
        negative = (theta < -floor * norm).to(dtype)  # a sign that rounding cannot have made
        estimate = lam["mu"] + data.trace[:, None] * torch.clamp(theta, max=0.0) + data.const
        forms = _forms(data, v)
        weight = data.trace[:, None] * negative
        rate = step_size * (1.0 - (it - 1) / steps)  # linear decay to 0
        for k in _NAMES:
            w = weight if forms[k].dim() == 2 else weight[..., None]
            grad = forms[k] * w + (1.0 if k == "mu" else 0.0)
            moment[k].mul_(beta1).add_(grad, alpha=1 - beta1)
            second[k].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            mhat, vhat = moment[k] / (1 - beta1**it), second[k] / (1 - beta2**it)
            size = torch.maximum(lam[k], scale[k]) if k == "alpha" else scale[k]
            lam[k] = lam[k] + rate * size * mhat / (vhat.sqrt() + adam_eps)
            if k not in _SIGNED:
                lam[k] = lam[k].clamp_min(0.0)
            if k in masks:
                lam[k] = lam[k] * masks[k]
        done = it
    lower = np.full((e, s), -math.inf)
    for i, (rel, cost) in enumerate(zip(relaxations, costs)):
        for r in range(s):
            row = {k: v[i, r].double().cpu() for k, v in lam.items()}  # float32 -> float64 is exact
            lower[i, r] = certified_bound(rel, cost[0][r], cost[1][r], float(cost[2][r]), row)
    return DualResult(lower=lower, estimate=estimate.double().cpu().numpy(), steps=done,
                      seconds=time.perf_counter() - tic)


def certified_bound(relaxation, cost_s: np.ndarray, cost_t: np.ndarray, const: float,
                    lam: dict[str, Tensor]) -> float:
    """The rigorous ``mu + T min(0, lambda_min(M)) + const`` in float64 at the multipliers ``lam`` (padded
    entries beyond the relaxation's ``d`` and ``m`` are ignored), from the relaxation's float64 data."""
    m, d = relaxation.w.shape
    lam = {k: v[:d] if k == "alpha" else v[:m] if v.dim() == 1 else v for k, v in lam.items()}
    data = [torch.as_tensor(a, dtype=torch.float64) for a in (relaxation.w, relaxation.b, relaxation.s_lo,
                                                                relaxation.s_hi, cost_s, cost_t)]
    if relaxation.ball is None:
        ball = (torch.zeros(d, dtype=torch.float64), torch.zeros(d, dtype=torch.float64), 0.0)
        lam["gamma"] = torch.zeros((), dtype=torch.float64)
    else:
        q, g, h = relaxation.ball
        ball = (torch.as_tensor(q, dtype=torch.float64), torch.as_tensor(g, dtype=torch.float64), float(h))
    w, b, lo, hi, cs, ct = data
    trace = trace_bound(relaxation)
    matrix, _ = dense_dual_matrix(w, b, lo, hi, ball, cs, ct, lam)
    if not bool(torch.isfinite(matrix).all()):
        return -math.inf
    mu, sigma = best_mu(matrix, float(lam["mu"]), trace)
    lam["mu"] = torch.tensor(mu, dtype=torch.float64)
    matrix, error = dense_dual_matrix(w, b, lo, hi, ball, cs, ct, lam)
    lam_min = min(0.0, certified_min_eigenvalue(matrix, error, estimate=sigma))
    value = mu + trace * lam_min + const
    if not math.isfinite(value):
        return -math.inf
    return value - 16 * _EPS * (abs(mu) + trace * abs(lam_min) + abs(const))  # the rounding of this sum


def dense_dual_matrix(w: Tensor, b: Tensor, lo: Tensor, hi: Tensor, ball: tuple[Tensor, Tensor, float],
                      cost_s: Tensor, cost_t: Tensor, lam: dict[str, Tensor]) -> tuple[Tensor, float]:
    """``M = C + sum lambda_i A_i + sum nu_j F_j - mu E`` in float64 (order ``1 + d + m``) and a bound on the
    spectral norm of its rounding error: each entry is a sum of at most ``K = d + 2m + 4`` rounded products, so
    its error is at most ``gamma_{K+1}`` times the same sum of absolute values (Higham 2002, eq. 3.5), and
    ``||dM||_2 <= ||dM||_F``."""
    m, d = w.shape
    q, g, h = ball
    n = 1 + d + m

    def build(f):  # the same sums with every term mapped by f (identity, or abs for the error bound)
        out = torch.zeros((n, n), dtype=torch.float64)
        out[0, 0] = (f(-lam["alpha"]).sum() + f(lam["lam1"] * b).sum() + f(lam["beta"] * lo * hi).sum()
                     + f(lam["gamma"] * h) + f(-lam["mu"]))
        m0t = (f(cost_t) + f(lam["lam1"][:, None] * w).sum(0) + f(lam["gamma"] * g)) / 2
        m0s = (f(cost_s) + f(-lam["lam0"]) + f(-lam["lam1"]) + f(-lam["nu"] * b) + f(-lam["beta"] * (lo + hi))) / 2
        out[0, 1 : 1 + d], out[1 : 1 + d, 0] = m0t, m0t
        out[0, 1 + d :], out[1 + d :, 0] = m0s, m0s
        idx_t, idx_s = torch.arange(1, 1 + d), torch.arange(1 + d, n)
        out[idx_t, idx_t] = f(lam["alpha"]) + f(lam["gamma"] * q)
        out[idx_s, idx_s] = f(lam["nu"]) + f(lam["beta"])
        st = f(-lam["nu"][:, None] * w) / 2
        out[1 + d :, 1 : 1 + d], out[1 : 1 + d, 1 + d :] = st, st.T
        return out

    matrix = build(lambda t: t)
    absolute = build(lambda t: t.abs())
    k = d + 2 * m + 5
    gamma = k * _EPS / (1 - k * _EPS)
    return matrix, float(gamma * (1 + gamma) * torch.linalg.matrix_norm(absolute))


def best_mu(matrix: Tensor, mu: float, trace: float) -> tuple[float, float]:
    """The ``mu`` that maximises ``mu + T min(0, lambda_min(M))`` with the other multipliers fixed, and the
    ``lambda_min = sigma`` it gives (a polish of the last iterate; any ``mu`` is sound).

    With ``M = [[a - mu, b^T], [b, R]]`` and ``R = U diag(r) U^T``, ``M - sigma I`` is PSD and singular for
    ``sigma < r_1`` exactly when ``mu = a - sigma - sum_j c_j / (r_j - sigma)``, ``c = (U^T b)^2``; the bound
    ``a + (T - 1) sigma - sum_j c_j / (r_j - sigma)`` is concave in ``sigma <= min(0, r_1)`` and its maximiser is
    found by bisection on its derivative.
    """
    a = float(matrix[0, 0]) + mu
    r, u = torch.linalg.eigh(matrix[1:, 1:])
    c = (u.T @ matrix[1:, 0]) ** 2

    def slope(sigma: float) -> float:
        return (trace - 1) - float((c / (r - sigma) ** 2).sum())

    top = min(0.0, float(r[0]))
    if float(r[0]) > 0 and slope(0.0) >= 0:
        sigma = 0.0
    else:
        low = top - math.sqrt(float(c.sum()) / (trace - 1)) - 1e-12 * (1 + abs(top))  # slope(low) >= 0
        high = top
        for _ in range(100):
            mid = (low + high) / 2
            if mid in (low, high):
                break
            low, high = (mid, high) if slope(mid) > 0 else (low, mid)
        sigma = low
    return a - sigma - float((c / (r - sigma)).sum()), sigma


def certified_min_eigenvalue(matrix: Tensor, error: float = 0.0, *, estimate: float | None = None,
                             tries: int = 6) -> float:
    """A proven lower bound of ``lambda_min`` of the exact symmetric matrix that ``matrix`` (float64) approximates
    within ``error`` in spectral norm, or ``-inf``.

    ``sigma = eigvalsh(matrix)[0] - margin``; if a float64 Cholesky factorisation of the computed ``A = matrix -
    sigma I`` runs to completion, then ``A + dA = R^T R >= 0`` with ``||dA||_2 <= c tr(A)``,
    ``c = gamma_{n+1} / (1 - gamma_{n+1})`` (Demmel 1989; Higham 2002, Thm 10.3 and eq. 10.8; Rump 2006), so
    ``lambda_min(matrix) >= sigma - c tr(A) - (rounding of the shift)``; on failure the margin grows tenfold.
    """
    n = matrix.shape[0]
    if not bool(torch.isfinite(matrix).all()) or not math.isfinite(error):
        return -math.inf  # (LAPACK may not return on NaN)
    matrix = (matrix + matrix.T) / 2  # exact for a symmetric matrix
    scale = float(torch.linalg.matrix_norm(matrix)) + _TINY
    c = (n + 1) * _EPS / (1 - (n + 1) * _EPS)
    c = c / (1 - c)
    eye = torch.eye(n, dtype=torch.float64)
    guesses = ([estimate] if estimate is not None and math.isfinite(estimate) else []) + [None]
    for guess in guesses:
        lam = float(torch.linalg.eigvalsh(matrix)[0]) if guess is None else guess
        margin = (n + 1) * 4 * _EPS * scale
        for _ in range(tries):
            sigma = lam - margin
            shifted = matrix - sigma * eye
            _, info = torch.linalg.cholesky_ex(shifted)
            if int(info) == 0:
                diag = shifted.diagonal()
                shift_error = _EPS / (1 - _EPS) * float(diag.abs().max())  # fl(a_ii - sigma), one rounding each
                return sigma - c * float(diag.sum()) * (1 + 2 * _EPS * n) - shift_error - error
            margin *= 10
    return -math.inf
