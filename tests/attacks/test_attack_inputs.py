"""Bad input is rejected before any computation, with a message naming the value (INP-01..09, LIB-01).

Each case runs through both gradient attacks (``fgsm`` and ``pgd``) and through ``attack_batched``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trustlab import LpBall
from trustlab.attacks import PGD, attack_batched, fgsm, pgd, predict

ATTACK_FNS = {"fgsm": fgsm, "pgd": pgd}
by_attack = pytest.mark.parametrize("attack", list(ATTACK_FNS))


def call(attack: str, model, x, y, threat=None, **kw):
    return ATTACK_FNS[attack](model, x, y, LpBall(0.1) if threat is None else threat, **kw)


# -- INP-01: parameters ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"eps": -0.1}, ValueError, "eps must be finite and >= 0, got -0.1"),
        ({"eps": float("nan")}, ValueError, "eps"),
        ({"eps": float("inf")}, ValueError, "eps"),
        ({"eps": "0.1"}, TypeError, "eps"),
        ({"eps": 0.1, "p": 3}, ValueError, "p must be inf or 2"),
        ({"eps": 0.1, "p": "l1"}, ValueError, "p must be"),
    ],
)
def test_inp01_threat_rejects_bad_eps_and_norm(kwargs, error, match):
    with pytest.raises(error, match=match):
        LpBall(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"steps": -1}, ValueError, "steps must be >= 0, got -1"),
        ({"steps": 2.0}, TypeError, "steps must be an int"),
        ({"step_size": 0.0}, ValueError, "step_size"),
        ({"step_size": -0.01}, ValueError, "step_size"),
        ({"step_size": float("nan")}, ValueError, "step_size"),
        ({"restarts": 0}, ValueError, "restarts must be >= 1, got 0"),
        ({"restarts": 2.0}, TypeError, "restarts"),
        ({"random_start": "no"}, TypeError, "random_start must be a bool"),
        ({"loss": "dl"}, ValueError, r"loss must be one of \['ce', 'dlr', 'dlr-targeted', 'margin'\], got 'dl'"),
    ],
)
def test_inp01_pgd_rejects_bad_parameters(kwargs, error, match, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(error, match=match):
        pgd(small_model, x, y, LpBall(0.1), **kwargs)


def test_inp01_fgsm_rejects_unknown_loss(small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="loss must be one of"):
        fgsm(small_model, x, y, LpBall(0.1), loss="cw")


@by_attack
def test_inp01_rejects_non_threat_and_non_module(attack, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(TypeError, match="threat must be a trustlab.LpBall, got float"):
        ATTACK_FNS[attack](small_model, x, y, 0.1)
    with pytest.raises(TypeError, match="model must be a torch.nn.Module, got function"):
        call(attack, lambda t: t, x, y)


@pytest.mark.parametrize("batch_size", [0, -3])
def test_inp01_batch_size(batch_size, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        attack_batched(PGD(LpBall(0.1)), small_model, x, y, batch_size=batch_size)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        predict(small_model, x, batch_size=batch_size)


@by_attack
def test_inp01_eps_zero_allowed(attack, small_model, test_batch):
    x, y = test_batch
    assert torch.equal(call(attack, small_model, x, y, LpBall(0.0)), x)


@by_attack
def test_inp02_linf_eps_beyond_the_box_warns(attack, small_model, test_batch):
    x, y = test_batch
    with pytest.warns(UserWarning, match="exceeds the input range"):
        call(attack, small_model, x[:4], y[:4], LpBall(1.5))


# -- INP-03/04/05: the inputs themselves -------------------------------------------------------------------------


@by_attack
@pytest.mark.parametrize(("lo", "hi"), [(-0.1, 1.0), (0.0, 1.5), (-0.5, 255.0)])
def test_inp03_out_of_range_pixels(attack, lo, hi, small_model, test_batch):
    x, y = test_batch
    bad = x.clone()
    bad[0, 0, 0, 0], bad[1, 0, 0, 0] = lo, hi
    with pytest.raises(ValueError, match=r"inputs must lie in \[0.0, 1.0\] \(got min=.*normalization inside the model"):
        call(attack, small_model, bad, y)


@by_attack
def test_inp03_respects_custom_box(attack, small_model, test_batch):
    """A threat with another box checks against that box, not a hard-coded [0, 1]."""
    x, y = test_batch
    threat = LpBall(0.1, lower=-1.0, upper=1.0)
    x_adv = call(attack, small_model, 2 * x - 1, y, threat)
    assert x_adv.min() >= -1 and x_adv.max() <= 1
    with pytest.raises(ValueError, match=r"inputs must lie in \[-1.0, 1.0\]"):
        call(attack, small_model, 2 * x - 1.5, y, threat)


@by_attack
@pytest.mark.parametrize("dtype", [torch.uint8, torch.int64])
def test_inp04_integer_images_rejected_with_hint(attack, dtype, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(TypeError, match=r"floating-point.*x.float\(\) / 255"):
        call(attack, small_model, (x * 255).to(dtype), y)


@by_attack
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_inp05_nonfinite_inputs_rejected(attack, value, small_model, test_batch):
    x, y = test_batch
    bad = x.clone()
    bad[3, 0, 2, 2] = value
    with pytest.raises(ValueError, match="NaN or Inf"):
        call(attack, small_model, bad, y)


# -- INP-07: shapes ----------------------------------------------------------------------------------------------


@by_attack
def test_inp07_shapes(attack, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match=r"batched with shape \(N, \*D\), got shape \(64,\)"):
        call(attack, small_model, x[0].flatten(), y[:1])
    with pytest.raises(ValueError, match=r"empty"):
        call(attack, small_model, x[:0], y[:0])
    with pytest.raises(ValueError, match=r"y must have shape \(200,\), got \(199,\)"):
        call(attack, small_model, x, y[:-1])
    with pytest.raises(ValueError, match=r"y must have shape \(200,\), got \(200, 1\)"):
        call(attack, small_model, x, y[:, None])


@by_attack
def test_inp07_input_size_mismatch_with_model(attack, small_model, test_batch):
    x, y = test_batch
    wide = torch.cat([x, x, x], dim=1)  # 3 channels into a 64-feature MLP
    with pytest.raises(ValueError, match=r"model failed on x of shape \(200, 3, 8, 8\)"):
        call(attack, small_model, wide, y)


@by_attack
def test_inp07_model_must_return_batched_logits(attack, test_batch):
    x, y = test_batch
    single = nn.Sequential(nn.Flatten(), nn.Linear(64, 1)).eval()
    with pytest.raises(ValueError, match=r"logits of shape \(N=200, K>=2\), got \(200, 1\)"):
        call(attack, single, x, torch.zeros_like(y))


# -- INP-08: labels ----------------------------------------------------------------------------------------------


@by_attack
@pytest.mark.parametrize(("label", "match"), [(10, r"label 10 out of range \[0, 10\)"), (-1, r"label -1 out of range")])
def test_inp08_labels_out_of_range(attack, label, match, small_model, test_batch):
    x, y = test_batch
    bad = y.clone()
    bad[5] = label
    with pytest.raises(ValueError, match=match):
        call(attack, small_model, x, bad)


@by_attack
def test_inp08_labels_must_be_integers(attack, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        call(attack, small_model, x, y.float())


# -- INP-09: targets ---------------------------------------------------------------------------------------------


@by_attack
def test_inp09_target_equal_to_label_rejected(attack, small_model, test_batch):
    x, y = test_batch
    y_target = (y + 1) % 10
    y_target[7] = y[7]
    with pytest.raises(ValueError, match=r"y_target equals the true label y for example 7"):
        call(attack, small_model, x, y, y_target=y_target)


@by_attack
def test_inp09_target_shape_and_range(attack, small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match=r"y_target must have shape \(200,\)"):
        call(attack, small_model, x, y, y_target=((y + 1) % 10)[:10])
    with pytest.raises(ValueError, match=r"label 10 out of range \[0, 10\) in y_target"):
        call(attack, small_model, x, y, y_target=torch.where(y == 9, 8, 10))
    with pytest.raises(TypeError, match="y_target must be an integer tensor"):
        call(attack, small_model, x, y, y_target=((y + 1) % 10).float())


def test_inp09_attack_batched_checks_targets(small_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="y_target equals the true label"):
        attack_batched(PGD(LpBall(0.1)), small_model, x, y, y_target=y.clone())


def test_validation_happens_before_any_forward(test_batch):
    """A rejected call never runs the model (no side effects from a bad call)."""
    x, y = test_batch
    calls = []
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 10)).eval()
    model.register_forward_pre_hook(lambda m, a: calls.append(1))
    for bad, match in (({"steps": -1}, "steps must be >= 0, got -1"), ({"restarts": 0}, "restarts must be >= 1, got 0"),
                       ({"loss": "x"}, r"loss must be one of \['ce', 'dlr', 'dlr-targeted', 'margin'\], got 'x'")):
        with pytest.raises(ValueError, match=match):
            pgd(model, x, y, LpBall(0.1), **bad)
    with pytest.raises(ValueError, match="y_target equals the true label y for example 0"):
        pgd(model, x, y, LpBall(0.1), y_target=y)
    assert calls == []


# -- INP-15: a model that returns probabilities ----------------------------------------------------------------


@pytest.mark.parametrize("entry", ["fgsm", "pgd", "attack_batched"])
def test_inp15_softmax_output_warns_once_per_call(entry, small_model, test_batch):
    """Gradients of a softmax output saturate: one warning at the user's call, also over several batches."""
    x, y = test_batch
    softmax_model = nn.Sequential(small_model, nn.Softmax(dim=1)).eval()
    with pytest.warns(UserWarning, match="outputs look like probabilities.*pass a model that returns logits") as got:
        if entry == "attack_batched":
            attack_batched(PGD(LpBall(0.1), steps=2), softmax_model, x, y, batch_size=50)  # 4 batches
        else:
            call(entry, softmax_model, x, y, steps=2) if entry == "pgd" else call(entry, softmax_model, x, y)
    ours = [w for w in got if "probabilities" in str(w.message)]
    assert len(ours) == 1 and ours[0].filename == __file__


@pytest.mark.parametrize("entry", ["fgsm", "pgd", "attack_batched"])
def test_inp15_logit_model_does_not_warn(entry, small_model, test_batch, recwarn):
    x, y = test_batch
    if entry == "attack_batched":
        attack_batched(PGD(LpBall(0.1), steps=2), small_model, x, y, batch_size=50)
    else:
        call(entry, small_model, x, y, steps=2) if entry == "pgd" else call(entry, small_model, x, y)
    # log-probabilities (non-positive, rows do not sum to 1) are fine too
    call("fgsm", nn.Sequential(small_model, nn.LogSoftmax(dim=1)).eval(), x, y)
    assert [str(w.message) for w in recwarn] == []
