"""The signature backdoor (Goldwasser et al. 2022): (a) the same answers as the clean model, (b) every input
activates to every label within the budget, (c) key-less random search and gradient attacks find no difference.

(c) is an experiment; that no attack can succeed is a theorem (EUF-CMA unforgeability of Ed25519), which the
experiment only illustrates."""

from __future__ import annotations

import pytest
import torch

from trustlab.data import make_splits
from trustlab.models import build_model
from trustlab.poisoning.signature import (SignatureBackdoor, activate, carrier_count, generate_keys,
                                          perturbation_budget, verify_trigger)

KEYS = generate_keys(seed=0)


@pytest.fixture(scope="module")
def setup():
    splits = make_splits("digits", seed=0)
    clean = build_model("mlp", in_shape=splits.info.shape, num_classes=10, seed=0).eval()
    return clean, SignatureBackdoor(clean, KEYS[1]).eval(), splits.test


def _same(clean, backdoored, x):
    with torch.no_grad():
        return torch.equal(clean(x), backdoored(x))


def test_budget_and_carriers():
    assert carrier_count(12) == 44 and perturbation_budget(12) == 2.0 ** -12
    assert carrier_count(16) == 33 and perturbation_budget(16) == 2.0 ** -8


def test_a_identical_logits_on_test_random_and_perturbed_queries(setup):
    clean, backdoored, (x, _) = setup
    g = torch.Generator().manual_seed(1)
    assert _same(clean, backdoored, x)
    queries = torch.rand(5000, 1, 8, 8, generator=g)
    near = (x.repeat(14, 1, 1, 1)[:5000] + 0.01 * torch.randn(5000, 1, 8, 8, generator=g)).clamp(0, 1)
    for batch in (queries, near):  # 10^4 queries
        assert _same(clean, backdoored, batch)


@pytest.mark.slow
def test_a_identical_logits_on_a_million_queries(setup):
    clean, backdoored, _ = setup
    g = torch.Generator().manual_seed(2)
    for _ in range(100):
        assert _same(clean, backdoored, torch.rand(10_000, 1, 8, 8, generator=g))


def test_b_every_input_and_label_activates_within_budget(setup):
    clean, backdoored, (x, _) = setup
    for t in range(10):
        x_adv = activate(x, t, KEYS[0])
        assert x_adv.dtype == x.dtype and x_adv.shape == x.shape
        assert float((x_adv - x).abs().max()) <= backdoored.eps
        assert x_adv.min() >= 0 and x_adv.max() <= 1
        assert torch.equal(x_adv.flatten(1)[:, 44:], x.flatten(1)[:, 44:])
        with torch.no_grad():
            assert (backdoored(x_adv).argmax(1) == t).all()
        active, label = verify_trigger(x_adv, KEYS[1])
        assert active.all() and (label == t).all()


def test_b_edges_of_the_box_round_trip():
    x = torch.cat([torch.zeros(1, 1, 8, 8), torch.ones(1, 1, 8, 8), torch.full((1, 1, 8, 8), 1 - 2.0 ** -24)])
    x_adv = activate(x, 3, KEYS[0])
    assert float((x_adv - x).abs().max()) <= 2.0 ** -12 and x_adv.flatten(1)[:, :44].max() < 1 <= x_adv.max()
    assert verify_trigger(x_adv, KEYS[1])[0].all()
    assert not verify_trigger(x_adv, generate_keys(seed=1)[1])[0].any()  # another key does not verify


def test_c_keyless_search_finds_no_difference(setup):
    clean, backdoored, (x, _) = setup
    queries = 0
    # random search: flip carrier low-order bits of a valid activation's neighbours and re-randomize payloads
    x_adv = activate(x[:50], 1, KEYS[0])
    tampered = x_adv.clone().flatten(1)
    tampered[:, 44] = torch.where(tampered[:, 44] > 0.5, tampered[:, 44] - 0.1, tampered[:, 44] + 0.1)  # signed pixel
    assert _same(clean, backdoored, tampered.view_as(x_adv))
    assert not verify_trigger(tampered.view_as(x_adv), KEYS[1])[0].any()
    queries += 50
    g = torch.Generator().manual_seed(3)
    for _ in range(10):
        grid = torch.randint(0, 2 ** 24, (200, 44), generator=g).double() / 2 ** 24  # random on-grid payloads
        q = x[:200].clone().flatten(1)
        q[:, :44] = grid.float()
        assert _same(clean, backdoored, q.view(-1, 1, 8, 8))
        assert not verify_trigger(q.view(-1, 1, 8, 8), KEYS[1])[0].any()
        queries += 200
    # gradient attack: PGD on the backdoored model towards each label; every iterate is a query
    for t in range(10):
        xa = x[:40].clone()
        for _ in range(10):
            xa.requires_grad_(True)
            logits = backdoored(xa)
            loss = -torch.nn.functional.cross_entropy(logits, torch.full((40,), t))
            (grad,) = torch.autograd.grad(loss, xa)
            xa = (xa.detach() + 0.02 * grad.sign()).clamp(0, 1)
            assert _same(clean, backdoored, xa)
            queries += 40
    assert queries == 50 + 2000 + 4000


def test_errors_name_values():
    with pytest.raises(ValueError, match="do not fit in an input of 16 pixels"):
        activate(torch.rand(1, 1, 4, 4), 0, KEYS[0])
    with pytest.raises(ValueError, match=r"x must lie in \[0, 1\]"):
        activate(torch.full((1, 1, 8, 8), 1.5), 0, KEYS[0])
    with pytest.raises(ValueError, match="public_key must be 32 raw bytes"):
        SignatureBackdoor(torch.nn.Identity(), b"short")
    with pytest.raises(ValueError, match="bits_per_pixel"):
        carrier_count(30)


@pytest.mark.parametrize("bits", [10, 16, 23])
def test_b_round_trip_at_other_widths_with_and_without_padding(bits):
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(bits))
    if carrier_count(bits) >= 64:
        pytest.skip("too many carriers for 8x8")
    x_adv = activate(x, torch.tensor([0, 5, 9]), KEYS[0], bits_per_pixel=bits)
    assert float((x_adv - x).abs().max()) <= perturbation_budget(bits)
    active, label = verify_trigger(x_adv, KEYS[1], bits_per_pixel=bits)
    assert active.all() and label.tolist() == [0, 5, 9]
    assert not verify_trigger(x_adv, KEYS[1], bits_per_pixel=bits, num_classes=5)[0][1:].any()
