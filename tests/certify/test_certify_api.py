"""``certify``: verdicts, records, the registry, and the cross-check with attacks (CERT-05, EVAL-14)."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import apgd, pgd
from trustlab.certify import (
    METHODS,
    AlphaCROWN,
    Certificate,
    Verdict,
    build_method,
    certify,
    crown_rows,
    margin_bounds,
    to_network,
)

NAMES = ["ibp", "crown-ibp", "crown", "alpha-crown"]  # the bound-propagation methods (solvers: test_solvers.py)


@pytest.mark.parametrize("method", NAMES)
def test_certificates_per_example_with_margins_for_every_other_class(method, small_model, test_batch):
    x, y = test_batch[0][:12], test_batch[1][:12]
    certs = certify(small_model, x, y, LpBall(0.01), method=method, batch_size=5)
    assert [c.index for c in certs] == list(range(12))
    wrong = small_model(x).argmax(1) != y
    for c in certs:
        assert isinstance(c, Certificate) and c.method == method and c.seconds > 0
        assert c.label == int(y[c.index]) and c.classes == tuple(j for j in range(10) if j != c.label)
        assert len(c.margin_lower) == 9 and c.min_margin_lower == min(c.margin_lower)
        if wrong[c.index]:
            assert c.verdict is Verdict.FALSIFIED
            assert torch.equal(c.counterexample, x[c.index])  # the clean input: in the threat set, misclassified
        else:
            assert c.counterexample is None
            proven = c.min_margin_lower > c.settings["margin_tol"]
            assert c.verdict is (Verdict.CERTIFIED if proven else Verdict.UNKNOWN)
        record = c.to_record()
        assert json.loads(json.dumps(record)) == record
        assert record["eps"] == 0.01 and record["p"] == "inf" and record["verdict"] == c.verdict.value
    assert any(c.verdict is Verdict.CERTIFIED for c in certs)


def test_misclassified_point_is_falsified_with_itself():
    model = nn.Sequential(nn.Linear(2, 2)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(2))
        model[0].bias.zero_()
    x = torch.tensor([[0.9, 0.1], [0.1, 0.9], [0.5, 0.48]])
    y = torch.tensor([0, 0, 0])
    certs = certify(model, x, y, LpBall(0.05), method="ibp")
    assert [c.verdict for c in certs] == [Verdict.CERTIFIED, Verdict.FALSIFIED, Verdict.UNKNOWN]
    assert torch.equal(certs[1].counterexample, x[1])
    assert certs[0].margin_lower[0] == pytest.approx(0.8 - 2 * 0.05, abs=1e-6)  # exact for a linear model


def test_cert10_verdicts_do_not_depend_on_batch_size(small_cnn, test_batch):
    x, y = test_batch[0][:7], test_batch[1][:7]
    one = certify(small_cnn, x, y, LpBall(0.02), method="crown", batch_size=1)
    seven = certify(small_cnn, x, y, LpBall(0.02), method="crown", batch_size=7)
    assert [c.verdict for c in one] == [c.verdict for c in seven]
    for a, b in zip(one, seven):
        assert a.margin_lower == pytest.approx(b.margin_lower, abs=1e-5)


@pytest.mark.parametrize("p", [math.inf, 2.0], ids=["linf", "l2"])
def test_cert05_certified_examples_survive_pgd_100x10_and_apgd(p, small_model, small_cnn, test_batch):
    """EVAL-14: certified by any method implies that no attack breaks the example (here PGD-100 with 10
    restarts and APGD-CE). Certificates are taken at a radius where about half of the examples are certified."""
    x, y = test_batch
    eps = 0.03 if p == math.inf else 0.3
    threat = LpBall(eps, p)
    for model, n in ((small_model, 100), (small_cnn, 40)):
        certified = torch.zeros(n, dtype=torch.bool)
        for method in NAMES:
            certs = certify(model, x[:n], y[:n], threat, method=method)
            certified |= torch.tensor([c.certified for c in certs])
        assert int(certified.sum()) >= 5
        xc, yc = x[:n][certified], y[:n][certified]
        gen = torch.Generator().manual_seed(0)
        x_pgd = pgd(model, xc, yc, threat, steps=100, restarts=10, generator=gen)
        x_apgd = apgd(model, xc, yc, threat, steps=100, generator=gen)
        for x_adv in (x_pgd, x_apgd):
            assert bool(threat.contains(x_adv, xc, atol=1e-5).all())
            assert bool((model(x_adv).argmax(1) == yc).all()), "a certified example was broken: unsound bound"


def test_registry_and_configs():
    assert set(METHODS) >= {"ibp", "crown-ibp", "crown", "alpha-crown", "lp", "milp", "sdp"}
    assert build_method("alpha-crown", steps=5) == AlphaCROWN(steps=5)
    with pytest.raises(ValueError, match="unknown certification method 'gurobi'"):
        build_method("gurobi")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['lr'\]"):
        build_method("alpha-crown", lr=0.1)
    with pytest.raises(ValueError, match="step_size must be finite and > 0, got 0"):
        AlphaCROWN(step_size=0)
    with pytest.raises(TypeError, match="steps must be an int"):
        AlphaCROWN(steps=2.5)


def test_certify_rejects_bad_arguments(small_model, test_batch):
    x, y = test_batch[0][:3], test_batch[1][:3]
    with pytest.raises(ValueError, match="inputs must lie in"):
        certify(small_model, x + 2, y, LpBall(0.1))
    with pytest.raises(ValueError, match=r"y must have shape \(3,\)"):
        certify(small_model, x, y[:2], LpBall(0.1))
    with pytest.raises(ValueError, match="label 10 out of range"):
        certify(small_model, x, torch.tensor([0, 1, 10]), LpBall(0.1))
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        certify(small_model, x, y, LpBall(0.1), batch_size=0)
    with pytest.raises(TypeError, match="method must be one of"):
        certify(small_model, x, y, LpBall(0.1), method=3)


def test_inputs_and_model_are_not_modified(small_cnn, test_batch):
    x, y = test_batch[0][:4].clone(), test_batch[1][:4].clone()
    x0, y0 = x.clone(), y.clone()
    state = {k: v.clone() for k, v in small_cnn.state_dict().items()}
    grads = [None if p.grad is None else p.grad.clone() for p in small_cnn.parameters()]  # left by the fixture
    certify(small_cnn, x, y, LpBall(0.05), method="alpha-crown")
    margin_bounds(small_cnn, x, y, LpBall(0.05))
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert all(torch.equal(v, small_cnn.state_dict()[k]) for k, v in state.items())
    for g, p in zip(grads, small_cnn.parameters()):
        assert (g is None and p.grad is None) or torch.equal(g, p.grad)
    assert not small_cnn.training


def test_crown_rows_counts_the_backward_passes(small_cnn, test_batch):
    net = to_network(small_cnn, test_batch[0][:1])
    # hidden layers: 8 * 8 * 8 conv units and 32 linear units, both signs; 9 margins, both signs
    assert crown_rows(net, 9) == 2 * (8 * 64 + 32) + 2 * 9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_certify_on_cuda_equals_cpu(small_cnn, test_batch):
    x, y = test_batch[0][:8], test_batch[1][:8]
    cpu = certify(small_cnn, x, y, LpBall(0.02), method="crown")
    model = copy.deepcopy(small_cnn).cuda()  # a copy on the GPU; the fixture stays on the CPU
    gpu = certify(model.eval(), x.cuda(), y.cuda(), LpBall(0.02), method="crown")
    assert [c.verdict for c in cpu] == [c.verdict for c in gpu]
    for a, b in zip(cpu, gpu):
        assert a.margin_lower == pytest.approx(b.margin_lower, abs=1e-4)
