"""BPDA (straight-through) through a non-differentiable quantization, and EOT of the logits over a randomized model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import APGD, BPDA, EOT, EOTAttack, pgd, predict


class Quantize(nn.Module):
    """Rounds every input to the nearest multiple of 1/4: a defense whose gradient is zero almost everywhere."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * 4) / 4


def input_grad(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    x_in = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(nn.functional.cross_entropy(model(x_in), y, reduction="sum"), x_in)
    return g


def test_bpda_forward_is_the_quantized_model_and_its_gradient_is_not_zero(small_model, test_batch):
    x, y = test_batch
    masked = nn.Sequential(Quantize(), small_model).eval()
    bpda = BPDA(Quantize().eval(), small_model)
    with torch.no_grad():
        assert torch.equal(bpda(x), masked(x))
    g_masked, g_bpda = input_grad(masked, x, y), input_grad(bpda, x, y)
    assert torch.count_nonzero(g_masked) == 0  # round() has zero derivative: the defense masks every gradient
    zero_rows = (g_bpda.flatten(1).abs().sum(1) == 0).float().mean()
    assert zero_rows == 0
    # straight-through: the gradient is the model's gradient at the quantized point
    assert torch.allclose(g_bpda, input_grad(small_model, Quantize()(x), y))


def test_pgd_through_bpda_breaks_what_plain_pgd_cannot(small_model, test_batch):
    """On the quantized model, PGD on the model itself only has its random start (its gradient is zero), while
    PGD through BPDA follows the gradient of the model behind the quantization. Success is judged on the
    quantized model in both cases."""
    x, y = test_batch
    masked = nn.Sequential(Quantize(), small_model).eval()
    threat = LpBall(0.2)
    correct = predict(masked, x) == y
    plain = pgd(masked, x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
    through = pgd(BPDA(Quantize().eval(), small_model), x, y, threat, steps=20, generator=torch.Generator().manual_seed(0))
    robust_plain = correct & (predict(masked, plain) == y)
    robust_bpda = correct & (predict(masked, through) == y)
    n_correct = int(correct.sum())
    # measured: 178 of 200 correct on the quantized model; plain PGD leaves 173 robust, PGD through BPDA 0
    assert int(robust_plain.sum()) >= 0.9 * n_correct  # the masked gradient lets plain PGD break almost nothing
    assert int(robust_bpda.sum()) <= 0.1 * n_correct
    assert int((robust_plain & ~robust_bpda).sum()) >= 0.5 * n_correct


def test_bpda_checks_its_arguments(small_model):
    with pytest.raises(TypeError, match="preprocess must be callable"):
        BPDA(0.25, small_model)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        BPDA(Quantize(), lambda x: x)
    with pytest.raises(ValueError, match="preprocess must keep the shape"):
        BPDA(lambda x: x.flatten(1), small_model)(torch.zeros(2, 1, 8, 8))


def dropout_model(small_model: nn.Module) -> nn.Module:
    """The digits MLP with Dropout(0.5) before its last layer, left in training mode: a randomized forward."""
    m = copy.deepcopy(small_model)
    return nn.Sequential(m[0], m[1], m[2], nn.Dropout(0.5), m[3]).train()


def gradient_spread(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, samples: int, draws: int = 20) -> float:
    """Mean over inputs of the variance, across ``draws`` calls, of the input gradient of EOT(model, samples)."""
    with torch.random.fork_rng():  # Dropout draws from the global RNG; the test leaves it as it found it
        torch.manual_seed(0)
        grads = torch.stack([input_grad(EOT(model, samples=samples), x, y) for _ in range(draws)])
    return float(grads.var(dim=0).mean())


def test_eot_reduces_the_variance_of_the_gradient(small_model, test_batch):
    x, y = test_batch[0][:50], test_batch[1][:50]
    model = dropout_model(small_model)
    spread_1, spread_16 = gradient_spread(model, x, y, samples=1), gradient_spread(model, x, y, samples=16)
    # the mean of 16 independent draws has 1/16 of the variance of one (measured ratio 0.044); the loss
    # is taken at the averaged logits, so the ratio is not exactly 1/16
    assert spread_16 < spread_1 / 8
    assert model.training  # EOT changes no mode


def test_eot_of_a_deterministic_model_is_the_model(small_model, test_batch):
    x, y = test_batch
    eot = EOT(small_model, samples=3)
    assert not eot.training  # follows the model: an attack does not warn about a wrapper's own flag
    with torch.no_grad():
        assert torch.allclose(eot(x), small_model(x), atol=1e-6)
    assert torch.allclose(input_grad(eot, x, y), input_grad(small_model, x, y), atol=1e-6)
    with pytest.raises(ValueError, match="samples"):
        EOT(small_model, samples=0)


def test_eot_attack_runs_the_attack_on_eot_and_records_the_samples(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.1)
    apgd = APGD(threat, steps=5)
    wrapped = EOTAttack(apgd, samples=2)
    assert wrapped.threat == threat
    g = torch.Generator
    # on a deterministic model EOT changes only the floating-point rounding of the logits
    a = wrapped(small_model, x, y, generator=g().manual_seed(0))
    b = apgd(small_model, x, y, generator=g().manual_seed(0))
    assert (predict(small_model, a) != y).sum() == (predict(small_model, b) != y).sum()
    record = wrapped.to_dict()
    assert record == {**apgd.to_dict(), "eot_samples": 2, "eot": "mean of logits"}
    assert math.isinf(threat.p)


def test_input_quantization_rounds_to_its_levels():
    from trustlab.models import InputQuantization

    x = torch.tensor([0.0, 0.12, 0.13, 0.5, 0.62, 0.63, 1.0])
    assert torch.equal(InputQuantization(5)(x), torch.round(x * 4) / 4)  # FX-MASK(a)
    assert torch.equal(InputQuantization(2)(x), torch.tensor([0.0, 0, 0, 0, 1, 1, 1]))
    with pytest.raises(ValueError, match="levels"):
        InputQuantization(1)


def test_through_bpda_keeps_the_forward_and_unmasks_the_gradient(small_model, test_batch):
    """``through_bpda`` finds the leading straight-through layer of a Sequential: forward values are the model's,
    the input gradient is the classifier's at the quantized point (not zero), and the layers are shared."""
    from trustlab.attacks import bpda_split, through_bpda
    from trustlab.models import InputQuantization

    x, y = test_batch
    masked = nn.Sequential(InputQuantization(5), *small_model).eval()
    wrapped = through_bpda(masked)
    assert not wrapped.training
    with torch.no_grad():
        assert torch.equal(wrapped(x), masked(x))
    assert torch.count_nonzero(input_grad(masked, x, y)) == 0
    assert torch.allclose(input_grad(wrapped, x, y), input_grad(small_model, torch.round(x * 4) / 4, y))
    pre, rest = bpda_split(masked)
    assert len(pre) == 1 and rest[0] is small_model[0]


def test_bpda_split_refuses_what_it_cannot_approximate(small_model):
    from trustlab.attacks import bpda_split
    from trustlab.models import InputQuantization

    with pytest.raises(ValueError, match="starts with Flatten.*nothing to approximate"):
        bpda_split(small_model)
    with pytest.raises(ValueError, match="nn.Sequential"):
        bpda_split(BPDA(Quantize(), small_model))
    with pytest.raises(ValueError, match="only preprocessing"):
        bpda_split(nn.Sequential(InputQuantization(5)))
