"""Certified training: descend on a mix of the clean loss and the verified loss of margin lower bounds.

``L = kappa * CE(f(x), y) + (1 - kappa) * CE(-m(x; eps), y)``, where ``m_j <= min_{x' in S(x)} f_y(x') - f_j(x')``
are the margin lower bounds of a bound method (:func:`trustlab.certify.margin_bounds`, zero at ``j = y``), so the
second term upper-bounds the worst-case cross-entropy over the threat set (Wong & Kolter 2018, Gowal et al.
2018). IBP training (:mod:`~trustlab.training.defenses.ibp`) and CROWN-IBP training
(:mod:`~trustlab.training.defenses.crown_ibp`) differ only in ``m``.

Schedules. ``kappa`` moves linearly from ``kappa_start`` to ``kappa`` while eps ramps up (``eps_warmup_epochs``):
at ramp ``r = eps_t / eps``, ``kappa_t = kappa_start + r (kappa - kappa_start)``, and stays at ``kappa`` after.
These defenses set ``ramp_per_step``, so the loop ramps eps (and with it ``kappa_t``, CROWN-IBP's ``beta_t`` and
the warm-up regularizer's weight) linearly at every batch, as the papers do, instead of once per epoch. The papers'
initial phase at ``eps = 0`` (Gowal et al.'s 2,000 clean steps) is not separate here: the ramp starts at the first
batch. Without a warm-up (``eps_warmup_epochs = 0``) every batch trains at the full eps and the final ``kappa``.

Train and eval mode. Bound methods refuse a model in training mode (BatchNorm on batch statistics, Dropout), so
the clean term runs in the loop's train mode (it updates BatchNorm's running statistics) and the bounds in eval
mode: BatchNorm then enters the bounds as the affine map of its running statistics, with gradients to its weight
and bias, not through the batch statistics as in Gowal et al.'s and Zhang et al.'s code. For a network without
BatchNorm and Dropout (``mlp``, ``cnn-small``: the registry's models that the certifiers support) both modes
compute the same function, so this changes nothing.

The per-epoch check (:meth:`CertifiedDefense.validate`) certifies the validation images at the epoch's eps
(``val_verified_acc``, what ``keep_best`` maximizes) and runs PGD-10 on them (``val_pgd_acc``, an upper bound).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trustlab.attacks.base import eval_mode
from trustlab.certify import Network, certify, to_network
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, robust_check
from trustlab.training.defenses.fast_init import DEFAULT_TOL, ibp_initialize, warmup_regularizer
from trustlab.validation import check_nonneg_float

__all__ = ["CertifiedDefense", "Scheduled", "verified_accuracy", "VERIFIED_METRIC", "linear_ramp", "check_unit"]

VERIFIED_METRIC = "val_verified_acc"


def linear_ramp(start: float, end: float, ramp: float) -> float:
    """``start + ramp (end - start)``: a schedule value at ``ramp`` in ``[0, 1]`` of the eps warm-up.

    Raises:
        ValueError: ``ramp`` outside ``[0, 1]``.
    """
    if not 0.0 <= ramp <= 1.0:
        raise ValueError(f"ramp must lie in [0, 1], got {ramp}")
    return start + ramp * (end - start)


def check_unit(value: object, name: str) -> float:
    """``value`` as a float in ``[0, 1]``, else a ValueError naming it."""
    v = check_nonneg_float(value, name)
    if v > 1:
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return v


@dataclass(frozen=True)
class CertifiedDefense(Defense):
    """The shared shape of IBP and CROWN-IBP training (not registered itself; see the module docstring).

    Args:
        kappa: weight of the clean cross-entropy at the end of the eps ramp and after it (Gowal et al.'s
            ``kappa_end``), in ``[0, 1]``.
        kappa_start: its weight at the start of the ramp, in ``[0, 1]``.
        fast_init: Shi et al. (2021)'s fast training: IBP initialization of a new run's weights, and the warm-up
            regularizers weighted by ``fast_reg * (1 - eps_t / eps)`` (:mod:`~trustlab.training.defenses.fast_init`).
            The regularizers act only during an eps warm-up.
        fast_reg: ``lambda_0``, the regularizers' weight at ``eps_t = 0`` (the authors use 0.5).
        fast_tol: ``tau`` of the regularizers, ``> 0``.

    Raises:
        ValueError, TypeError: a value outside its range (named).
    """

    kappa: float = 0.5
    kappa_start: float = 1.0
    fast_init: bool = False
    fast_reg: float = 0.5
    fast_tol: float = DEFAULT_TOL

    selection_metric: ClassVar[str | None] = VERIFIED_METRIC
    ramp_per_step: ClassVar[bool] = True
    reads_layers: ClassVar[bool] = True  # the bounds trace the plain network
    check_methods: ClassVar[tuple[str, ...]] = ("ibp",)  # the bounds the per-epoch check certifies with

    def __post_init__(self) -> None:
        for name in ("kappa", "kappa_start"):
            object.__setattr__(self, name, check_unit(getattr(self, name), name))
        if not isinstance(self.fast_init, bool):
            raise ValueError(f"fast_init must be true or false, got {self.fast_init!r}")
        object.__setattr__(self, "fast_reg", check_nonneg_float(self.fast_reg, "fast_reg"))
        object.__setattr__(self, "fast_tol", check_nonneg_float(self.fast_tol, "fast_tol", positive=True))

    def kappa_at(self, ramp: float) -> float:
        """The clean loss's weight at ``ramp = eps_t / eps``."""
        return linear_ramp(self.kappa_start, self.kappa, ramp)

    def reg_weight_at(self, ramp: float) -> float:
        """The warm-up regularizers' weight ``lambda_0 (1 - ramp)`` (0 without ``fast_init``)."""
        return linear_ramp(self.fast_reg, 0.0, ramp) if self.fast_init else 0.0

    def scaled(self, ramp: float) -> "Scheduled":
        """This defense at ``ramp`` in ``(0, 1]`` of the eps warm-up (1 after it)."""
        linear_ramp(0.0, 1.0, ramp)  # validates ramp
        return Scheduled(self, float(ramp))

    def initialize(self, model: nn.Module, *, generator: torch.Generator) -> None:
        """With ``fast_init``, IBP initialization of the new run's weights; else nothing."""
        if self.fast_init:
            ibp_initialize(model, generator=generator)

    def margin_lower(self, network: Network, x: Tensor, y: Tensor, threat: LpBall, *, ramp: float) -> Tensor:
        """The ``(N, K)`` margin lower bounds the verified loss is computed on (each method defines them)."""
        raise NotImplementedError

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The loss at the end of the ramp (:meth:`loss_at` with ``ramp = 1``)."""
        return self.loss_at(model, x, y, threat=threat, ramp=1.0)

    def loss_at(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
                ramp: float) -> tuple[Tensor, Tensor]:
        """``kappa_t CE(f(x), y) + (1 - kappa_t) CE(-m, y)`` (plus the warm-up regularizers with ``fast_init``).

        Args:
            model: in train mode (the clean term runs in it; the bounds run in eval mode).
            x: the batch in the threat's box, ``(N, *D)``.
            y: labels ``(N,)``.
            threat: the batch's threat (eps of the ramp at this batch).
            ramp: ``eps_t / eps`` in ``[0, 1]``.

        Returns:
            The loss, and ``-m`` as the logits: its argmax is ``y`` exactly when every margin bound is positive,
            so the loop's ``train_acc`` is the verified accuracy on the training batches.

        Shapes:
            x (N, *D), y (N,) -> loss (), logits (N, K).
        """
        kappa, weight = self.kappa_at(ramp), self.reg_weight_at(ramp)
        clean = F.cross_entropy(model(x), y)
        with eval_mode(model):
            network = to_network(model, x)
            lower = self.margin_lower(network, x, y, threat, ramp=ramp)
            reg = weight * warmup_regularizer(network, x, threat, tol=self.fast_tol) if weight > 0 else 0.0
        loss = kappa * clean + (1 - kappa) * F.cross_entropy(-lower, y) + reg
        return loss, -lower

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall, generator: torch.Generator,
                 batch_size: int) -> dict[str, float]:
        """``val_verified_acc`` (certified by any of :attr:`check_methods` at ``threat``) and ``val_pgd_acc``."""
        verified = verified_accuracy(model, x, y, threat, methods=self.check_methods, batch_size=batch_size)
        return {VERIFIED_METRIC: verified,
                **robust_check(model, x, y, threat=threat, generator=generator, batch_size=batch_size)}


@dataclass(frozen=True)
class Scheduled(Defense):
    """A certified defense at one point of its schedule, ``ramp = eps_t / eps``: what
    :meth:`CertifiedDefense.scaled` returns for the loop. Not registered; its loss is
    ``defense.loss_at(..., ramp=ramp)``."""

    defense: CertifiedDefense
    ramp: float

    selection_metric: ClassVar[str | None] = VERIFIED_METRIC

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        return self.defense.loss_at(model, x, y, threat=threat, ramp=self.ramp)

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall, generator: torch.Generator,
                 batch_size: int) -> dict[str, float]:
        return self.defense.validate(model, x, y, threat=threat, generator=generator, batch_size=batch_size)


def verified_accuracy(model: nn.Module, x: Tensor, y: Tensor, threat: LpBall, *, methods: tuple[str, ...],
                      batch_size: int) -> float:
    """The fraction of ``(x, y)`` that at least one of ``methods`` certifies at ``threat`` (each is sound, so the
    union is), with the model in eval mode.

    Raises:
        ValueError: no method, or an unknown one (from :func:`trustlab.certify.certify`).
    """
    if not methods:
        raise ValueError("methods must name at least one bound method")
    certified = torch.zeros(len(x), dtype=torch.bool)
    with eval_mode(model):
        for method in methods:
            certs = certify(model, x, y, threat, method=method, batch_size=batch_size)
            certified |= torch.tensor([c.certified for c in certs], dtype=torch.bool)
    return float(certified.float().mean())
