"""Poisoning attacks against support vector machines (Biggio, Nelson & Laskov, 2012).

The attacker adds a point ``(x_c, y_c)`` to the training set and moves ``x_c`` to maximize the hinge loss of the
retrained SVM on a validation set,

    L(x_c) = sum_k (1 - y_k f_{x_c}(x_k))_+,

by gradient ascent. The gradient runs through the SVM's KKT conditions: while the sets of margin support vectors
S (0 < alpha < C), error vectors (alpha = C) and reserve points (alpha = 0) do not change and the attack point
keeps its alpha_c, every margin support vector stays on the margin, y_s f(x_s) = 1, and sum_i y_i alpha_i = 0
stays true. Differentiating both gives the paper's linear system (written here with beta_s = y_s alpha_s)

    [ K_SS  1 ] [ d beta_S / du ]     [ alpha_c y_c dK(x_S, u)/du ]
    [ 1^T   0 ] [ d b / du      ] = - [ 0                         ],

and the validation loss's gradient

    dL/du = - sum_{k: y_k f(x_k) < 1} y_k ( K_kS d beta_S/du + alpha_c y_c dK(x_k, u)/du + db/du ).

The paper keeps alpha_c fixed (exact when the attack point is an error vector, alpha_c = C). Once the point
lands on the margin (0 < alpha_c < C) that is only an approximation, often of the wrong sign;
``SVMPoisonConfig(margin_point="exact")`` then adds the point's own condition y_c f(x_c) = 1 to the system (an
extension beyond the paper; the default ``"paper"`` is the paper's rule).

Each step retrains scikit-learn's ``SVC`` on the training set plus the attack point, takes this gradient,
moves the point along its normalized direction with a backtracking line search, projects it onto the input box
``[lower, upper]`` and stops when the loss gains less than ``tol`` (the paper's Algorithm 1). Several points
are added one at a time, each optimized with the earlier ones kept in the training set (as in the paper's
multi-point experiments).

The attack point takes the label opposite to the class it is cloned from (the paper starts from a copy of a
training point of the attacked class with its label flipped), so its starting point is exactly the
label-flipping baseline, :func:`label_flip`.

Labels are +1/-1 throughout (numpy arrays); :func:`binary_pair` maps two classes of a multi-class set to them.

Reference:
    B. Biggio, B. Nelson, P. Laskov. Poisoning Attacks against Support Vector Machines. ICML 2012,
    arXiv:1206.6389: the gradient through the KKT conditions, and Algorithm 1.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trustlab.validation import check_nonneg_float, check_positive_int

__all__ = [
    "SVMPoisonConfig",
    "PoisonPath",
    "PoisonResult",
    "binary_pair",
    "kernel_matrix",
    "kernel_gradient",
    "fit_svm",
    "validation_hinge_loss",
    "classification_error",
    "hinge_loss_gradient",
    "poison_point",
    "svm_poison",
    "label_flip",
    "path_errors",
    "loss_surface",
    "plot_attack_path",
]

KERNELS = ("linear", "rbf")


@dataclass(frozen=True)
class SVMPoisonConfig:
    """Settings of the SVM poisoning attack and of the SVM it attacks.

    Args:
        kernel: ``"linear"`` or ``"rbf"`` (K(a, b) = exp(-gamma ||a - b||^2)).
        C: the SVM's box constraint.
        gamma: the RBF width (ignored for the linear kernel).
        steps: at most this many gradient steps per poison point.
        step_size: the first step length tried by the line search, along the unit gradient direction.
        halvings: the line search halves the step at most this many times before it gives up.
        tol: stop when an accepted step raises the validation loss by less than this (the paper's epsilon).
        lower, upper: the input box the poison point is projected onto.
        svm_tol: libsvm's stopping tolerance; small, so the KKT system holds to high precision.
        margin_point: how to differentiate when the attack point itself is a margin support vector
            (0 < alpha_c < C): ``"paper"`` keeps alpha_c fixed, the paper's simplification (then the gradient is
            only approximate); ``"exact"`` adds the attack point's own margin condition y_c f(x_c) = 1 to the KKT
            system, which gives the exact gradient while the sets do not change (an extension, not in the paper).

    Raises:
        ValueError: a setting out of its range (named in the message); TypeError: a non-integer count.
    """

    kernel: str = "linear"
    C: float = 1.0
    gamma: float = 0.5
    steps: int = 100
    step_size: float = 0.25
    halvings: int = 6
    tol: float = 1e-4
    lower: float = 0.0
    upper: float = 1.0
    svm_tol: float = 1e-8
    margin_point: str = "paper"
    name: str = "svm-poison"

    def __post_init__(self) -> None:
        if self.margin_point not in ("paper", "exact"):
            raise ValueError(f"margin_point must be 'paper' or 'exact', got {self.margin_point!r}")
        if self.kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {list(KERNELS)}, got {self.kernel!r}")
        for field_name in ("C", "gamma", "step_size", "svm_tol"):
            check_nonneg_float(getattr(self, field_name), field_name, positive=True)
        check_nonneg_float(self.tol, "tol")
        check_positive_int(self.steps, "steps", minimum=0)
        check_positive_int(self.halvings, "halvings", minimum=0)
        if not (math.isfinite(self.lower) and math.isfinite(self.upper) and self.lower < self.upper):
            raise ValueError(f"need finite lower < upper, got lower={self.lower}, upper={self.upper}")

    def to_dict(self) -> dict[str, Any]:
        """The configuration as a JSON-safe dict."""
        return asdict(self)


@dataclass(frozen=True)
class PoisonPath:
    """One poison point's optimization.

    Args:
        x: the final poison point (D,).
        y: its label (+1 or -1).
        path: the point after each accepted step, the start first (T+1, D).
        losses: the validation hinge loss at each point of ``path`` (T+1,).
        errors: the validation error at each point of ``path`` (T+1,).
        stopped: why the ascent ended: ``"tol"``, ``"steps"`` or ``"line_search"``.
    """

    x: np.ndarray
    y: int
    path: np.ndarray
    losses: np.ndarray
    errors: np.ndarray
    stopped: str


@dataclass(frozen=True)
class PoisonResult:
    """Several poison points added one at a time.

    Args:
        x, y: the poison points (P, D) and labels (P,).
        paths: each point's :class:`PoisonPath`.
        source: index of the training point each poison was cloned from (P,).
    """

    x: np.ndarray
    y: np.ndarray
    paths: tuple[PoisonPath, ...]
    source: np.ndarray


def _check_xy(x: np.ndarray, y: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    if x.ndim != 2 or y.ndim != 1 or len(x) != len(y):
        raise ValueError(f"{what}: need x (N, D) and y (N,), got {x.shape} and {y.shape}")
    if len(x) == 0:
        raise ValueError(f"{what}: the set is empty")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{what}: x holds NaN or Inf")
    bad = set(np.unique(y).tolist()) - {-1, 1}
    if bad:
        raise ValueError(f"{what}: labels must be +1 or -1, got {sorted(bad)}")
    return x, y.astype(np.int64)


def binary_pair(x: Any, y: Any, positive: int, negative: int) -> tuple[np.ndarray, np.ndarray]:
    """The examples of two classes, flattened, with labels +1 (``positive``) and -1 (``negative``).

    Args:
        x: inputs (N, *D) (numpy or torch).
        y: integer labels (N,).
        positive, negative: the two classes, e.g. 7 and 1.

    Returns:
        ``(x, y)`` as float64 (M, prod(D)) and int64 (M,) numpy arrays, in the original order.

    Raises:
        ValueError: the two classes are the same, or one of them has no example.
    """
    if positive == negative:
        raise ValueError(f"the two classes of a pair must differ, got {positive} and {negative}")
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y)
    keep = (y == positive) | (y == negative)
    for c in (positive, negative):
        if not np.any(y == c):
            raise ValueError(f"class {c} has no example")
    return x[keep].reshape(int(keep.sum()), -1), np.where(y[keep] == positive, 1, -1).astype(np.int64)


def kernel_matrix(a: np.ndarray, b: np.ndarray, config: SVMPoisonConfig) -> np.ndarray:
    """The kernel matrix K(a_i, b_j) for the config's kernel.

    Args:
        a, b: points (N, D) and (M, D).
        config: gives ``kernel`` (linear: a_i . b_j; RBF: exp(-gamma ||a_i - b_j||^2)) and ``gamma``.

    Returns:
        (N, M) float64.
    """
    if config.kernel == "linear":
        return a @ b.T
    sq = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.exp(-config.gamma * np.maximum(sq, 0.0))


def kernel_gradient(x: np.ndarray, u: np.ndarray, config: SVMPoisonConfig) -> np.ndarray:
    """The kernel's gradient in its second argument, dK(x_k, u)/du, for every row x_k.

    Args:
        x: points (N, D).
        u: the attack point (D,).
        config: the kernel: linear gives x_k, RBF gives 2 gamma K(x_k, u) (x_k - u).

    Returns:
        (N, D) float64.
    """
    if config.kernel == "linear":
        return x.copy()
    k = kernel_matrix(x, u[None, :], config)  # (N, 1)
    return 2.0 * config.gamma * k * (x - u[None, :])


def fit_svm(x: np.ndarray, y: np.ndarray, config: SVMPoisonConfig):
    """scikit-learn's ``SVC`` trained on ``(x, y)`` with the config's kernel, ``C`` and tolerance.

    Args:
        x, y: (N, D), labels +1/-1 (N,).
        config: the kernel, ``C``, ``gamma`` and ``svm_tol``.

    Returns:
        The fitted ``SVC``; its ``dual_coef_`` holds y_i alpha_i of the support vectors.

    Raises:
        ValueError: labels are not +1/-1, or only one class is present.
    """
    from sklearn.svm import SVC

    x, y = _check_xy(x, y, "training set")
    if len(np.unique(y)) < 2:
        raise ValueError("the training set needs both classes +1 and -1")
    svm = SVC(C=config.C, kernel=config.kernel, gamma=config.gamma, tol=config.svm_tol, max_iter=-1)
    return svm.fit(x, y)


def validation_hinge_loss(svm, x_val: np.ndarray, y_val: np.ndarray) -> float:
    """The paper's attacker objective L = sum_k (1 - y_k f(x_k))_+ on a validation set.

    Args:
        svm: a fitted binary ``SVC`` with labels +1/-1.
        x_val, y_val: (M, D), (M,).

    Returns:
        The summed hinge loss (a float).
    """
    return float(np.maximum(0.0, 1.0 - y_val * svm.decision_function(x_val)).sum())


def classification_error(svm, x: np.ndarray, y: np.ndarray) -> float:
    """The fraction of ``(x, y)`` the SVM misclassifies.

    Args:
        svm: a fitted binary ``SVC`` with labels +1/-1.
        x, y: (M, D), (M,).

    Returns:
        The error rate in [0, 1]; a zero decision value counts as -1.
    """
    pred = np.where(svm.decision_function(x) > 0, 1, -1)
    return float(np.mean(pred != y))


def hinge_loss_gradient(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                        *, x_c: np.ndarray, y_c: int, config: SVMPoisonConfig,
                        margin_tol: float = 1e-6) -> tuple[float, np.ndarray, dict[str, Any]]:
    """The retrained SVM's validation hinge loss and its gradient w.r.t. the attack point.

    Trains the SVM on the training set plus ``(x_c, y_c)`` (the attack point is the last training row), then
    solves the KKT system of the margin support vectors for d beta_S/du and db/du.

    Args:
        x_tr, y_tr: the training set (N, D), labels +1/-1 (N,).
        x_val, y_val: the attacker's validation set (M, D), (M,).
        x_c, y_c: the attack point (D,) and its label.
        config: the SVM and attack settings.
        margin_tol: alpha within this (relative to C) of 0 or C is not a margin support vector.

    Returns:
        ``(loss, grad, info)``: L at ``x_c``, dL/dx_c (D,), and ``info`` with the trained ``svm``,
        ``alpha_c``, the training indices of the margin support vectors ``margin`` (the attack point excluded),
        the validation ``error`` and ``attack_point_on_margin``. The gradient is exact while the three sets do
        not change and either the attack point is an error vector (alpha_c = C) or ``margin_point="exact"``;
        it is zero when the attack point is not a support vector (alpha_c = 0), as in the paper.

    Raises:
        ValueError: bad shapes or labels.
    """
    x_tr, y_tr = _check_xy(x_tr, y_tr, "training set")
    x_val, y_val = _check_xy(x_val, y_val, "validation set")
    x_c = np.asarray(x_c, dtype=np.float64)
    if x_c.shape != x_tr.shape[1:]:
        raise ValueError(f"x_c must have shape {x_tr.shape[1:]}, got {x_c.shape}")
    if y_c not in (-1, 1):
        raise ValueError(f"y_c must be +1 or -1, got {y_c}")
    x_all = np.vstack([x_tr, x_c[None, :]])
    y_all = np.append(y_tr, y_c)
    svm = fit_svm(x_all, y_all, config)
    n = len(x_all)
    beta = np.zeros(n)  # beta_i = y_i alpha_i
    beta[svm.support_] = svm.dual_coef_[0]
    alpha = np.abs(beta)
    alpha_c = float(alpha[-1])
    f_val = svm.decision_function(x_val)
    loss = float(np.maximum(0.0, 1.0 - y_val * f_val).sum())
    margin = np.flatnonzero((alpha > margin_tol * config.C) & (alpha < config.C * (1 - margin_tol)))
    margin = margin[margin != n - 1]
    error = float(np.mean(np.where(f_val > 0, 1, -1) != y_val))
    on_margin = bool(alpha_c < config.C * (1 - margin_tol))
    info = {"svm": svm, "alpha_c": alpha_c, "margin": margin, "error": error, "attack_point_on_margin": on_margin}
    grad = np.zeros_like(x_c)
    active = y_val * f_val < 1.0
    if alpha_c == 0.0 or not np.any(active):
        return loss, grad, info
    dk_val = kernel_gradient(x_val[active], x_c, config)  # (A, D)
    beta_c = alpha_c * y_c
    c_on_margin = config.margin_point == "exact" and on_margin
    rows = np.append(margin, n - 1) if c_on_margin else margin
    s = len(rows)
    if s:
        system = np.zeros((s + 1, s + 1))
        system[:s, :s] = kernel_matrix(x_all[rows], x_all[rows], config)
        system[:s, s] = system[s, :s] = 1.0
        rhs = np.zeros((s + 1, x_c.size))
        rhs[:s] = -beta_c * kernel_gradient(x_all[rows], x_c, config)
        if c_on_margin:
            # The attack point's own condition y_c f(u) = 1: f(u) moves with u through every K(x_j, u), and
            # K(u, u) changes in both arguments (2u for the linear kernel, constant for the RBF one).
            others = np.flatnonzero(beta[:-1])
            d_kuu = 2.0 * x_c if config.kernel == "linear" else np.zeros_like(x_c)
            rhs[s - 1] = -(beta[others] @ kernel_gradient(x_all[others], x_c, config) + beta_c * d_kuu)
        sol = np.linalg.lstsq(system, rhs, rcond=None)[0]  # (S+1, D): d beta_S/du and db/du
        dbeta, db = sol[:s], sol[s]
        df = kernel_matrix(x_val[active], x_all[rows], config) @ dbeta + db[None, :]
    else:
        # No margin support vector: b is not pinned by the KKT system; keep it fixed (a degenerate case).
        df = np.zeros((int(active.sum()), x_c.size))
    df = df + beta_c * dk_val
    grad = -(y_val[active][:, None] * df).sum(0)
    return loss, grad, info


def _retrained(x_tr, y_tr, x_val, y_val, x_c, y_c, config) -> tuple[float, float]:
    svm = fit_svm(np.vstack([x_tr, x_c[None, :]]), np.append(y_tr, y_c), config)
    return validation_hinge_loss(svm, x_val, y_val), classification_error(svm, x_val, y_val)


def poison_point(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
                 *, x0: np.ndarray, y_c: int, config: SVMPoisonConfig) -> PoisonPath:
    """Optimize one attack point by projected gradient ascent on the validation hinge loss (Algorithm 1).

    Each step moves along the unit gradient, u' = proj(u + t grad/||grad||) (components that push against an
    active bound of the box dropped before normalizing), trying t = step_size first and
    halving it (at most ``halvings`` times) until the retrained loss rises; the ascent stops when no step
    raises it (``"line_search"``), when the gain is below ``tol`` (``"tol"``) or after ``steps`` steps.

    Args:
        x_tr, y_tr: the training set without the attack point.
        x_val, y_val: the attacker's validation set.
        x0: the starting point (D,), inside ``[lower, upper]`` after projection.
        y_c: the attack point's label (+1 or -1), fixed during the ascent.
        config: the settings.

    Returns:
        The :class:`PoisonPath`.

    Raises:
        ValueError: bad shapes or labels.

    Reference:
        Biggio, Nelson & Laskov 2012, Algorithm 1.
    """
    u = np.clip(np.asarray(x0, dtype=np.float64), config.lower, config.upper)
    loss, grad, info = hinge_loss_gradient(x_tr, y_tr, x_val, y_val, x_c=u, y_c=y_c, config=config)
    path, losses, errors = [u.copy()], [loss], [info["error"]]
    stopped = "steps"
    for _ in range(config.steps):
        # Components pushing against an active bound would be clipped away: drop them before normalizing.
        blocked = ((u >= config.upper) & (grad > 0)) | ((u <= config.lower) & (grad < 0))
        direction = np.where(blocked, 0.0, grad)
        norm = float(np.linalg.norm(direction))
        if norm == 0.0:
            stopped = "line_search"
            break
        t, accepted = config.step_size, None
        for _ in range(config.halvings + 1):
            u_new = np.clip(u + t * direction / norm, config.lower, config.upper)
            if not np.array_equal(u_new, u):
                loss_new, _ = _retrained(x_tr, y_tr, x_val, y_val, u_new, y_c, config)
                if loss_new > loss:
                    accepted = u_new
                    break
            t /= 2.0
        if accepted is None:
            stopped = "line_search"
            break
        gain_loss = loss
        u = accepted
        loss, grad, info = hinge_loss_gradient(x_tr, y_tr, x_val, y_val, x_c=u, y_c=y_c, config=config)
        path.append(u.copy())
        losses.append(loss)
        errors.append(info["error"])
        if loss - gain_loss < config.tol:
            stopped = "tol"
            break
    return PoisonPath(x=u, y=int(y_c), path=np.array(path), losses=np.array(losses), errors=np.array(errors),
                      stopped=stopped)


def svm_poison(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray,
               *, n_points: int, config: SVMPoisonConfig, rng: np.random.Generator,
               attacked_class: int | None = None) -> PoisonResult:
    """Add ``n_points`` poison points one at a time, each optimized with the earlier ones in the training set.

    Each point starts as a clone of a random training point of ``attacked_class`` (either class when None),
    drawn from ``rng``, with its label flipped.

    Args:
        x_tr, y_tr: the clean training set (N, D), (N,), labels +1/-1.
        x_val, y_val: the attacker's validation set.
        n_points: how many poison points, >= 1.
        config: the settings.
        rng: the numpy generator that picks the starting points.
        attacked_class: +1, -1 or None.

    Returns:
        The :class:`PoisonResult`; the poisoned training set is ``(vstack(x_tr, result.x), append(y_tr,
        result.y))``.

    Raises:
        ValueError: ``n_points`` < 1 or not an integer, ``attacked_class`` not +1/-1/None or without training
            points, bad shapes or labels.
    """
    x_tr, y_tr = _check_xy(x_tr, y_tr, "training set")
    if isinstance(n_points, bool) or not isinstance(n_points, (int, np.integer)) or n_points < 1:
        raise ValueError(f"n_points must be an integer >= 1, got {n_points!r}")
    if attacked_class not in (None, -1, 1):
        raise ValueError(f"attacked_class must be +1, -1 or None, got {attacked_class!r}")
    pool = np.flatnonzero(y_tr == attacked_class) if attacked_class is not None else np.arange(len(y_tr))
    if len(pool) == 0:
        raise ValueError(f"no training point of class {attacked_class} to clone")
    xs, ys, paths, sources = [], [], [], []
    x_cur, y_cur = x_tr, y_tr
    for _ in range(int(n_points)):
        i = int(rng.choice(pool))
        p = poison_point(x_cur, y_cur, x_val, y_val, x0=x_tr[i], y_c=-int(y_tr[i]), config=config)
        xs.append(p.x)
        ys.append(p.y)
        paths.append(p)
        sources.append(i)
        x_cur, y_cur = np.vstack([x_cur, p.x[None, :]]), np.append(y_cur, p.y)
    return PoisonResult(x=np.array(xs), y=np.array(ys, dtype=np.int64), paths=tuple(paths),
                        source=np.array(sources, dtype=np.int64))


def label_flip(x_tr: np.ndarray, y_tr: np.ndarray, *, n_points: int | None = None, rate: float | None = None,
               rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The label-flipping baseline: copies of random training points with the opposite label, appended.

    Give either ``n_points`` or ``rate`` (``round(rate * N)`` points).

    Args:
        x_tr, y_tr: the training set, labels +1/-1.
        n_points: how many flipped copies to add.
        rate: or the fraction of N to add, in [0, 1].
        rng: picks the points (without replacement).

    Returns:
        ``(x_poison, y_poison, source)``: the added points (P, D), their flipped labels (P,), and the indices of
        the training points they copy (P,).

    Raises:
        ValueError: neither or both of ``n_points``/``rate``; rate outside [0, 1]; ``round(rate * N)`` is 0 (no
            poison sample generated); ``n_points`` < 1 or > N.
    """
    x_tr, y_tr = _check_xy(x_tr, y_tr, "training set")
    if (n_points is None) == (rate is None):
        raise ValueError("give exactly one of n_points and rate")
    if rate is not None:
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        n_points = round(rate * len(x_tr))
        if n_points == 0:
            raise ValueError(f"rate {rate} of {len(x_tr)} training points rounds to 0: no poison sample generated")
    if not 1 <= n_points <= len(x_tr):
        raise ValueError(f"n_points must lie in [1, {len(x_tr)}], got {n_points}")
    source = np.sort(rng.choice(len(x_tr), size=n_points, replace=False))
    return x_tr[source].copy(), -y_tr[source], source


def path_errors(x_tr: np.ndarray, y_tr: np.ndarray, points: np.ndarray, y_c: int | np.ndarray,
                sets: dict[str, tuple[np.ndarray, np.ndarray]], *, config: SVMPoisonConfig,
                cumulative: bool = False) -> dict[str, np.ndarray]:
    """Errors of the SVM retrained with each of ``points`` (one path), or with the first k of them.

    Args:
        x_tr, y_tr: the clean training set.
        points: attack points (T, D): a :class:`PoisonPath`'s ``path`` or a :class:`PoisonResult`'s ``x``.
        y_c: their label, or one label per point (T,).
        sets: named evaluation sets, e.g. ``{"val": (x_val, y_val), "test": (x_test, y_test)}``.
        config: the SVM settings.
        cumulative: False: the training set plus ``points[t]`` alone (error vs attack iterations). True: plus
            ``points[:t]`` for t = 0..T (error vs number of poison points; row 0 is the clean SVM).

    Returns:
        ``{name: errors}`` with (T,) rows, or (T+1,) when cumulative.
    """
    points = np.asarray(points, dtype=np.float64)
    labels = np.broadcast_to(np.asarray(y_c, dtype=np.int64), (len(points),))
    out: dict[str, list[float]] = {name: [] for name in sets}
    rows = range(len(points) + 1) if cumulative else range(len(points))
    for t in rows:
        px, py = (points[:t], labels[:t]) if cumulative else (points[t:t + 1], labels[t:t + 1])
        svm = fit_svm(np.vstack([x_tr, px]), np.append(y_tr, py), config)
        for name, (xs, ys) in sets.items():
            out[name].append(classification_error(svm, xs, ys))
    return {name: np.array(v) for name, v in out.items()}


def loss_surface(x_tr: np.ndarray, y_tr: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *, y_c: int,
                 config: SVMPoisonConfig, resolution: int = 40) -> dict[str, np.ndarray]:
    """The retrained validation hinge loss and error for an attack point at each node of a 2-D grid.

    Args:
        x_tr, y_tr, x_val, y_val: a 2-D problem (D = 2).
        y_c: the attack point's label.
        config: the settings; the grid spans ``[lower, upper]^2``.
        resolution: grid nodes per axis.

    Returns:
        ``{"grid0": (R,), "grid1": (R,), "loss": (R, R), "error": (R, R)}``, ``loss[i, j]`` at
        ``(grid0[j], grid1[i])``.

    Raises:
        ValueError: D != 2 or resolution < 2.
    """
    x_tr, y_tr = _check_xy(x_tr, y_tr, "training set")
    if x_tr.shape[1] != 2:
        raise ValueError(f"loss_surface needs 2-D inputs, got D={x_tr.shape[1]}")
    if resolution < 2:
        raise ValueError(f"resolution must be >= 2, got {resolution}")
    g = np.linspace(config.lower, config.upper, resolution)
    loss = np.zeros((resolution, resolution))
    error = np.zeros((resolution, resolution))
    for i, v in enumerate(g):
        for j, w in enumerate(g):
            loss[i, j], error[i, j] = _retrained(x_tr, y_tr, x_val, y_val, np.array([w, v]), y_c, config)
    return {"grid0": g, "grid1": g, "loss": loss, "error": error}


def plot_attack_path(surface: dict[str, np.ndarray], path: PoisonPath, *, x_tr: np.ndarray, y_tr: np.ndarray,
                     what: str = "error", ax=None):
    """Draw the poison point's path over the contour of the validation ``error`` (or ``loss``) surface.

    Args:
        surface: from :func:`loss_surface`.
        path: the :class:`PoisonPath` to draw.
        x_tr, y_tr: the clean training points, drawn by class.
        what: ``"error"`` or ``"loss"``.
        ax: a matplotlib axes; a new figure when None.

    Returns:
        The matplotlib axes.

    Raises:
        ValueError: unknown ``what``.
    """
    if what not in ("error", "loss"):
        raise ValueError(f"what must be 'error' or 'loss', got {what!r}")
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 4.5))
    cs = ax.contourf(surface["grid0"], surface["grid1"], surface[what], levels=20, cmap="viridis")
    ax.figure.colorbar(cs, ax=ax, label=f"validation {what}")
    for label, marker in ((1, "o"), (-1, "s")):
        pts = x_tr[y_tr == label]
        ax.scatter(pts[:, 0], pts[:, 1], marker=marker, c="w", edgecolors="k", s=20, label=f"class {label:+d}")
    ax.plot(path.path[:, 0], path.path[:, 1], "r.-", label=f"poison path (label {path.y:+d})")
    ax.plot(path.path[-1, 0], path.path[-1, 1], "r*", markersize=14)
    ax.legend(loc="upper right", fontsize=7)
    return ax
