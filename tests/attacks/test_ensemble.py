"""The ensemble: never weaker than a member per example, 100% success when unbounded, members run only on the
points still robust, fixed versions recorded in full, and the same standard members for l_2 as for l_inf."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pytest
import torch

from trustlab import LpBall
from trustlab.attacks import (
    APGD,
    FAB,
    FGSM,
    PGD,
    VERSIONS,
    Ensemble,
    build_attack,
    ensemble,
    ensemble_with_log,
    predict,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def broken_by(attack, model, x, y, *, seed: int = 0) -> torch.Tensor:
    """Examples ``attack`` alone breaks: correct clean, misclassified after clipping into its threat."""
    x_adv = attack.threat.project(attack(model, x, y, generator=gen(seed)), x)
    return (predict(model, x) == y) & (predict(model, x_adv) != y)


def test_never_weaker_than_any_member_per_example(small_model, test_batch):
    """Each member alone, on the same points and (for the first, random one) the same generator stream: every
    example it breaks, the ensemble breaks. The later members are deterministic per example (FGSM, PGD without
    a random start, FAB from x), so running them on all points or on those still robust gives the same result."""
    x, y = test_batch
    keep = predict(small_model, x) == y  # the ensemble attacks only these: hand the first member the same batch
    x, y = x[keep], y[keep]
    threat = LpBall(0.08)
    members = (APGD(threat, steps=10, loss="dlr"), FGSM(threat), PGD(threat, steps=10, random_start=False, loss="margin"),
               FAB(threat, steps=10))
    x_adv = ensemble(small_model, x, y, threat, attacks=members, generator=gen(0))
    ensemble_broke = predict(small_model, x_adv) != y
    alone = [broken_by(a, small_model, x, y, seed=0) for a in members]
    for a, broke in zip(members, alone):
        assert not (broke & ~ensemble_broke).any(), type(a).__name__
    # the members differ (else the test shows little): measured 72, 68, 73 and 76 of 178 broken alone, 76 together
    assert len({tuple(b.nonzero().squeeze(1).tolist()) for b in alone}) == len(members)
    assert torch.equal(ensemble_broke, torch.stack(alone).any(0))


def test_log_matches_the_worst_case(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.08)
    members = (FGSM(threat), APGD(threat, steps=5), FAB(threat, steps=5))
    log = ensemble_with_log(small_model, x, y, threat, attacks=members, generator=gen(1))
    assert torch.equal(log.correct, predict(small_model, x) == y)
    assert int(log.broken.sum(0).max()) <= 1  # one first success per example
    assert torch.equal(log.broken.any(0), log.correct & (predict(small_model, log.x_adv) != y))
    for j in range(len(members)):
        still_robust = log.correct & ~log.broken[:j].any(0)
        assert torch.equal(log.attacked[j], still_robust)
        assert not (log.broken[j] & ~log.attacked[j]).any()
    assert torch.equal(log.x_adv[~log.broken.any(0)], x[~log.broken.any(0)])
    assert len(log.seconds) == len(members) and min(log.seconds) >= 0


@pytest.mark.parametrize("threat", [LpBall(1.0), LpBall(8.0, p=2)], ids=["linf", "l2"])
def test_unbounded_standard_ensemble_breaks_every_point(threat, small_model, test_batch):
    x, y = test_batch
    attack = Ensemble(threat)  # l_inf eps = 1, or l_2 eps = 8 = sqrt(64), on [0, 1]^64 inputs: the whole box
    log = ensemble_with_log(small_model, x, y, attack.threat, attacks=attack.attacks(), generator=gen(0))
    assert int((predict(small_model, log.x_adv) == y).sum()) == 0  # 0% robust accuracy, 100% success
    assert torch.equal(attack(small_model, x, y, generator=gen(0)), log.x_adv)


@dataclass(frozen=True)
class Spy:
    """A member that records how many examples, and which labels, it is handed, then runs ``attack``."""

    attack: object
    calls: list = field(default_factory=list)

    @property
    def threat(self) -> LpBall:
        return self.attack.threat

    def __call__(self, model, x, y, *, y_target=None, generator=None):
        self.calls.append((len(x), predict(model, x).eq(y).all().item()))
        return self.attack(model, x, y, y_target=y_target, generator=generator)

    def to_dict(self):
        return self.attack.to_dict()


def test_members_run_only_on_points_still_robust(small_model, test_batch):
    x, y = test_batch
    threat = LpBall(0.08)
    spies = (Spy(FGSM(threat)), Spy(APGD(threat, steps=5)), Spy(PGD(threat, steps=5)))
    log = ensemble_with_log(small_model, x, y, threat, attacks=spies, generator=gen(0))
    n_correct = int(log.correct.sum())
    left = n_correct
    for j, spy in enumerate(spies):
        assert spy.calls == [(left, True)]  # one call, on correct clean points only
        left -= int(log.broken[j].sum())
    assert spies[0].calls[0][0] == n_correct < len(x)  # misclassified points were never attacked
    # nothing left after an unbounded first member: the second is never called
    first, second = Spy(FGSM(LpBall(1.0))), Spy(APGD(LpBall(1.0), steps=5))
    x_adv = ensemble(small_model, x, y, LpBall(1.0), attacks=(first, second))
    assert int((predict(small_model, x_adv) == y).sum()) == 0
    assert len(first.calls) == 1 and second.calls == []


def test_to_dict_lists_every_member_with_its_hyperparameters_and_the_version():
    threat = LpBall(0.3)
    record = Ensemble(threat).to_dict()
    assert record["attack"] == "ensemble" and record["version"] == "standard-v1" == VERSIONS["standard"]
    assert record["eps"] == 0.3 and record["p"] == "inf"
    apgd_ce, apgd_t, fab_t, square = record["members"]
    assert apgd_ce["attack"] == "apgd" and apgd_ce["loss"] == "ce" and apgd_ce["steps"] == 100
    assert apgd_ce["restarts"] == 1 and apgd_ce["rho"] == 0.75 and apgd_ce["momentum"] == 0.75
    assert apgd_t["attack"] == "apgd-t" and apgd_t["loss"] == "dlr-targeted" and apgd_t["steps"] == 100
    assert apgd_t["n_target_classes"] == 9 and apgd_t["restarts"] == 1
    assert fab_t["attack"] == "fab-t" and fab_t["steps"] == 100 and fab_t["n_target_classes"] == 9
    assert fab_t["alpha_max"] == 0.1 and fab_t["eta"] == 1.05 and fab_t["beta"] == 0.9
    assert square["attack"] == "square" and square["queries"] == 5000 and square["p_init"] == 0.8
    assert all(m["eps"] == 0.3 and m["p"] == "inf" for m in record["members"])

    rand = Ensemble(LpBall(0.5, p=2), version="rand").to_dict()
    assert rand["version"] == "rand-v1" and rand["p"] == 2.0
    assert [(m["attack"], m["loss"], m["steps"], m["eot_samples"]) for m in rand["members"]] == [
        ("apgd", "ce", 100, 20), ("apgd", "dlr", 100, 20)]

    custom = Ensemble(threat, version="custom", members=(FGSM(threat), PGD(threat, steps=7)))
    assert custom.to_dict()["version"] == "custom"
    assert custom.to_dict()["members"] == [FGSM(threat).to_dict(), PGD(threat, steps=7).to_dict()]


def test_l2_standard_has_the_same_members_with_square_l2():
    """AutoAttack's standard version for l_2 is the l_inf one with every member on the l_2 ball; no member is
    dropped."""
    threat = LpBall(0.5, p=2)
    record = Ensemble(threat).to_dict()
    assert record["version"] == "standard-v1" and record["p"] == 2.0
    linf = Ensemble(LpBall(0.5)).to_dict()["members"]
    def but_norm(member: dict) -> dict:  # the record less the norm and Square's norm-specific initialization
        return {k: v for k, v in member.items() if k not in ("p", "init")}

    assert [but_norm(m) for m in record["members"]] == [but_norm(m) for m in linf]
    *_, square = record["members"]
    assert square["attack"] == "square" and square["queries"] == 5000 and square["p_init"] == 0.8
    assert square["init"] == "pseudo-gaussian squares"
    assert build_attack("ensemble", LpBall(0.5, p=2.0)) == Ensemble(threat)
    assert build_attack("ensemble", LpBall(0.5, p=2.0), version="rand").version == "rand"


def test_configuration_errors():
    threat = LpBall(0.1)
    with pytest.raises(ValueError, match=r"version must be one of \['rand', 'standard'\]"):
        Ensemble(threat, version="plus")
    with pytest.raises(ValueError, match="members are fixed by version 'standard'"):
        Ensemble(threat, members=(FGSM(threat),))
    with pytest.raises(ValueError, match="at least one"):
        Ensemble(threat, version="custom")
    with pytest.raises(ValueError, match=r"attacks\[1\] \(PGD\) has threat"):
        Ensemble(threat, version="custom", members=(FGSM(threat), PGD(LpBall(0.2))))
    with pytest.raises(TypeError, match=r"attacks\[0\] must be a configured attack"):
        ensemble(torch.nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, dtype=torch.long), threat, attacks=[len])
    with pytest.raises(TypeError, match="LpBall"):
        Ensemble(0.1)
    assert math.isinf(Ensemble(threat).threat.p)


def test_untargeted_only(small_model, test_batch):
    x, y = test_batch
    attack = Ensemble(LpBall(0.1), version="custom", members=(FGSM(LpBall(0.1)),))
    with pytest.raises(ValueError, match="y_target must be None"):
        attack(small_model, x, y, y_target=(y + 1) % 10)
