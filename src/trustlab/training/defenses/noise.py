"""Gaussian noise augmentation (Cohen et al. 2019, Sec. 4): train the base classifier of randomized smoothing on
``x + N(0, sigma^2 I)`` at the sigma it will be smoothed with.

Settings are prefixed by the defense's name, as every defense's are: ``noise_sigma = 0.25`` in a recipe,
``--noise-sigma 0.25`` on the command line (``--defense noise --noise-sigma 0.25``), or a ``[train.defense]`` table
with ``sigma = 0.25``. The defense needs no eps (``adversarial = False``).

The per-epoch check measures the *smoothed* classifier, not the base one: PREDICT with ``check_n`` noise samples
at ``check_alpha`` on the validation images (``val_smoothed_acc``, abstentions counted wrong; what ``keep_best``
maximizes), with its abstention rate (``val_smoothed_abstain``) and the base classifier's accuracy on one noisy
draw (``val_noisy_acc``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from trustlab.attacks.base import eval_mode
from trustlab.smoothing import ABSTAIN, SmoothedClassifier
from trustlab.smoothing.stats import check_alpha
from trustlab.threat import LpBall
from trustlab.training.defenses.base import Defense, register_defense
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = ["NoiseAugmentation", "SMOOTHED_METRIC"]

SMOOTHED_METRIC = "val_smoothed_acc"


@register_defense
@dataclass(frozen=True)
class NoiseAugmentation(Defense):
    """``min_theta E_{e ~ N(0, sigma^2 I)}[CE(f(x + e), y)]``, one noise draw per example and step.

    Args:
        sigma: the noise's standard deviation in pixel space (the smoothing sigma), ``> 0``.
        check_n: noise samples per validation image in the per-epoch PREDICT check, ``>= 1``.
        check_alpha: PREDICT's failure probability in the check, in ``(0, 1)``.

    Raises:
        ValueError, TypeError: a value outside its range (named).

    Reference:
        Cohen, Rosenfeld & Kolter, "Certified Adversarial Robustness via Randomized Smoothing", ICML 2019,
        arXiv:1902.02918 (Sec. 4: base classifiers trained with Gaussian data augmentation at sigma).
    """

    name = "noise"
    adversarial = False
    selection_metric = SMOOTHED_METRIC
    sigma: float = 0.25
    check_n: int = 100
    check_alpha: float = 0.001

    def __post_init__(self) -> None:
        object.__setattr__(self, "sigma", check_nonneg_float(self.sigma, "sigma", positive=True))
        check_positive_int(self.check_n, "check_n")
        object.__setattr__(self, "check_alpha", check_alpha(self.check_alpha))

    def loss(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall,
             generator: torch.Generator) -> tuple[Tensor, Tensor]:
        noise = threat.gaussian(x, generator=generator)
        logits = model(x + self.sigma * noise)
        return F.cross_entropy(logits, y), logits

    def validate(self, model: nn.Module, x: Tensor, y: Tensor, *, threat: LpBall, generator: torch.Generator,
                 batch_size: int) -> dict[str, float]:
        """The smoothed classifier's PREDICT accuracy on ``x`` (abstain = wrong), its abstention rate, and the
        base classifier's accuracy on one noisy draw."""
        with torch.no_grad(), eval_mode(model):
            noisy = x + self.sigma * torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
            logits = torch.cat([model(b) for b in noisy.split(batch_size)])
        smoothed = SmoothedClassifier(model, logits.shape[1], self.sigma)
        pred = smoothed.predict(x, self.check_n, self.check_alpha, generator=generator,
                                batch_size=max(batch_size, 1000)).prediction
        y_np = y.cpu().numpy()
        return {SMOOTHED_METRIC: float((pred == y_np).mean()), "val_smoothed_abstain": float((pred == ABSTAIN).mean()),
                "val_noisy_acc": float((logits.argmax(1) == y).float().mean())}
