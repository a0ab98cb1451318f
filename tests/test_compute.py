"""``trustlab.compute``: bf16 autocast, channels-last and torch.compile as one seam, checked on the CPU.

bf16 runs only the model's forward pass in bfloat16: the attacks' perturbations stay float32 and inside the ball
and the box (EVAL-01, LIB-06); channels-last and compile change only float rounding.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trustlab import LpBall
from trustlab.attacks import build_attack
from trustlab.compute import Compute, Prepared, check_compute, prepare
from trustlab.models import build_model

CIFAR_SMALL = (3, 16, 16)  # preact-resnet18 accepts inputs from 8x8; small keeps the test fast


def _data(shape, n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, *shape, generator=g), torch.randint(0, 10, (n,), generator=g)


def _model(name="cnn-small", shape=(1, 28, 28)):
    return build_model(name, in_shape=shape, num_classes=10, seed=0).eval()


def _input_grad(model, x, y):
    x_in = x.clone().requires_grad_(True)
    logits = model(x_in)
    (g,) = torch.autograd.grad(F.cross_entropy(logits, y), x_in)
    return logits.detach(), g


def test_default_compute_is_the_model_itself():
    """The fp32 path is untouched: prepare returns the very module, so every record stays byte-identical."""
    model = _model()
    assert prepare(model, Compute(), "cpu") is model
    assert Compute().is_default and Compute().identity() == {}
    assert Compute("bf16").identity() == {"precision": "bf16"}
    assert Compute(channels_last=True, compile=True).identity() == {}  # layout and compilation: rounding only


@pytest.mark.parametrize("kwargs, match", [
    ({"precision": "fp16"}, r"precision must be one of \['fp32', 'bf16'\], got 'fp16'"),
    ({"precision": "bf16", "channels_last": "yes"}, r"channels_last must be true or false, got 'yes'"),
    ({"compile": 1}, r"compile must be true or false, got 1"),
])
def test_lib01_bad_compute_settings_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Compute(**kwargs)


def test_bf16_on_a_cuda_device_without_native_bf16_is_refused(monkeypatch):
    """Checked with CUDA's answers stubbed: a V100 (compute capability 7.0) has no native bfloat16."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: False)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla V100-SXM2-16GB")
    with pytest.raises(ValueError, match=r"Tesla V100.*capability 7\.0\) has no native bfloat16.*--precision fp32"):
        check_compute(Compute("bf16"), torch.device("cuda"))
    check_compute(Compute("bf16"), torch.device("cpu"))  # autocast runs bf16 on every CPU


def test_compile_without_a_cpu_compiler_is_refused(monkeypatch):
    import torch._inductor.config  # noqa: F401  (reads $CXX once, at import: keep the fake one out of it)

    monkeypatch.setenv("CXX", "no-such-c++-compiler")
    with pytest.raises(ValueError, match=r"--compile on the CPU needs a C\+\+ compiler.*'no-such-c\+\+-compiler'"):
        prepare(_model(), Compute(compile=True), "cpu")
    with pytest.raises(ValueError, match=r"supported on cuda and cpu devices, not on 'meta'"):
        check_compute(Compute("bf16"), torch.device("meta"))


def test_bf16_runs_the_forward_in_bfloat16_and_returns_float32_logits():
    model = _model()
    seen = []
    model[-1].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    run = prepare(model, Compute("bf16"), "cpu")
    x, y = _data((1, 28, 28))
    logits, grad = _input_grad(run, x, y)
    assert seen == [torch.bfloat16]  # the last layer ran under autocast
    assert logits.dtype == torch.float32 and grad.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the weights stay float32
    ref, _ = _input_grad(model, x, y)
    assert (logits - ref).abs().max() < 0.05 * ref.abs().max()  # bf16 keeps 8 bits of mantissa
    assert not run.training and isinstance(run, Prepared)  # follows the model's mode: no training-mode warning


@pytest.mark.parametrize("name, params, p", [
    ("pgd", {"steps": 3}, math.inf), ("pgd", {"steps": 3}, 2.0), ("fgsm-rs", {}, math.inf), ("fgsm", {}, math.inf),
    ("apgd", {"steps": 3}, math.inf),
])
def test_eval01_lib06_a_bf16_attack_keeps_float32_inside_the_ball_and_box(name, params, p):
    """Only the forward pass is bf16: x_adv is float32, in the ball and the box, and x is not modified."""
    run = prepare(_model(), Compute("bf16"), "cpu")
    x, y = _data((1, 28, 28))
    x0 = x.clone()
    threat = LpBall(0.3 if p == math.inf else 2.0, p)
    x_adv = build_attack(name, threat, **params)(run, x, y, generator=torch.Generator().manual_seed(1))
    assert x_adv.dtype == torch.float32 and torch.equal(x, x0)
    assert bool(threat.contains(x_adv, x).all())
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert float((x_adv - x).abs().max()) > 0  # the attack moved


def test_a_bf16_training_step_gives_float32_gradients_that_follow_the_fp32_ones():
    model = _model()
    x, y = _data((1, 28, 28), n=32)
    F.cross_entropy(model(x), y).backward()
    ref = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    run = prepare(model, Compute("bf16"), "cpu").train()
    loss = F.cross_entropy(run(x), y)
    assert loss.dtype == torch.float32
    loss.backward()
    for p, g in zip(model.parameters(), ref):
        assert p.grad.dtype == torch.float32
        assert F.cosine_similarity(p.grad.flatten(), g.flatten(), dim=0) > 0.98


@pytest.mark.parametrize("name, shape", [("cnn-small", (1, 28, 28)), ("preact-resnet18", CIFAR_SMALL)])
def test_channels_last_gives_the_contiguous_logits_and_gradients(name, shape):
    model = _model(name, shape)
    x, y = _data(shape, n=4)
    ref_logits, ref_grad = _input_grad(model, x, y)
    run = prepare(model, Compute(channels_last=True), "cpu")
    assert any(p.dim() == 4 for p in model.parameters())
    assert all(p.is_contiguous(memory_format=torch.channels_last) for p in model.parameters() if p.dim() == 4)
    logits, grad = _input_grad(run, x, y)
    assert torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-5)
    # loose: the untrained PreAct ResNet's input gradient moves by 9e-4 (relative norm) when the input of its third
    # stage moves by 3e-7 in the contiguous layout alone (ReLUs at their kinks); cnn-small agrees to 1e-6
    assert (grad - ref_grad).norm() <= 1e-2 * ref_grad.norm()
    assert x.is_contiguous()  # the input was copied, not converted in place


def test_prepared_model_trains_the_models_own_parameters():
    """An optimizer over model.parameters() trains what the prepared module computes with; checkpoints save model."""
    model = _model()
    run = prepare(model, Compute("bf16", channels_last=True), "cpu")
    assert {id(p) for p in run.parameters()} == {id(p) for p in model.parameters()}
    assert set(run.state_dict()) == {f"model.{k}" for k in model.state_dict()}


@pytest.mark.slow  # torch.compile on the CPU compiles C++ for 10-30 s
def test_compile_gives_the_eager_logits_and_input_gradients():
    torch.manual_seed(0)  # parameter init of this tiny model only
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()
    x, y = _data((1, 8, 8), n=4)
    ref_logits, ref_grad = _input_grad(model, x, y)
    run = prepare(model, Compute(compile=True), "cpu")
    assert {id(p) for p in run.parameters()} == {id(p) for p in model.parameters()}
    logits, grad = _input_grad(run, x, y)
    assert torch.allclose(logits, ref_logits, rtol=1e-5, atol=1e-6)
    assert (grad - ref_grad).abs().max() <= 1e-4 * ref_grad.abs().max()
