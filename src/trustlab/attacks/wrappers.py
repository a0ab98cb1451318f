"""Wrappers that let every gradient attack see through randomized models (EOT) and non-differentiable
preprocessing (BPDA), by changing the model the attack differentiates, not the attack.

Both are ``nn.Module`` s: pass ``EOT(model, samples=20)`` or ``BPDA(preprocess, model)`` wherever an attack takes a
model. They hold the model they wrap only as the thing to differentiate; they add no parameters and draw no
randomness of their own (the wrapped model's randomness is its own). :class:`EOTAttack` is the configuration that
runs a configured attack on ``EOT(model, samples)``, for the ensemble's ``rand`` version and the CLI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from trustlab.threat import LpBall
from trustlab.validation import check_positive_int

__all__ = ["EOT", "BPDA", "EOTAttack", "bpda_split", "through_bpda"]


class EOT(nn.Module):
    """Expectation over transformation of the logits: ``forward(x) = (1/k) sum_{i=1..k} f_i(x)``, the mean of
    ``k = samples`` forward passes of a randomized model ``f`` on the same input.

    Its input gradient is the mean of the ``k`` logit gradients, a Monte-Carlo estimate of the gradient of
    ``E[f(x)]`` whose variance falls like ``1/k``; an attack's loss is then taken at the averaged logits. This is
    EOT of the logits. AutoAttack's ``rand`` version averages the gradients of the loss instead (``E[grad L(f(x))]``);
    the two agree to first order and coincide for losses linear in the logits (the margin). Averaging the logits
    is chosen because it works unchanged inside every attack, and the success an attack ranks its iterates by is
    that of the averaged prediction rather than of one draw.

    The wrapper changes no mode: the model's randomness must be active in the mode the attack runs it in.
    Attacks switch the model to eval mode, which turns Dropout off; a model randomized in eval mode (random
    resizing, noise injection) is what EOT is for there. Called directly on a model in training mode, EOT
    averages over Dropout draws as well.

    Args:
        model: the randomized classifier, mapping ``(N, *D)`` to logits ``(N, K)``.
        samples: ``k``, forward passes per call (``>= 1``); one call costs ``k`` forward (and backward) passes.

    Shapes:
        x (N, *D) -> logits (N, K).

    Reference:
        Athalye, Engstrom, Ilyas & Kwok, "Synthesizing robust adversarial examples", ICML 2018, arXiv:1707.07397,
        Sec. 2 (EOT); Athalye, Carlini & Wagner, ICML 2018, arXiv:1802.00420, Sec. 4.3; Croce & Hein 2020,
        arXiv:2003.01690, Sec. 5 (the ``rand`` version, 20 samples).
    """

    def __init__(self, model: nn.Module, *, samples: int = 20) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.samples = check_positive_int(samples, "samples", minimum=1)
        self.training = model.training  # the wrapper's own flag follows the model, so it adds no mode warning

    def forward(self, x: Tensor) -> Tensor:
        total = self.model(x)
        for _ in range(1, self.samples):
            total = total + self.model(x)  # a running sum: one draw's activations freed before the next is kept
        return total / self.samples

    def extra_repr(self) -> str:
        return f"samples={self.samples}"


class BPDA(nn.Module):
    """Backward-pass differentiable approximation with the identity (straight-through):
    ``forward(x) = model(preprocess(x))``, and the backward pass treats ``preprocess`` as ``x -> x``.

    The input to ``model`` is ``x + (preprocess(x) - x).detach()``: its value is ``preprocess(x)``, its Jacobian
    with respect to ``x`` the identity. A preprocessing step whose gradient is zero or undefined (quantization,
    JPEG, thresholding) therefore no longer masks the gradient of the model behind it. The approximation is
    good when ``preprocess(x) ≈ x``, as for the defenses it was made for.

    Args:
        preprocess: a map ``(N, *D) -> (N, *D)`` (a function or module), not necessarily differentiable.
        model: the classifier after it, mapping ``(N, *D)`` to logits ``(N, K)``.

    Shapes:
        x (N, *D) -> logits (N, K).

    Reference:
        Athalye, Carlini & Wagner, "Obfuscated gradients give a false sense of security", ICML 2018,
        arXiv:1802.00420, Sec. 4.1 (BPDA, the straight-through special case).
    """

    def __init__(self, preprocess: Callable[[Tensor], Tensor], model: nn.Module) -> None:
        super().__init__()
        if not callable(preprocess):
            raise TypeError(f"preprocess must be callable, got {type(preprocess).__name__}")
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.preprocess = preprocess  # a module here is registered as a submodule, so modes reach it
        self.model = model
        self.training = model.training  # the wrapper's own flag follows the model, so it adds no mode warning

    def forward(self, x: Tensor) -> Tensor:
        z = self.preprocess(x)
        if z.shape != x.shape:
            raise ValueError(f"preprocess must keep the shape of x {tuple(x.shape)}, got {tuple(z.shape)}")
        return self.model(x + (z - x).detach())


def bpda_split(model: nn.Module) -> tuple[nn.Sequential, nn.Sequential]:
    """Split an ``nn.Sequential`` into its leading straight-through preprocessing layers (modules with
    ``straight_through = True``, e.g. :class:`~trustlab.models.preprocess.InputQuantization`) and the rest.

    Raises:
        ValueError: ``model`` is not an ``nn.Sequential`` or starts with no straight-through layer (the message
            names its first layer), or is nothing but such layers.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"BPDA needs the model as an nn.Sequential starting with its preprocessing, got "
                         f"{type(model).__name__}; wrap it yourself with BPDA(preprocess, model)")
    layers = list(model)
    k = 0
    while k < len(layers) and getattr(layers[k], "straight_through", False) is True:
        k += 1
    if k == 0:
        first = type(layers[0]).__name__ if layers else "nothing"
        raise ValueError(f"BPDA: the model starts with {first}, not with a preprocessing layer marked "
                         "straight_through (such as InputQuantization): there is nothing to approximate")
    if k == len(layers):
        raise ValueError("BPDA: the model is only preprocessing layers, with no classifier behind them")
    return nn.Sequential(*layers[:k]), nn.Sequential(*layers[k:])


def through_bpda(model: nn.Module) -> BPDA:
    """``model`` as :class:`BPDA` over its leading straight-through layers (:func:`bpda_split`): the same forward
    values, with those layers' backward pass replaced by the identity. The layers are shared, not copied."""
    preprocess, rest = bpda_split(model)
    wrapped = BPDA(preprocess, rest)
    wrapped.train(model.training)
    return wrapped


@dataclass(frozen=True)
class EOTAttack:
    """A configured attack run on ``EOT(model, samples)``: the attack as it is, its gradients averaged over
    ``samples`` draws of a randomized model (holds no model)."""

    attack: Any  # a configured gradient attack with a ``threat`` (APGD, PGD, FGSM, ...)
    samples: int = 20

    def __post_init__(self) -> None:
        if not callable(self.attack) or not hasattr(self.attack, "threat"):
            raise TypeError(f"attack must be a configured attack with a threat, got {type(self.attack).__name__}")
        check_positive_int(self.samples, "samples", minimum=1)

    @property
    def threat(self) -> LpBall:
        """The wrapped attack's threat model."""
        return self.attack.threat

    def __call__(
        self,
        model: nn.Module,
        x: Tensor,
        y: Tensor,
        *,
        y_target: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Run the attack on ``EOT(model, samples=self.samples)``."""
        return self.attack(EOT(model, samples=self.samples), x, y, y_target=y_target, generator=generator)

    def to_dict(self) -> dict[str, Any]:
        """The wrapped attack's record with ``eot_samples`` and how they are averaged."""
        return {**self.attack.to_dict(), "eot_samples": self.samples, "eot": "mean of logits"}
