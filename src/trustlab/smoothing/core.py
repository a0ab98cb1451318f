"""Randomized smoothing: PREDICT and CERTIFY of Cohen et al. (2019), batched over inputs and noise samples.

The smoothed classifier is ``g(x) = argmax_c P(f(x + e) = c)`` for a base classifier ``f`` and noise ``e``
(Gaussian by default; uniform and Laplace in :mod:`trustlab.smoothing.noises`). ``g`` cannot be evaluated exactly,
so PREDICT and CERTIFY estimate it by Monte Carlo and may abstain (:data:`ABSTAIN`).

Batching. The ``N * num`` noisy copies of a batch of ``N`` inputs form one stream (input-major) that is cut into
forward batches of ``batch_size`` rows, so a batch mixes inputs and fills the device. The noise of stream row
``r`` comes from block ``r // NOISE_BLOCK``, drawn from its own generator seeded by ``(root, block)``; ``root`` is
one draw from the caller's ``generator`` per sampling phase. Noise therefore depends on the seed and the row, never
on ``batch_size``: counts are batch-invariant (RS-09), and selection and estimation use independent draws.
Each forward batch is written into one reused buffer (noise drawn in place, ``x`` added by broadcasting), so
no noisy batch is allocated or gathered per pass; ``benchmarks/smoothing_throughput.py`` measures what is left over the
forward passes.

Noise is added to ``x`` as given, which for trustlab models are [0, 1] pixels (normalization lives inside the
model), so radii are in pixel space (RS-08). Nothing is clipped: the guarantee is about ``g`` as defined.

Reference:
    Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
    arXiv:1902.02918 (Sec. 3.2, the PREDICT and CERTIFY pseudocode; reference code ``locuslab/smoothing``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor, nn

from trustlab.attacks.base import eval_mode
from trustlab.progress import progress_bar
from trustlab.seeding import derive_seed
from trustlab.smoothing.noises import Noise, make_noise
from trustlab.smoothing.stats import check_alpha, clopper_pearson_lower, predict_pvalue
from trustlab.validation import check_positive_int

__all__ = ["ABSTAIN", "NOISE_BLOCK", "DEFAULT_BATCH_SIZE", "SmoothedClassifier", "Certification", "Prediction",
           "sample_counts", "certify_from_counts", "predict_from_counts"]

ABSTAIN = -1  # the class PREDICT and CERTIFY return when they abstain
NOISE_BLOCK = 512  # noisy rows per seeded noise block (see the module docstring)
DEFAULT_BATCH_SIZE = 1000

Base = Callable[[Tensor], Tensor]


@dataclass(frozen=True)
class Certification:
    """CERTIFY's answer for each of ``N`` inputs (numpy arrays).

    Args:
        prediction: ``cA`` or :data:`ABSTAIN`, (N,) int64.
        pA_lower: the one-sided ``(1 - alpha)`` Clopper-Pearson lower bound on ``P(f(x + e) = cA)``, (N,).
        radius: the certified radius in the noise's norm ``p`` (0 when abstaining), (N,).
        counts_selection: class counts of the ``n0`` selection samples, (N, K).
        counts_estimation: class counts of the ``n`` estimation samples, (N, K).
        p: the norm of ``radius`` (2.0 for Gaussian noise, 1.0 for uniform and Laplace).
    """

    prediction: np.ndarray
    pA_lower: np.ndarray
    radius: np.ndarray
    counts_selection: np.ndarray
    counts_estimation: np.ndarray
    p: float


@dataclass(frozen=True)
class Prediction:
    """PREDICT's answer for each of ``N`` inputs: ``prediction`` (the top class or :data:`ABSTAIN`, (N,) int64),
    ``pvalue`` of the two-sided binomial test of the top two counts, (N,), and the class ``counts``, (N, K)."""

    prediction: np.ndarray
    pvalue: np.ndarray
    counts: np.ndarray


class _NoiseStream:
    """Noise rows ``0, 1, 2, ...`` of one sampling phase; row ``r`` is row ``r % NOISE_BLOCK`` of block
    ``r // NOISE_BLOCK``, drawn from a generator seeded by ``(root, block)``.

    :meth:`fill` writes the next rows into a caller's buffer: a block that falls wholly inside it is drawn there in
    place, and only a block cut by the buffer's end is drawn into ``spare`` and copied from (its rest is kept for
    the next call). Both paths run the same ``Noise.sample_`` on a contiguous ``(NOISE_BLOCK, *D)`` tensor, so the
    values do not depend on how the rows are cut.
    """

    def __init__(self, noise: Noise, shape: tuple[int, ...], root: int, x: Tensor) -> None:
        self.noise, self.root = noise, root
        self.spare = x.new_empty((NOISE_BLOCK, *shape))
        self.block, self.used = 0, NOISE_BLOCK  # next block to draw; rows of ``spare`` already handed out

    def _draw(self, out: Tensor) -> None:
        g = torch.Generator(device=out.device).manual_seed(derive_seed(self.root, self.block))
        self.noise.sample_(out, generator=g)
        self.block += 1

    def fill(self, out: Tensor) -> None:
        """Overwrite ``out`` ``(m, *D)`` (contiguous) with the next ``m`` noise rows."""
        m, i = len(out), 0
        while i < m:
            if self.used < NOISE_BLOCK:  # rows left over from a cut block
                k = min(NOISE_BLOCK - self.used, m - i)
                out[i:i + k].copy_(self.spare[self.used:self.used + k])
                self.used, i = self.used + k, i + k
            elif m - i >= NOISE_BLOCK:  # a whole block fits: draw it in place
                self._draw(out[i:i + NOISE_BLOCK])
                i += NOISE_BLOCK
            else:
                self._draw(self.spare)
                self.used = 0


def _add_owners(out: Tensor, x: Tensor, start: int, num: int) -> None:
    """``out[j] += x[(start + j) // num]``: the stream rows ``start, start + 1, ...`` are ``num`` copies of each
    input in turn, added by broadcasting (at most three ops: a head, the whole inputs, a tail) instead of
    gathering ``x[owner]``."""
    m, j = len(out), 0
    while j < m:
        i, offset = divmod(start + j, num)
        if offset == 0 and m - j >= num:  # whole inputs i, i + 1, ...: one broadcast add
            k = (m - j) // num
            out[j:j + k * num].view(k, num, *x.shape[1:]).add_(x[i:i + k, None])
            j += k * num
        else:
            k = min(num - offset, m - j)
            out[j:j + k].add_(x[i])
            j += k


def _check_x(x: object) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        got = f"shape {tuple(x.shape)} {x.dtype}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"x must be a non-empty floating-point batch (N, *D), got {got}")
    if not torch.isfinite(x).all():
        raise ValueError("x must be finite, got NaN or Inf values")
    return x


def _check_generator(generator: object) -> torch.Generator:
    if not isinstance(generator, torch.Generator):
        raise ValueError(f"generator must be a torch.Generator (no global RNG), got {type(generator).__name__}")
    return generator


def sample_counts(base: Base, x: Tensor, num: int, noise: Noise, *, num_classes: int, generator: torch.Generator,
                  batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False, desc: str = "noise") -> np.ndarray:
    """``counts[i, c]`` = how many of ``num`` noisy copies ``x[i] + e`` the base classifier assigns to ``c``.

    One phase of Cohen et al.'s ``_sample_noise``: the ``N * num`` copies are classified in forward batches of
    ``batch_size`` rows that mix inputs; the noise is independent of ``batch_size`` (module docstring). Draws one
    value from ``generator`` (the phase's root seed); ``base`` runs in eval mode under ``no_grad``. The batches
    ``base`` sees are views of one reused buffer: it must not keep its input after returning.

    Args:
        base: the base classifier, ``(B, *D) -> (B, num_classes)`` logits; an ``nn.Module`` is put in eval mode and
            its modes restored.
        x: the inputs, ``(N, *D)``, on the device ``base`` runs on.
        num: noisy copies per input.
        noise: the smoothing noise.
        num_classes: ``K``.
        generator: the phase's randomness (any device).
        batch_size: rows per forward pass.
        progress: show a progress bar over forward batches (on a terminal).
        desc: the bar's label.

    Returns:
        ``(N, K)`` int64 counts; each row sums to ``num``.

    Raises:
        ValueError: an invalid argument (named), or logits that are not ``(B, num_classes)``.
    """
    x, generator = _check_x(x), _check_generator(generator)
    num, batch_size = check_positive_int(num, "num"), check_positive_int(batch_size, "batch_size")
    root = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    stream = _NoiseStream(noise, tuple(x.shape[1:]), root, x)
    total = len(x) * num
    counts = torch.zeros(len(x) * num_classes, dtype=torch.int64, device=x.device)
    buffer = x.new_empty((min(batch_size, total), *x.shape[1:]))  # the noisy batch, reused
    starts = range(0, total, batch_size)
    with torch.no_grad(), (eval_mode(base) if isinstance(base, nn.Module) else _nothing()):
        for start in progress_bar(starts, desc=desc, enabled=progress, total=len(starts)):
            noisy = buffer[: min(batch_size, total - start)]
            stream.fill(noisy)  # noise first, then x: x + e and e + x are the same floats
            _add_owners(noisy, x, start, num)
            logits = base(noisy)
            if logits.shape != (len(noisy), num_classes):
                raise ValueError(f"the base classifier must return ({len(noisy)}, {num_classes}) logits, "
                                 f"got {tuple(logits.shape)}")
            owner = torch.arange(start, start + len(noisy), device=x.device) // num  # the input each row copies
            counts += torch.bincount(owner * num_classes + logits.argmax(1), minlength=len(counts))
    return counts.view(len(x), num_classes).cpu().numpy()


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def predict_from_counts(counts: np.ndarray, alpha: float) -> Prediction:
    """PREDICT's decision: the top class, unless the two-sided binomial test of the top two counts ``nA, nB``
    at ``p = 1/2`` has p-value ``> alpha`` (then :data:`ABSTAIN`).

    Guarantee (Cohen et al. 2019, Proposition 1): the probability of returning a class other than ``g(x)`` is
    at most ``alpha``.
    """
    alpha = check_alpha(alpha)
    counts = np.asarray(counts)
    order = np.argsort(-counts, axis=1, kind="stable")[:, :2]  # (N, K) -> (N, 2): top two classes
    c1 = np.take_along_axis(counts, order[:, :1], 1)[:, 0]
    c2 = np.take_along_axis(counts, order[:, 1:2], 1)[:, 0] if counts.shape[1] > 1 else np.zeros_like(c1)
    pvalue = np.array([predict_pvalue(a, b) for a, b in zip(c1, c2)], dtype=np.float64)
    prediction = np.where(pvalue > alpha, ABSTAIN, order[:, 0]).astype(np.int64)
    return Prediction(prediction, pvalue, counts)


def certify_from_counts(counts_selection: np.ndarray, counts_estimation: np.ndarray, alpha: float,
                        noise: Noise) -> Certification:
    """CERTIFY's decision, lines 3-7 of the box: ``cA = argmax counts0``; ``pA_lower = LowerConfBound(counts[cA],
    n, 1 - alpha)``; abstain if ``pA_lower < 1/2``, else return ``cA`` and ``noise.radius(pA_lower)``.

    ``nA`` is the estimation count of the class selected on the selection counts (never the argmax of the
    estimation counts), and the selection counts never enter the bound. At ``pA_lower == 1/2`` the class is
    returned with radius 0, as in the reference code.

    Raises:
        ValueError: the two count arrays differ in shape, or the estimation rows do not share one total ``n``.
    """
    alpha = check_alpha(alpha)
    c0, c = np.asarray(counts_selection), np.asarray(counts_estimation)
    if c0.shape != c.shape or c.ndim != 2:
        raise ValueError(f"selection and estimation counts must both be (N, K), got {c0.shape} and {c.shape}")
    n = c.sum(1)
    if len(n) and not (n == n[0]).all():
        raise ValueError(f"every input needs the same number n of estimation samples, got totals {np.unique(n)}")
    cA = c0.argmax(1)
    nA = np.take_along_axis(c, cA[:, None], 1)[:, 0]
    pA_lower = clopper_pearson_lower(nA, int(n[0]), alpha)
    abstain = pA_lower < 0.5
    radius = np.where(abstain, 0.0, noise.radius(np.where(abstain, 0.5, pA_lower)))
    return Certification(np.where(abstain, ABSTAIN, cA).astype(np.int64), pA_lower, radius, c0, c, noise.p)


@dataclass(frozen=True, eq=False)
class SmoothedClassifier:
    """The smoothed classifier ``g(x) = argmax_c P(f(x + e) = c)`` of a base classifier ``f``.

    Args:
        base: the base classifier, ``(B, *D) -> (B, num_classes)`` logits (any callable; an ``nn.Module`` is run in
            eval mode with its modes restored).
        num_classes: ``K >= 2``.
        sigma: the noise's scale: the standard deviation for Gaussian noise, ``lambda`` for uniform and Laplace.
        noise: ``"gaussian"`` (l_2 radius), ``"uniform"`` or ``"laplace"`` (l_1 radii), or a :class:`Noise`.

    Raises:
        ValueError, TypeError: an invalid ``num_classes``, ``sigma`` or ``noise`` (named).

    Reference:
        Cohen, Rosenfeld & Kolter, ICML 2019, arXiv:1902.02918 (Sec. 3.2); Yang et al., ICML 2020,
        arXiv:2002.08118 (other noises).
    """

    base: Base
    num_classes: int
    sigma: float
    noise: str | Noise = "gaussian"

    def __post_init__(self) -> None:
        check_positive_int(self.num_classes, "num_classes", minimum=2)
        object.__setattr__(self, "noise", make_noise(self.noise, self.sigma))
        object.__setattr__(self, "sigma", self.noise.scale)

    def _counts(self, x: Tensor, num: int, generator: torch.Generator, batch_size: int, progress: bool,
                desc: str) -> np.ndarray:
        return sample_counts(self.base, x, num, self.noise, num_classes=self.num_classes, generator=generator,
                             batch_size=batch_size, progress=progress, desc=desc)

    def predict(self, x: Tensor, n: int, alpha: float, *, generator: torch.Generator,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Prediction:
        """PREDICT (Cohen et al. 2019, Sec. 3.2): draw ``n`` noisy samples of each input, count the base
        classifier's classes, and return the top class ``cA`` unless ``binomtest(nA, nA + nB, 1/2).pvalue > alpha``,
        in which case :data:`ABSTAIN`.

        Args:
            x: inputs ``(N, *D)`` in the threat model's space ([0, 1] pixels for trustlab models).
            n: noise samples per input.
            alpha: the failure probability in ``(0, 1)``.
            generator: the randomness (one draw per call); never the global RNG.
            batch_size: noisy rows per forward pass.
            progress: show a progress bar.

        Returns:
            A :class:`Prediction` per input.

        Raises:
            ValueError, TypeError: an invalid argument (named).

        Guarantee:
            For each input, ``P(prediction not in {g(x), ABSTAIN}) <= alpha`` (Proposition 1).
        """
        check_alpha(alpha)
        counts = self._counts(x, n, generator, batch_size, progress, "predict")
        return predict_from_counts(counts, alpha)

    def certify(self, x: Tensor, n0: int, n: int, alpha: float, *, generator: torch.Generator,
                batch_size: int = DEFAULT_BATCH_SIZE, progress: bool = False) -> Certification:
        """CERTIFY (Cohen et al. 2019, Sec. 3.2), line by line for each input::

            counts0 <- SampleUnderNoise(f, x, n0, sigma)       # selection
            cA <- top index in counts0
            counts <- SampleUnderNoise(f, x, n, sigma)         # estimation, a fresh draw
            pA_lower <- LowerConfBound(counts[cA], n, 1 - alpha)
            if pA_lower < 1/2: return ABSTAIN                   # radius 0
            else: return cA and radius sigma * PhiInv(pA_lower)

        (the radius is the noise's own for uniform and Laplace noise: :mod:`trustlab.smoothing.noises`).

        Args:
            x: inputs ``(N, *D)`` in the threat model's space ([0, 1] pixels for trustlab models).
            n0: selection samples per input.
            n: estimation samples per input.
            alpha: the failure probability in ``(0, 1)``.
            generator: the randomness (one draw per phase); never the global RNG.
            batch_size: noisy rows per forward pass.
            progress: show progress bars.

        Returns:
            A :class:`Certification` per input.

        Raises:
            ValueError, TypeError: an invalid argument (named).

        Guarantee:
            For each input separately (not simultaneously over a dataset), with probability at least ``1 - alpha``
            over the noise, CERTIFY either abstains or returns ``g(x)`` and a radius within which ``g`` is constant
            (Cohen et al. 2019, Proposition 2). Exact arithmetic is assumed: floating point can break it (Voracek &
            Hein, ICLR 2023).
        """
        check_alpha(alpha)
        check_positive_int(n0, "n0")
        check_positive_int(n, "n")
        counts0 = self._counts(x, n0, generator, batch_size, progress, "certify: selection")
        counts = self._counts(x, n, generator, batch_size, progress, "certify: estimation")
        return certify_from_counts(counts0, counts, alpha, self.noise)
