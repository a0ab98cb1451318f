"""Poison Frogs: clean-label poisoning by feature collision (Shafahi et al., 2018).

A poison ``p`` looks like a base image ``b`` of the base class (and keeps its correct label) but sits on the
target image ``t`` in the feature space of a network ``phi``:

    p = argmin_x ||phi(x) - phi(t)||^2 + beta ||x - b||^2.                                     (Eq. 1)

The paper solves it by forward-backward splitting (Algorithm 1): a gradient step on the feature term,
``x_hat = x - lambda grad_x ||phi(x) - phi(t)||^2``, then the proximal step of ``beta ||x - b||^2``. Here that
proximal map also holds the input box ``[lower, upper]``; the objective is separable per coordinate and convex
quadratic, so the constrained minimizer is the clamp of the unconstrained one:

    x = clamp((x_hat + 2 lambda beta b) / (1 + 2 lambda beta), lower, upper).

(The paper prints ``(x_hat + lambda beta b) / (1 + lambda beta)``, the proximal map of ``(beta / 2) ||x - b||^2``;
this module uses the proximal map of Eq. 1 as written, so its ``beta`` is the paper's ``beta / 2``.)

The paper scales ``beta = beta0 * dim(feature)^2 / dim(input)^2`` (``beta0 = 0.25`` with InceptionV3's 2048
features and 299x299x3 inputs), :func:`scaled_beta`. Optional watermarking blends the target into the base
before the optimization, ``b <- opacity * t + (1 - opacity) * b`` (the paper's end-to-end setting uses 30%).

In the transfer-learning setting ``phi`` is frozen and only the last layer is retrained on the clean training
set plus the poison (labelled with the base class); one poison then typically makes the retrained model put the
target into the base class. :func:`transfer_attack` measures that over target/base pairs, with each poison's
perturbation size and the retrained model's clean accuracy.

When the whole network is retrained (end to end) one poison is not enough; the paper crafts several poisons
for one target, each from another base and watermarked with the target (50 poisons, opacity 0.3 on CIFAR-10).
:func:`end_to_end_sets` builds that poisoned training set, and the control with the same (watermarked) bases
left unperturbed, so that a success can be attributed to the collision rather than to the watermark.

Reference:
    A. Shafahi, W. R. Huang, M. Najibi, O. Suciu, C. Studer, T. Dumitras, T. Goldstein. Poison Frogs! Targeted
    Clean-Label Poisoning Attacks on Neural Networks. NeurIPS 2018, arXiv:1804.00792, Eq. 1 and Algorithm 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor, nn

from trustlab.data.transform import TransformedSet
from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = [
    "FeatureCollisionConfig",
    "CollisionResult",
    "TransferResult",
    "scaled_beta",
    "watermark",
    "proximal_step",
    "collision_objective",
    "feature_collision",
    "fit_linear_head",
    "transfer_attack",
    "select_pairs",
    "poisoned_training_set",
    "EndToEndSets",
    "end_to_end_sets",
]


@dataclass(frozen=True)
class FeatureCollisionConfig:
    """Settings of the feature-collision attack.

    Args:
        beta0: the paper's base weight; the weight used is :func:`scaled_beta` of it.
        step_size: lambda, the forward (gradient) step size.
        steps: forward-backward iterations.
        opacity: watermark opacity in [0, 1) (0: no watermark).
        lower, upper: the input box.

    Raises:
        ValueError: a setting out of its range (named in the message); TypeError: a non-integer count.
    """

    beta0: float = 0.25
    step_size: float = 0.001
    steps: int = 300
    opacity: float = 0.0
    lower: float = 0.0
    upper: float = 1.0
    name: str = "feature-collision"

    def __post_init__(self) -> None:
        check_nonneg_float(self.beta0, "beta0", positive=True)
        check_nonneg_float(self.step_size, "step_size", positive=True)
        check_positive_int(self.steps, "steps", minimum=0)
        if not 0.0 <= self.opacity < 1.0:
            raise ValueError(f"opacity must lie in [0, 1), got {self.opacity}")
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise ValueError(f"need finite lower < upper, got lower={self.lower}, upper={self.upper}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-safe dict."""
        return asdict(self)


@dataclass(frozen=True)
class CollisionResult:
    """Poisons crafted by :func:`feature_collision`.

    Args:
        x_poison: the poisons (B, *D).
        objective: Eq. 1 per poison after each iteration, the start first (steps+1, B).
        feature_distance: ||phi(p) - phi(t)||_2 per poison (B,).
        beta: the weight used.
    """

    x_poison: Tensor
    objective: Tensor
    feature_distance: Tensor
    beta: float


@dataclass(frozen=True)
class TransferResult:
    """Per-pair outcome of :func:`transfer_attack` (all (B,) tensors, one row per target/base pair).

    Args:
        success: the retrained model assigns the target to the base class.
        target_pred_clean: the clean model's prediction for the target.
        target_pred: the poisoned model's prediction for the target.
        delta_l2, delta_linf: the poison's distance to the (unwatermarked) base image.
        feature_distance: ||phi(p) - phi(t)||_2.
        clean_accuracy: the poisoned model's accuracy on the evaluation set.
        clean_accuracy_before: the clean model's accuracy on it (a float).
        x_poison: the poisons (B, *D), one per pair.
    """

    success: Tensor
    target_pred_clean: Tensor
    target_pred: Tensor
    delta_l2: Tensor
    delta_linf: Tensor
    feature_distance: Tensor
    clean_accuracy: Tensor
    clean_accuracy_before: float
    x_poison: Tensor | None = None


def scaled_beta(beta0: float, feature_dim: int, input_dim: int) -> float:
    """The paper's weight beta = beta0 * dim(feature)^2 / dim(input)^2 (its transfer-learning experiments).

    Raises:
        ValueError: a dimension < 1 or beta0 <= 0.
    """
    if feature_dim < 1 or input_dim < 1:
        raise ValueError(f"dimensions must be >= 1, got feature_dim={feature_dim}, input_dim={input_dim}")
    if not beta0 > 0:
        raise ValueError(f"beta0 must be > 0, got {beta0}")
    return float(beta0) * feature_dim**2 / input_dim**2


def watermark(base: Tensor, target: Tensor, opacity: float) -> Tensor:
    """The base with the target blended in: ``opacity * target + (1 - opacity) * base``.

    Raises:
        ValueError: opacity outside [0, 1] or shapes differ.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError(f"opacity must lie in [0, 1], got {opacity}")
    if base.shape != target.shape:
        raise ValueError(f"base and target shapes differ: {tuple(base.shape)} vs {tuple(target.shape)}")
    return opacity * target + (1.0 - opacity) * base


def proximal_step(x_hat: Tensor, base: Tensor, *, beta: float, step_size: float, lower: float,
                  upper: float) -> Tensor:
    """The backward step: argmin_x beta ||x - b||^2 + ||x - x_hat||^2 / (2 lambda) over the box, in closed form.

    Per coordinate the objective is a convex quadratic, so its minimizer over ``[lower, upper]`` is the clamp of
    the unconstrained one, (x_hat + 2 lambda beta b) / (1 + 2 lambda beta).

    Args:
        x_hat: the forward step's output (B, *D).
        base: the base images (B, *D).
        beta: the proximal weight.
        step_size: lambda.
        lower, upper: the input box.

    Returns:
        The new iterate (B, *D).
    """
    c = 2.0 * step_size * beta
    return ((x_hat + c * base) / (1.0 + c)).clamp(lower, upper)


def collision_objective(phi: nn.Module, x: Tensor, target_features: Tensor, base: Tensor, beta: float) -> Tensor:
    """Eq. 1 per example: ||phi(x) - phi(t)||^2 + beta ||x - b||^2.

    Args:
        phi: the feature extractor.
        x: candidate poisons (B, *D).
        target_features: phi(t) flattened (B, F).
        base: the base images (B, *D).
        beta: the weight.

    Returns:
        (B,) objective values (differentiable in ``x``).
    """
    feat = phi(x).flatten(1)
    return (feat - target_features).pow(2).sum(1) + beta * (x - base).flatten(1).pow(2).sum(1)


def feature_collision(phi: nn.Module, target: Tensor, base: Tensor, config: FeatureCollisionConfig) -> CollisionResult:
    """Craft one poison per (target, base) row by forward-backward splitting (Algorithm 1).

    Starts at the (watermarked) base. ``phi``'s parameters are not updated and its train/eval mode is restored.

    Args:
        phi: the feature extractor (frozen network up to the penultimate layer).
        target, base: the target and base images (B, *D), on phi's device.
        config: the settings.

    Returns:
        The :class:`CollisionResult`; the proximal term is measured to the watermarked base.

    Raises:
        ValueError: target and base shapes differ, or the batch is empty.

    Shapes:
        target, base, x_poison: (B, *D); objective: (steps+1, B).

    Reference:
        Shafahi et al. 2018, Algorithm 1.
    """
    if target.shape != base.shape or target.ndim < 2 or len(target) == 0:
        raise ValueError(f"need target and base of the same shape (B, *D), B >= 1; got {tuple(target.shape)} "
                         f"and {tuple(base.shape)}")
    was_training = phi.training
    phi.eval()
    try:
        with torch.no_grad():
            target_features = phi(target).flatten(1)
        beta = scaled_beta(config.beta0, target_features.shape[1], target[0].numel())
        b = watermark(base, target, config.opacity) if config.opacity > 0 else base
        x = b.clone()
        history = []
        for i in range(config.steps + 1):
            x.requires_grad_(True)
            feat_loss = (phi(x).flatten(1) - target_features).pow(2).sum(1)
            with torch.no_grad():
                history.append(feat_loss + beta * (x - b).flatten(1).pow(2).sum(1))
            if i == config.steps:
                break
            (grad,) = torch.autograd.grad(feat_loss.sum(), x)
            with torch.no_grad():
                x = proximal_step(x - config.step_size * grad, b, beta=beta, step_size=config.step_size,
                                  lower=config.lower, upper=config.upper)
        x = x.detach()
        with torch.no_grad():
            dist = (phi(x).flatten(1) - target_features).norm(dim=1)
    finally:
        phi.train(was_training)
    return CollisionResult(x_poison=x, objective=torch.stack(history), feature_distance=dist, beta=beta)


def fit_linear_head(features: Tensor, labels: Tensor, num_classes: int, *, steps: int = 200,
                    weight_decay: float = 1e-4) -> nn.Linear:
    """The retrained last layer: a linear layer fit by full-batch L-BFGS on softmax cross-entropy.

    Starts from zero weights, so the fit is deterministic given the data (no random stream needed).

    Args:
        features: (N, F) frozen features.
        labels: (N,) labels in [0, num_classes).
        num_classes: K.
        steps: L-BFGS iterations.
        weight_decay: the L2 penalty on the weights.

    Returns:
        The trained ``nn.Linear(F, K)`` on the features' device and dtype.
    """
    head = nn.Linear(features.shape[1], num_classes).to(features.device, features.dtype)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    opt = torch.optim.LBFGS(head.parameters(), max_iter=steps, line_search_fn="strong_wolfe",
                            tolerance_grad=1e-9, tolerance_change=1e-12)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(head(features), labels) + weight_decay * head.weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return head.requires_grad_(False)


def transfer_attack(phi: nn.Module, train: tuple[Tensor, Tensor], evaluation: tuple[Tensor, Tensor], *,
                    targets: tuple[Tensor, Tensor], bases: tuple[Tensor, Tensor], base_class: int | Tensor,
                    num_classes: int, config: FeatureCollisionConfig,
                    fit_head: Callable[[Tensor, Tensor, int], nn.Module] = fit_linear_head) -> TransferResult:
    """One poison per target in the transfer-learning setting: phi frozen, the last layer retrained.

    For each pair, a poison is crafted from the base towards the target, labelled with the base class (clean
    label: it is a base-class image) and added to the training set; the head is retrained on phi's features
    and the target's prediction is read.

    Args:
        phi: the frozen feature extractor.
        train: ``(x, y)`` the clean training set of the head.
        evaluation: ``(x, y)`` for clean accuracy (should not contain the targets).
        targets: ``(x, y)`` target images (B, *D) and their true classes (B,).
        bases: ``(x, y)`` base images (B, *D) and their classes (B,), which must equal ``base_class``.
        base_class: the base class, one for all pairs or (B,).
        num_classes: K.
        config: the attack settings.
        fit_head: ``fit_head(features, labels, num_classes) -> head``.

    Returns:
        The :class:`TransferResult`.

    Raises:
        ValueError: a base or target class out of [0, num_classes); a base not of its base class; a target
            already of the base class; targets and bases of different shapes.
    """
    x_tr, y_tr = train
    x_ev, y_ev = evaluation
    targets, y_t = targets
    bases, y_b = bases
    base_class = torch.as_tensor(base_class, dtype=torch.int64, device=y_tr.device).expand(len(bases))
    _check_pairs(y_t, y_b, base_class, num_classes)
    was_training = phi.training
    phi.eval()
    try:
        with torch.no_grad():
            f_tr, f_ev, f_t = phi(x_tr).flatten(1), phi(x_ev).flatten(1), phi(targets).flatten(1)
        clean = fit_head(f_tr, y_tr, num_classes)
        with torch.no_grad():
            pred_clean = clean(f_t).argmax(1)
            acc_before = float((clean(f_ev).argmax(1) == y_ev).float().mean())
        res = feature_collision(phi, targets, bases, config)
        with torch.no_grad():
            f_p = phi(res.x_poison).flatten(1)
        preds, accs = [], []
        for i in range(len(targets)):
            head = fit_head(torch.cat([f_tr, f_p[i:i + 1]]), torch.cat([y_tr, base_class[i:i + 1]]), num_classes)
            with torch.no_grad():
                preds.append(head(f_t[i:i + 1]).argmax(1)[0])
                accs.append((head(f_ev).argmax(1) == y_ev).float().mean())
    finally:
        phi.train(was_training)
    delta = (res.x_poison - bases).flatten(1)
    pred = torch.stack(preds)
    return TransferResult(success=pred == base_class, target_pred_clean=pred_clean, target_pred=pred,
                          delta_l2=delta.norm(dim=1), delta_linf=delta.abs().amax(1),
                          feature_distance=res.feature_distance, clean_accuracy=torch.stack(accs),
                          clean_accuracy_before=acc_before, x_poison=res.x_poison)


def _check_pairs(y_t: Tensor, y_b: Tensor, base_class: Tensor, num_classes: int) -> None:
    for name, c in (("target class", y_t), ("base class", base_class), ("base label", y_b)):
        if len(c) and (int(c.min()) < 0 or int(c.max()) >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {c.tolist()}")
    if len(y_t) != len(y_b) or len(y_b) != len(base_class):
        raise ValueError(f"need as many targets as bases, got {len(y_t)} and {len(y_b)}")
    wrong = torch.nonzero(y_b != base_class).flatten()
    if len(wrong):
        i = int(wrong[0])
        raise ValueError(f"base {i} is from the wrong class: label {int(y_b[i])}, base class {int(base_class[i])}")
    same = torch.nonzero(y_t == base_class).flatten()
    if len(same):
        i = int(same[0])
        raise ValueError(f"target {i} is already of the base class {int(base_class[i])}")


def select_pairs(y_targets: Tensor, y_bases: Tensor, *, target_class: int, base_class: int, n_pairs: int,
                 num_classes: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """Random (target, base) index pairs: targets of ``target_class``, bases of ``base_class``.

    Args:
        y_targets: labels of the pool targets are drawn from (e.g. the test set).
        y_bases: labels of the pool bases are drawn from (e.g. a held-out set).
        target_class, base_class: two different classes in [0, num_classes).
        n_pairs: how many pairs, each target and each base used at most once.
        num_classes: K.
        generator: the torch random stream.

    Returns:
        ``(target_idx, base_idx)`` int64 (n_pairs,).

    Raises:
        ValueError: a class out of range, the two classes equal, n_pairs < 1, or too few examples of a class.
    """
    for name, c in (("target_class", target_class), ("base_class", base_class)):
        if not 0 <= c < num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}), got {c}")
    if target_class == base_class:
        raise ValueError(f"target and base class must differ, got {target_class} for both")
    if n_pairs < 1:
        raise ValueError(f"n_pairs must be >= 1, got {n_pairs}")
    out = []
    for name, y, c in (("target", y_targets, target_class), ("base", y_bases, base_class)):
        pool = torch.nonzero(y == c).flatten()
        if len(pool) < n_pairs:
            raise ValueError(f"need {n_pairs} {name} examples of class {c}, found {len(pool)}")
        order = torch.randperm(len(pool), generator=generator, device=generator.device)
        out.append(pool[order[:n_pairs].to(pool.device)])
    return out[0], out[1]


def poisoned_training_set(x: Tensor, y: Tensor, x_poison: Tensor, base_class: int | Tensor, *,
                          info: dict[str, Any] | None = None) -> TransformedSet:
    """The training set with the poisons appended, each with its base class (clean label), as a ``TransformedSet``.

    Args:
        x, y: the clean training set (N, *D), (N,).
        x_poison: the poisons (P, *D), e.g. :attr:`CollisionResult.x_poison`.
        base_class: the poisons' label, one for all or (P,).
        info: extra JSON-safe facts to record (e.g. the target indices).

    Returns:
        A :class:`~trustlab.data.transform.TransformedSet` whose ``added`` indices are N..N+P-1.

    Raises:
        ValueError: the poisons' shape or dtype differs from the training set's.
    """
    if x_poison.shape[1:] != x.shape[1:] or x_poison.dtype != x.dtype:
        raise ValueError(f"poisons {tuple(x_poison.shape)} {x_poison.dtype} do not match the training set "
                         f"(N, {', '.join(map(str, x.shape[1:]))}) {x.dtype}")
    labels = torch.as_tensor(base_class, dtype=y.dtype, device=y.device).expand(len(x_poison))
    added = torch.arange(len(x), len(x) + len(x_poison), dtype=torch.int64)
    return TransformedSet(x=torch.cat([x, x_poison.to(x.device)]), y=torch.cat([y, labels]), added=added,
                          info=dict(info or {}))


@dataclass(frozen=True)
class EndToEndSets:
    """The training sets of one end-to-end target (:func:`end_to_end_sets`).

    Args:
        poisoned: the clean set plus the K poisons, labelled with the base class (``added`` N..N+K-1).
        control: the clean set plus the K (watermarked) bases unperturbed, same labels and indices.
        collision: the :class:`CollisionResult` of the K poisons.
    """

    poisoned: TransformedSet
    control: TransformedSet
    collision: CollisionResult


def end_to_end_sets(phi: nn.Module, train: tuple[Tensor, Tensor], target: Tensor, bases: Tensor,
                    base_class: int, config: FeatureCollisionConfig, *,
                    info: dict[str, Any] | None = None) -> EndToEndSets:
    """K poisons for one target, each from its own base, and the training sets that hold them or their control.

    Each poison starts at its base watermarked with the target (``config.opacity``) and collides with the
    target in phi's feature space (:func:`feature_collision`, the same target for all K). The control adds
    the same watermarked bases without the collision steps, so that fine-tuning on ``poisoned`` against
    ``control`` isolates the effect of the collision from that of the watermark.

    Args:
        phi: the feature extractor (frozen here; the caller may fine-tune the whole network afterwards).
        train: ``(x, y)`` the clean training set (N, *D), (N,).
        target: one target image (*D) or (1, *D).
        bases: K base images (K, *D) of ``base_class``.
        base_class: the poisons' (clean) label.
        config: the attack settings (``opacity``: the watermark).
        info: extra JSON-safe facts for both sets (e.g. the target and base indices).

    Returns:
        The :class:`EndToEndSets`.

    Raises:
        ValueError: no bases (K < 1), or a target whose shape differs from a base's.

    Reference:
        Shafahi et al. 2018, Section 5 (end-to-end training: multiple poisons with watermarking).
    """
    x, y = train
    if bases.ndim < 2 or len(bases) < 1:
        raise ValueError(f"need K >= 1 bases (K, *D), got shape {tuple(bases.shape)}")
    if tuple(target.shape) not in (tuple(bases.shape[1:]), (1, *bases.shape[1:])):
        raise ValueError(f"target {tuple(target.shape)} does not match the bases' image shape {tuple(bases.shape[1:])}")
    t = target.reshape(1, *bases.shape[1:]).expand_as(bases)
    res = feature_collision(phi, t, bases, config)
    start = watermark(bases, t, config.opacity) if config.opacity > 0 else bases
    facts = {**(info or {}), "poisons": len(bases), "opacity": config.opacity}
    return EndToEndSets(poisoned=poisoned_training_set(x, y, res.x_poison, base_class, info={**facts, "control": False}),
                        control=poisoned_training_set(x, y, start, base_class, info={**facts, "control": True}),
                        collision=res)
