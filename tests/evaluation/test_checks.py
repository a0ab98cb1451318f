"""Each gradient-masking check fires on a model built to trigger it and stays silent on a healthy one (EVAL-09,
EVAL-10); the checks never change the model."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustlab.evaluation.checks import (
    MODEL_CHECKS, blackbox_beats_whitebox, few_classes_for_dlr, inner_optimization, not_converged, probabilities,
    randomized, run_checks, training_mode, zero_gradients,
)
from trustlab.reports.runs import AttackView
from trustlab.threat import LpBall

THREAT = LpBall(0.1, math.inf, 0.0, 1.0)


class Quantize(nn.Module):
    """Input quantization to ``levels`` grey levels: its gradient is zero almost everywhere (FX-MASK(a))."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * (self.levels - 1)) / (self.levels - 1)


class MCDropout(nn.Module):
    """Dropout that stays on in eval mode (``training=True`` hard-coded), in front of a classifier (FX-MASK(c))."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(F.dropout(x, 0.3, training=True))


class RandomResize(nn.Module):
    """Resize to a random size in [8, 12] and back (Xie et al. 2018's randomization, FX-MASK(c))."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = int(torch.randint(9, 13, ()))
        up = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return self.net(F.interpolate(up, size=x.shape[-2:], mode="bilinear", align_corners=False))


class Purify(nn.Module):
    """A test-time optimization loop in forward: a few gradient steps on the input before classifying
    (FX-MASK(d)); ``use_backward`` takes them with ``Tensor.backward`` instead of ``torch.autograd.grad``."""

    def __init__(self, net: nn.Module, *, use_backward: bool = False) -> None:
        super().__init__()
        self.net, self.use_backward = net, use_backward

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = x.detach()
        with torch.enable_grad():
            for _ in range(3):
                z = z.clone().requires_grad_(True)
                energy = -self.net(z).logsumexp(dim=1).sum()
                if self.use_backward:
                    energy.backward()
                    g = z.grad
                else:
                    (g,) = torch.autograd.grad(energy, z)
                z = (z - 0.01 * g.sign()).clamp(0, 1).detach()
        return self.net(z)


@pytest.fixture()
def batch(test_batch):
    x, y = test_batch
    return x[:100], y[:100]


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def grads(model: nn.Module) -> list[torch.Tensor | None]:
    return [None if p.grad is None else p.grad.clone() for p in model.parameters()]


def same_grads(model: nn.Module, before: list[torch.Tensor | None]) -> bool:
    return all((g is None and p.grad is None) or (g is not None and p.grad is not None and torch.equal(g, p.grad))
               for p, g in zip(model.parameters(), before))


def test_eval10_healthy_model_raises_no_flag_and_is_not_changed(small_model, batch):
    x, y = batch
    x0, before, rng, g0 = x.clone(), state(small_model), torch.get_rng_state(), grads(small_model)
    grad, backward = torch.autograd.grad, torch.autograd.backward
    assert run_checks(small_model, x, y, THREAT, losses=("ce", "dlr")) == []
    assert torch.equal(x, x0) and not small_model.training
    assert all(torch.equal(v, before[k]) for k, v in small_model.state_dict().items())
    assert same_grads(small_model, g0)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.autograd.grad is grad and torch.autograd.backward is backward  # the spies are gone


def test_eval10_healthy_cnn_raises_no_flag(small_cnn, batch):
    assert run_checks(small_cnn, *batch, THREAT) == []


def test_eval10_zero_gradients_fires_on_input_quantization(small_model, batch):
    x, y = batch
    masked = nn.Sequential(Quantize(), small_model).eval()
    flag = zero_gradients(masked, x, y)
    assert flag is not None and flag.code == "zero_gradients" and flag.severity == "error"
    assert flag.evidence["zero"] == len(x) and "BPDA" in flag.message and "square" in flag.message
    assert zero_gradients(small_model, x, y) is None
    assert [f.code for f in run_checks(masked, x, y, THREAT)] == ["zero_gradients"]


def test_eval10_zero_gradients_share_threshold_is_stated(small_model, batch):
    x, y = batch
    # quantization on 10 of 100 inputs: under the default share (20%), over EVAL-10's "any example"
    masked = nn.Sequential(Quantize(), small_model).eval()
    part = PartQuantized(masked, small_model, 10)
    assert zero_gradients(part, x, y) is None
    flag = zero_gradients(part, x, y, min_share=0.0)
    assert flag is not None and flag.evidence["zero"] == 10 and flag.evidence["share"] == pytest.approx(0.1)


class PartQuantized(nn.Module):
    """The first ``k`` inputs of a batch go through ``masked``, the rest through ``net``."""

    def __init__(self, masked: nn.Module, net: nn.Module, k: int) -> None:
        super().__init__()
        self.masked, self.net, self.k = masked, net, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.masked(x[: self.k]), self.net(x[self.k :])])


def test_eval10_probabilities_fires_on_softmax_output(small_model, batch):
    x, y = batch
    soft = nn.Sequential(small_model, nn.Softmax(dim=1)).eval()
    flag = probabilities(soft, x)
    assert flag is not None and flag.code == "probabilities" and "pass logits" in flag.message
    assert probabilities(small_model, x) is None
    assert "probabilities" in [f.code for f in run_checks(soft, x, y, THREAT)]


def test_eval10_randomized_and_training_mode_fire_on_dropout_left_on(small_model, batch):
    x, y = batch
    model = MCDropout(small_model).train()
    flags = {f.code: f for f in run_checks(model, x, y, THREAT)}
    assert {"randomized", "training_mode"} <= set(flags)
    assert "--ensemble-version rand" in flags["randomized"].message and "model.eval()" in flags["training_mode"].message
    assert model.training and small_model.training  # modes restored as found
    model.eval()
    assert not small_model.training


def test_eval10_training_mode_fires_on_a_module_in_train_mode_and_dropout_module_is_off_in_eval(small_model, batch):
    x, y = batch
    model = nn.Sequential(nn.Dropout(0.3), small_model)
    model.train()
    flag = training_mode(model)
    assert flag is not None and flag.evidence["n_modules"] == len(list(model.modules()))
    assert randomized(model, x) is None  # attacks run it in eval mode, where nn.Dropout is the identity
    assert model.training
    model.eval()
    assert training_mode(model) is None


def test_eval10_randomized_fires_on_a_random_resize(small_model, batch):
    x, y = batch
    model = RandomResize(small_model).eval()
    rng = torch.get_rng_state()
    flag = randomized(model, x)
    assert flag is not None and flag.code == "randomized" and flag.evidence["passes"] == 5
    assert torch.equal(torch.get_rng_state(), rng)  # the passes ran on a fork of the global RNG
    assert randomized(small_model, x) is None


@pytest.mark.parametrize("use_backward", [False, True])
def test_eval10_inner_optimization_fires_on_a_gradient_loop_in_forward(small_model, batch, use_backward):
    x, y = batch
    model = Purify(small_model, use_backward=use_backward).eval()
    g0 = grads(small_model)
    flag = inner_optimization(model, x)
    assert flag is not None and flag.code == "inner_optimization" and "BPDA/EOT" in flag.message
    assert flag.evidence["autograd_calls"] == 3 and flag.evidence["grad_enabled_in"]
    assert same_grads(small_model, g0)  # gradients the loop accumulated are put back
    assert inner_optimization(small_model, x) is None
    assert "inner_optimization" in [f.code for f in run_checks(model, x, y, THREAT)]


def test_eval10_few_classes_for_dlr():
    assert few_classes_for_dlr(2, ("dlr",)).code == "few_classes_for_dlr"
    assert "use the cross-entropy loss (CE)" in few_classes_for_dlr(2, ("dlr",)).message
    assert few_classes_for_dlr(3, ("dlr",)) is None
    assert few_classes_for_dlr(3, ("dlr-targeted",)).evidence["min_classes"] == 4
    assert few_classes_for_dlr(2, ("ce", "margin")) is None


def test_eval10_few_classes_for_dlr_from_run_checks(linear_binary):
    model, x, y = linear_binary
    threat = LpBall(0.1, math.inf, 0.0, 1.0)
    assert [f.code for f in run_checks(model, x, y, threat, losses=("dlr",))] == ["few_classes_for_dlr"]
    assert run_checks(model, x, y, threat, losses=("ce",)) == []


def rows(robust: set[int], n: int = 20) -> list[dict]:
    return [{"idx": i, "y": 0, "pred": 0, "correct": True, "adv_pred": 0 if i in robust else 1,
             "adv_correct": i in robust, "robust": i in robust} for i in range(n)]


def test_eval09_blackbox_beats_whitebox_per_example():
    pgd, apgd = rows(set(range(10))), rows(set(range(12)))
    # Square breaks 7, 8, 9 that PGD and APGD both missed: the per-example worst case of the white-box attacks
    flag = blackbox_beats_whitebox({"pgd": pgd, "apgd": apgd, "square": rows(set(range(7)))}, run="r")
    assert flag is not None and flag.code == "blackbox_beats_whitebox" and flag.run == "r"
    assert flag.evidence["beaten"] == 3 and flag.evidence["idx"] == [7, 8, 9] and flag.evidence["white_acc"] == 0.5
    # one example is tolerated; points that Square breaks and PGD breaks too do not count
    assert blackbox_beats_whitebox({"pgd": pgd, "square": rows(set(range(9)))}) is None
    assert blackbox_beats_whitebox({"pgd": pgd, "square-linf-eps0.1-x": rows(set(range(5)) | {11})}) is not None
    assert blackbox_beats_whitebox({"pgd": pgd, "apgd": apgd}) is None
    assert blackbox_beats_whitebox({"square": pgd}) is None


def view(name: str, robust: int, **params) -> AttackView:
    pid = "-".join(f"{k}{v}" for k, v in sorted(params.items()))
    return AttackView(id=f"{name}-{pid}", name=name, eps=0.1, p=math.inf, threat={"eps": 0.1, "p": "inf"},
                      params=params, seed=0, records=tuple(rows(set(range(robust)))), summary={}, config={},
                      path=Path("."))


def test_not_converged_when_doubling_the_restarts_changes_robust_accuracy():
    (flag,) = not_converged([view("apgd", 12, steps=100, restarts=1), view("apgd", 10, steps=100, restarts=2)])
    assert flag.code == "pgd_not_converged" and flag.evidence["restarts"] == [1, 2]
    assert "increase the restarts" in flag.message
    assert not_converged([view("apgd", 12, steps=100, restarts=1), view("apgd", 12, steps=100, restarts=2)]) == []
    # a change of one example in 20 is 5 pp; a stated margin of 10 pp lets it pass
    pair = [view("apgd", 12, steps=100, restarts=1), view("apgd", 11, steps=100, restarts=2)]
    assert not_converged(pair, gap=0.1) == [] and len(not_converged(pair)) == 1


def test_run_checks_adds_the_record_checks_when_given(small_model, batch):
    x, y = batch
    records = {"pgd": rows(set(range(10))), "square": rows(set(range(7)))}
    views = [view("pgd", 12, steps=10, restarts=1), view("pgd", 10, steps=20, restarts=1)]
    flags = run_checks(small_model, x, y, THREAT, records_by_attack=records, evaluations=views, run="r")
    assert [f.code for f in flags] == ["blackbox_beats_whitebox", "pgd_not_converged"]
    assert flags[0].evidence["eps"] == 0.1 and all(f.run == "r" for f in flags)


def test_every_model_check_is_described_and_bad_arguments_raise(small_model, batch):
    x, y = batch
    assert set(MODEL_CHECKS) == {"training_mode", "probabilities", "randomized", "zero_gradients",
                                 "inner_optimization", "few_classes_for_dlr"}
    with pytest.raises(TypeError, match="LpBall"):
        run_checks(small_model, x, y, 0.1)
    with pytest.raises(ValueError, match="non-empty"):
        run_checks(small_model, x[:0], y[:0], THREAT)
