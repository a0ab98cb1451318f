"""Contract suite over a registry of every attack configuration (the check_estimator idea).

Each entry builds a configured attack for a given threat and names the fixture model it runs on. Every
contract (EVAL-01 containment, EVAL-03 identity at eps = 0, EVAL-15 no mutation, EVAL-16 seeded determinism,
LIB-05/06 batch size and dtype) runs over all of them.
"""

from __future__ import annotations

import copy
import math
import warnings
from dataclasses import dataclass
from typing import Callable

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import (
    APGD,
    APGDT,
    ATTACKS,
    FAB,
    FABT,
    FGSM,
    FGSMRS,
    PGD,
    EOTAttack,
    Ensemble,
    Linear,
    Square,
    attack_batched,
    build_attack,
    predict,
)
from trustlab.errors import NumericalError

TOL_LINF = 1e-6
TOL_REL = 1e-5


@dataclass(frozen=True)
class Entry:
    """One attack configuration of the registry."""

    make: Callable[[LpBall], object]  # threat -> configured attack
    p: float
    model: str  # "mlp" (FX-SMALL digits MLP) or "linear" (FX-LIN)
    targeted: bool = False
    random: bool = False  # draws from the generator

    def eps_grid(self) -> list[float]:
        return [0.01, 0.05, 0.1, 0.3, 1.0] if self.p == math.inf else [0.1, 0.5, 1.0, 3.0, 10.0]


REGISTRY = {
    "fgsm-linf": Entry(lambda t: FGSM(t), math.inf, "mlp"),
    "fgsm-l2": Entry(lambda t: FGSM(t), 2.0, "mlp"),
    "fgsm-rs-linf": Entry(lambda t: FGSMRS(t), math.inf, "mlp", random=True),
    "fgsm-rs-l2": Entry(lambda t: FGSMRS(t), 2.0, "mlp", random=True),
    "fgsm-rs-linf-targeted-step": Entry(lambda t: FGSMRS(t, step_size=t.eps / 2 or None), math.inf, "mlp", targeted=True,
                                        random=True),
    "pgd-linf": Entry(lambda t: PGD(t, steps=5), math.inf, "mlp", random=True),
    "pgd-l2": Entry(lambda t: PGD(t, steps=5), 2.0, "mlp", random=True),
    "pgd-linf-no-random-start": Entry(lambda t: PGD(t, steps=5, random_start=False), math.inf, "mlp"),
    "pgd-linf-targeted": Entry(lambda t: PGD(t, steps=5, restarts=2), math.inf, "mlp", targeted=True, random=True),
    "pgd-linf-margin": Entry(lambda t: PGD(t, steps=5, loss="margin"), math.inf, "mlp", random=True),
    "pgd-l2-margin-targeted": Entry(lambda t: PGD(t, steps=5, loss="margin"), 2.0, "mlp", targeted=True, random=True),
    "apgd-linf": Entry(lambda t: APGD(t, steps=5), math.inf, "mlp", random=True),
    "apgd-l2": Entry(lambda t: APGD(t, steps=5), 2.0, "mlp", random=True),
    "apgd-linf-dlr-restarts": Entry(lambda t: APGD(t, steps=5, loss="dlr", restarts=2), math.inf, "mlp", random=True),
    "apgd-l2-dlr-targeted": Entry(lambda t: APGD(t, steps=5, loss="dlr-targeted"), 2.0, "mlp", targeted=True,
                                  random=True),
    "apgd-linf-ce-targeted": Entry(lambda t: APGD(t, steps=5), math.inf, "mlp", targeted=True, random=True),
    "apgd-t-linf": Entry(lambda t: APGDT(t, steps=5, n_target_classes=3), math.inf, "mlp", random=True),
    "apgd-t-l2": Entry(lambda t: APGDT(t, steps=5, n_target_classes=2, restarts=2), 2.0, "mlp", random=True),
    "square-linf": Entry(lambda t: Square(t, queries=40), math.inf, "mlp", random=True),
    "square-l2": Entry(lambda t: Square(t, queries=40), 2.0, "mlp", random=True),
    "square-linf-ce-targeted": Entry(lambda t: Square(t, queries=40, loss="ce"), math.inf, "mlp", targeted=True,
                                     random=True),
    "fab-linf": Entry(lambda t: FAB(t, steps=5), math.inf, "mlp"),
    "fab-l2": Entry(lambda t: FAB(t, steps=5), 2.0, "mlp"),
    "fab-linf-targeted": Entry(lambda t: FAB(t, steps=5), math.inf, "mlp", targeted=True),
    "fab-l2-restarts": Entry(lambda t: FAB(t, steps=5, restarts=3), 2.0, "mlp", random=True),
    "fab-t-l2": Entry(lambda t: FABT(t, steps=5, n_target_classes=3), 2.0, "mlp"),
    # its random restarts find no point inside eps that the run from x missed (measured), so seeds agree
    "fab-t-linf-restarts": Entry(lambda t: FABT(t, steps=3, n_target_classes=2, restarts=2), math.inf, "mlp"),
    # the ensemble with the standard composition on small budgets (the fixed versions are too slow for this suite)
    "ensemble-linf": Entry(lambda t: Ensemble(t, version="custom", members=(
        APGD(t, steps=5), APGDT(t, steps=3, n_target_classes=2), FABT(t, steps=3, n_target_classes=2),
        Square(t, queries=40))), math.inf, "mlp", random=True),
    "ensemble-l2": Entry(lambda t: Ensemble(t, version="custom", members=(
        APGD(t, steps=5), APGDT(t, steps=3, n_target_classes=2), FABT(t, steps=3, n_target_classes=2),
        Square(t, queries=40))), 2.0, "mlp", random=True),
    "ensemble-rand-linf": Entry(lambda t: Ensemble(t, version="custom", members=(
        EOTAttack(APGD(t, steps=3), samples=2), EOTAttack(APGD(t, steps=3, loss="dlr"), samples=2))), math.inf,
        "mlp", random=True),
    "linear-linf": Entry(lambda t: Linear(t), math.inf, "linear"),
    "linear-l2": Entry(lambda t: Linear(t), 2.0, "linear"),
}


def test_registry_covers_every_attack():
    names = {type(e.make(LpBall(0.1))).name for e in REGISTRY.values()}
    assert names == set(ATTACKS)


@pytest.fixture()
def setup(request, small_model, test_batch, linear_binary):
    """(model, x, y, y_target or None) for the registry entry named by the test's parameter."""
    entry: Entry = REGISTRY[request.param]
    if entry.model == "linear":
        model, x, y = linear_binary
        num_classes = 2
    else:
        model = copy.deepcopy(small_model)  # tests below may switch its mode; never touch the session fixture
        (x, y), num_classes = test_batch, 10
    y_target = (y + 1) % num_classes if entry.targeted else None
    return entry, model, x, y, y_target


def run(entry: Entry, model, x, y, y_target, *, eps: float, seed: int = 0) -> torch.Tensor:
    attack = entry.make(LpBall(eps, p=entry.p))
    return attack(model, x, y, y_target=y_target, generator=torch.Generator().manual_seed(seed))


def violations(x_adv: torch.Tensor, x: torch.Tensor, eps: float, p: float) -> dict[str, int]:
    delta = (x_adv - x).flatten(1)
    if p == math.inf:
        outside = delta.abs().amax(1) > eps + TOL_LINF
    else:
        outside = delta.norm(dim=1) > eps * (1 + TOL_REL)
    return {
        "ball": int(outside.sum()),
        "box": int(((x_adv < 0) | (x_adv > 1)).flatten(1).any(1).sum()),
        "nonfinite": int((~torch.isfinite(x_adv)).flatten(1).any(1).sum()),
    }


all_entries = pytest.mark.parametrize("setup", list(REGISTRY), indirect=True)


@all_entries
def test_eval01_outputs_stay_in_ball_and_box(setup):
    entry, model, x, y, y_target = setup
    for eps in entry.eps_grid():
        x_adv = run(entry, model, x, y, y_target, eps=eps)
        assert violations(x_adv, x, eps, entry.p) == {"ball": 0, "box": 0, "nonfinite": 0}, f"eps={eps}"


@all_entries
def test_eval01_batched_outputs_stay_in_ball_and_box(setup):
    entry, model, x, y, y_target = setup
    eps = entry.eps_grid()[2]
    attack = entry.make(LpBall(eps, p=entry.p))
    g = torch.Generator().manual_seed(0)
    x_adv = attack_batched(attack, model, x, y, batch_size=48, generator=g, y_target=y_target)
    assert violations(x_adv, x, eps, entry.p) == {"ball": 0, "box": 0, "nonfinite": 0}


@all_entries
def test_eval03_eps_zero_is_bitwise_identity(setup):
    entry, model, x, y, y_target = setup
    x_adv = run(entry, model, x, y, y_target, eps=0.0)
    assert torch.equal(x_adv, x)
    assert x_adv.data_ptr() != x.data_ptr()  # a copy, not the caller's tensor
    assert torch.equal(predict(model, x_adv), predict(model, x))


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_untouched(model: nn.Module, before: dict[str, torch.Tensor], modes: list[bool]) -> None:
    after = model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k
    assert all(p.grad is None for p in model.parameters())
    assert [m.training for m in model.modules()] == modes


@all_entries
def test_eval15_inputs_and_eval_model_unchanged(setup):
    entry, model, x, y, y_target = setup
    x0, y0, state, modes = x.clone(), y.clone(), snapshot(model), [m.training for m in model.modules()]
    run(entry, model, x, y, y_target, eps=entry.eps_grid()[2])
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert not x.requires_grad
    assert_untouched(model, state, modes)


@all_entries
def test_eval15_train_mode_model_warned_and_restored(setup):
    entry, model, x, y, y_target = setup
    model.train()
    state, modes = snapshot(model), [m.training for m in model.modules()]
    if entry.model == "linear":  # the closed form never runs the model, so there is nothing to switch or warn about
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            run(entry, model, x, y, y_target, eps=entry.eps_grid()[2])
    else:
        with pytest.warns(UserWarning, match="training mode"):
            run(entry, model, x, y, y_target, eps=entry.eps_grid()[2])
    assert_untouched(model, state, modes)


@pytest.mark.parametrize("name", ["fgsm", "pgd"])
def test_eval15_batchnorm_dropout_buffers_and_mixed_modes(name, test_batch):
    """A train-mode model with BatchNorm and Dropout: buffers unchanged, per-module modes restored exactly."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Dropout(0.5), nn.Linear(256, 10)
    )
    model.train()
    model[1].eval()  # mixed modes must come back as they were, not all-train
    x, y = test_batch
    state, modes = snapshot(model), [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    with pytest.warns(UserWarning, match="training mode"):
        build_attack(name, LpBall(0.1))(model, x, y, generator=torch.Generator().manual_seed(0))
    assert_untouched(model, state, modes)
    assert torch.equal(torch.get_rng_state(), rng)  # Dropout ran in eval mode; the global RNG was not touched


@all_entries
def test_eval16_same_seed_same_output_other_seed_differs(setup):
    entry, model, x, y, y_target = setup
    eps = entry.eps_grid()[2]
    a = run(entry, model, x, y, y_target, eps=eps, seed=1)
    b = run(entry, model, x, y, y_target, eps=eps, seed=1)
    c = run(entry, model, x, y, y_target, eps=eps, seed=2)
    assert torch.equal(a, b)
    assert torch.equal(a, c) != entry.random


@all_entries
def test_eval16_global_rng_untouched(setup):
    entry, model, x, y, y_target = setup
    state = torch.get_rng_state()
    entry.make(LpBall(entry.eps_grid()[2], p=entry.p))(model, x, y, y_target=y_target)  # generator=None
    assert torch.equal(torch.get_rng_state(), state)


@all_entries
def test_lib05_batch_of_one(setup):
    entry, model, x, y, y_target = setup
    x1, y1 = x[:1], y[:1]
    t1 = None if y_target is None else y_target[:1]
    x_adv = run(entry, model, x1, y1, t1, eps=entry.eps_grid()[2])
    assert x_adv.shape == x1.shape
    assert violations(x_adv, x1, entry.eps_grid()[2], entry.p) == {"ball": 0, "box": 0, "nonfinite": 0}


@all_entries
def test_lib05_batched_equals_manual_batches(setup):
    """attack_batched with a partial last batch is the concatenation of per-batch calls sharing one generator."""
    entry, model, x, y, y_target = setup
    attack = entry.make(LpBall(entry.eps_grid()[2], p=entry.p))
    g = torch.Generator().manual_seed(4)
    got = attack_batched(attack, model, x, y, batch_size=23, generator=g, y_target=y_target)
    g = torch.Generator().manual_seed(4)
    parts = []
    for i in range(0, len(x), 23):
        t = None if y_target is None else y_target[i : i + 23]
        parts.append(attack(model, x[i : i + 23], y[i : i + 23], y_target=t, generator=g))
    want = attack.threat.project(torch.cat(parts), x)
    assert torch.equal(got, want)


@all_entries
def test_lib06_shape_and_float64_preserved(setup):
    entry, model, x, y, y_target = setup
    model64, x64 = copy.deepcopy(model).double(), x.double()
    x_adv = run(entry, model64, x64, y, y_target, eps=entry.eps_grid()[2])
    assert x_adv.shape == x.shape and x_adv.dtype == torch.float64 and x_adv.device == x.device
    assert violations(x_adv, x64, entry.eps_grid()[2], entry.p) == {"ball": 0, "box": 0, "nonfinite": 0}


@all_entries
def test_lib06_runs_under_no_grad(setup):
    """Evaluation loops hold torch.no_grad(); gradient attacks must still work there."""
    entry, model, x, y, y_target = setup
    with torch.no_grad():
        a = run(entry, model, x, y, y_target, eps=entry.eps_grid()[2])
    assert torch.equal(a, run(entry, model, x, y, y_target, eps=entry.eps_grid()[2]))


# -- the framework decides (EVAL-02) ----------------------------------------------------------------------


@dataclass(frozen=True)
class LyingAttack:
    """A stub attack that ignores its threat: it returns points far outside the ball and the box."""

    threat: LpBall

    def __call__(self, model, x, y, *, y_target=None, generator=None):
        noise = torch.randn(x.shape, generator=generator)
        return x + 10 * self.threat.eps * noise


@pytest.mark.parametrize("p", [math.inf, 2.0])
def test_eval02_attack_batched_clips_into_ball_and_box(p, small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.1, p=p)
    x_adv = attack_batched(LyingAttack(threat), small_model, x, y, batch_size=64, generator=torch.Generator())
    assert violations(x_adv, x, 0.1, p) == {"ball": 0, "box": 0, "nonfinite": 0}
    assert threat.contains(x_adv, x).all()


def test_eval02_attack_batched_rejects_nonfinite_and_misshapen_outputs(small_model, test_batch):
    x, y = test_batch

    @dataclass(frozen=True)
    class Broken:
        threat: LpBall
        out: Callable[[torch.Tensor], torch.Tensor]

        def __call__(self, model, x, y, *, y_target=None, generator=None):
            return self.out(x)

    with pytest.raises(NumericalError, match="NaN or Inf"):
        attack_batched(Broken(LpBall(0.1), lambda x: x * float("nan")), small_model, x, y)
    with pytest.raises(ValueError, match="attack returned"):
        attack_batched(Broken(LpBall(0.1), lambda x: x[:, 0]), small_model, x, y)
    with pytest.raises(TypeError, match="LpBall"):
        attack_batched(lambda m, x, y, **kw: x, small_model, x, y)


def test_predict_restores_mode_and_matches_argmax(small_model, test_batch):
    x, _ = test_batch
    model = copy.deepcopy(small_model).train()
    pred = predict(model, x, batch_size=7)
    assert model.training
    with torch.no_grad():
        assert torch.equal(pred, small_model(x).argmax(1))
    assert pred.shape == (len(x),) and pred.dtype == torch.int64


# -- configurations (LIB-01) ---------------------------------------------------------------------------------


def test_lib01_build_attack_and_to_dict():
    threat = LpBall(0.3, p=math.inf)
    pgd = build_attack("pgd", threat, steps=40)
    assert pgd == PGD(threat, steps=40)
    record = pgd.to_dict()
    assert record == {
        "attack": "pgd",
        "eps": 0.3,
        "p": "inf",
        "lower": 0.0,
        "upper": 1.0,
        "steps": 40,
        "step_size": pytest.approx(2.5 * 0.3 / 40),
        "random_start": True,
        "restarts": 1,
        "loss": "ce",
    }
    assert PGD(threat, step_size=0.01).to_dict()["step_size"] == 0.01
    assert FGSM(LpBall(1.0, p=2)).to_dict() == {
        "attack": "fgsm", "eps": 1.0, "p": 2.0, "lower": 0.0, "upper": 1.0, "loss": "ce"
    }  # fmt: skip
    assert Linear(threat).to_dict()["attack"] == "linear"


def test_lib01_build_attack_rejects_unknown_names_and_params():
    names = r"\['apgd', 'apgd-t', 'ensemble', 'fab', 'fab-t', 'fgsm', 'fgsm-rs', 'linear', 'pgd', 'square'\]"
    with pytest.raises(ValueError, match=rf"unknown attack 'cw'.*{names}"):
        build_attack("cw", LpBall(0.1))
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['nb_iter'\].*valid: \['steps'"):
        build_attack("pgd", LpBall(0.1), nb_iter=10)
    with pytest.raises(ValueError, match=r"valid: \[\]"):
        build_attack("linear", LpBall(0.1), steps=3)


@pytest.mark.parametrize(
    ("params", "error", "match"),
    [
        ({"steps": -1}, ValueError, "steps"),
        ({"steps": 2.5}, TypeError, "steps"),
        ({"steps": True}, TypeError, "steps"),
        ({"step_size": 0}, ValueError, "step_size"),
        ({"step_size": -0.1}, ValueError, "step_size"),
        ({"step_size": float("nan")}, ValueError, "step_size"),
        ({"step_size": float("inf")}, ValueError, "step_size"),
        ({"restarts": 0}, ValueError, "restarts"),
        ({"restarts": 1.5}, TypeError, "restarts"),
        ({"random_start": "yes"}, TypeError, "random_start"),
        ({"loss": "hinge"}, ValueError, r"loss must be one of \['ce', 'dlr', 'dlr-targeted', 'margin'\]"),
    ],
)
def test_inp01_pgd_config_validation(params, error, match):
    with pytest.raises(error, match=match):
        build_attack("pgd", LpBall(0.1), **params)


def test_inp01_configs_need_a_threat():
    for cls in ATTACKS.values():
        with pytest.raises(TypeError, match="LpBall"):
            cls(0.1)
    with pytest.raises(ValueError, match="loss"):
        FGSM(LpBall(0.1), loss="xent")
