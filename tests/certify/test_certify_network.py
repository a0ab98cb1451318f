"""The network form: what converts (and computes the model's function), and what is refused (CERT-08)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustlab import LpBall, UnsupportedLayerError
from trustlab.certify import CROWN, Network, certify, crown_bounds, ibp_bounds, margin_bounds, to_network
from trustlab.certify.operators import Conv, Dense, Elementwise, Reshape
from trustlab.models import build_model


def _randomise_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(m.running_var.shape, generator=gen))
                m.weight.copy_(torch.randn(m.weight.shape, generator=gen))
                m.bias.copy_(torch.randn(m.bias.shape, generator=gen))
    return model


class Normalize(nn.Module):
    """``(x - mean) / std`` written in forward, with a buffer and a Python float."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.1307]).view(1, 1, 1, 1))
        self.std = 0.3081

    def forward(self, x):
        return (x - self.mean) / self.std


class Custom(nn.Module):
    """Every supported op, some as functions inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = Normalize()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 12)
        self.bn1 = nn.BatchNorm1d(12)
        self.out = nn.Linear(12, 3)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(self.norm(x))))
        x = F.adaptive_avg_pool2d(self.pool(x), 4)
        x = x.view(x.size(0), -1)
        x = torch.relu(self.bn1(self.fc(x)))
        return self.out(2.0 * x - 1.0)


def test_supported_ops_convert_and_compute_the_model():
    gen = torch.Generator().manual_seed(0)
    model = _randomise_batchnorm(Custom(), 1).eval()
    x = torch.rand(5, 1, 16, 16, generator=gen)
    net = to_network(model, x)
    assert isinstance(net, Network) and net.depth == 2 and net.num_classes == 3
    kinds = [[type(op) for op in block.ops] for block in net.blocks]
    assert kinds[0] == [Elementwise, Elementwise, Conv, Elementwise]  # BatchNorm merged into the conv's block
    assert kinds[1] == [Conv, Conv, Reshape, Dense, Elementwise]
    assert kinds[2] == [Elementwise, Elementwise, Dense]
    torch.testing.assert_close(net.forward(x), model(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["mlp", "cnn-small", "cnn-large"])
def test_registry_models_convert(name):
    model = build_model(name, in_shape=(1, 28, 28), num_classes=10, seed=0).eval()
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    if name == "cnn-large":  # max pooling
        with pytest.raises(UnsupportedLayerError, match="MaxPool2d"):
            to_network(model, x)
        return
    torch.testing.assert_close(to_network(model, x).forward(x), model(x), atol=1e-5, rtol=1e-5)


def test_batchnorm_bounds_equal_the_folded_layer():
    """BatchNorm after a conv bounds exactly as the conv with BatchNorm folded into its weights."""
    gen = torch.Generator().manual_seed(2)
    conv, bn = nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3)
    with_bn = _randomise_batchnorm(nn.Sequential(conv, bn, nn.ReLU(), nn.Flatten(), nn.Linear(3 * 36, 4)), 3).eval()
    folded = nn.Conv2d(1, 3, 3)
    with torch.no_grad():
        s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        folded.weight.copy_(conv.weight * s.view(3, 1, 1, 1))
        folded.bias.copy_((conv.bias - bn.running_mean) * s + bn.bias)
    plain = nn.Sequential(folded, nn.ReLU(), nn.Flatten(), with_bn[4]).eval()
    x = torch.rand(4, 1, 8, 8, generator=gen)
    for bound in (ibp_bounds, crown_bounds):
        for p in (math.inf, 2.0):
            a, b = bound(with_bn, x, LpBall(0.1, p)), bound(plain, x, LpBall(0.1, p))
            torch.testing.assert_close(a.lower, b.lower, atol=1e-4, rtol=1e-4)


def test_margin_bounds_are_differentiable_in_every_parameter():
    model = _randomise_batchnorm(Custom(), 4).eval()
    x = torch.rand(3, 1, 16, 16, generator=torch.Generator().manual_seed(5))
    y = torch.tensor([0, 1, 2])
    for method in ("ibp", "crown-ibp", "crown"):
        lb = margin_bounds(model, x, y, LpBall(0.02), method=method)
        assert lb.shape == (3, 3) and bool((lb.gather(1, y.unsqueeze(1)) == 0).all())
        params = [p for p in model.parameters()]
        grads = torch.autograd.grad(F.cross_entropy(-lb, y), params)
        assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
        assert all(float(g.abs().sum()) > 0 for g in grads), method


class Abs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.pool = nn.MaxPool2d(2)
        self.act = nn.GELU()
        self.fc = nn.Linear(2 * 3 * 3, 3)

    def forward(self, x):
        return self.fc(self.act(self.pool(torch.abs(self.conv(x)))).flatten(1))


class Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2, self.out = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        return self.out(h + self.fc2(h))


class Square(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x * x)


def _dropout_net():
    return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Dropout(0.5), nn.Linear(4, 2)).eval()


def _train_mode_bn_net():
    net = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 2)).eval()
    net[1].train()
    return net


@dataclass(frozen=True)
class _Spy(CROWN):
    """A method configuration that fails if asked for a bound."""

    def bounds(self, *args, **kwargs):
        raise AssertionError("a bound was computed for an unsupported model")


CASES = {  # model factory, example input, every fragment the message must contain
    "abs-maxpool-gelu": (lambda: Abs().eval(), (1, 8, 8), ["torch.abs in", "pool (MaxPool2d)", "act (GELU)"]),
    "residual": (lambda: Residual().eval(), (4,), ["operator.add", "residual", "feeds 2 operations"]),
    "product": (lambda: Square().eval(), (4,), ["operator.mul", "2 input-dependent"]),
    "dropout": (_dropout_net, (4,), ["2 (Dropout)"]),
    "train-mode": (lambda: nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)).train(), (4,),
                   ["training mode"]),
    "train-mode-bn": (_train_mode_bn_net, (4,), ["training mode", "1 (BatchNorm1d)"]),
    "quantized": (lambda: build_model("cnn-small-quantized", in_shape=(1, 28, 28), num_classes=10, seed=0).eval(),
                  (1, 28, 28), ["torch.round in 0 (InputQuantization)"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_cert08_unsupported_ops_are_all_listed_before_any_bound(case):
    make, shape, fragments = CASES[case]
    model = make()
    x = torch.rand(2, *shape, generator=torch.Generator().manual_seed(0))
    y = torch.zeros(2, dtype=torch.long)
    with pytest.raises(UnsupportedLayerError) as info:
        certify(model, x, y, LpBall(0.1), method=_Spy())
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    assert len(info.value.ops) >= (3 if case == "abs-maxpool-gelu" else 1)
    assert isinstance(info.value, ValueError)


def test_cert08_every_op_of_a_resnet_is_listed():
    model = build_model("preact-resnet18", in_shape=(3, 8, 8), num_classes=10, seed=0).eval()
    with pytest.raises(UnsupportedLayerError) as info:
        to_network(model, torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(0)))
    adds = [op for op in info.value.ops if op.startswith("operator.add")]
    assert len([a for a in adds if "combines" in a]) == 8  # one per residual block


def test_data_dependent_forward_is_refused():
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            if x.sum() > 0:  # torch.fx cannot follow a branch on data
                return self.fc(x)
            return -self.fc(x)

    with pytest.raises(UnsupportedLayerError, match="torch.fx cannot trace"):
        to_network(Branchy().eval(), torch.rand(2, 4))


def test_bad_arguments_name_the_value():
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.rand(2, 4, generator=torch.Generator().manual_seed(0))
    with pytest.raises(TypeError, match="threat must be a trustlab.LpBall"):
        ibp_bounds(model, x, 0.1)
    with pytest.raises(ValueError, match=r"spec must have shape \(N=2, S, K=3\)"):
        ibp_bounds(model, x, LpBall(0.1), spec=torch.zeros(2, 1, 5))
    with pytest.raises(TypeError, match="model must be a torch.nn.Module"):
        to_network("model", x)
    with pytest.raises(ValueError, match="logits of per-example shape"):
        to_network(nn.Sequential(nn.Linear(4, 1)).eval(), x)
