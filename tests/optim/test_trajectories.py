"""Optimizer trajectories on small objectives: the lecture's claims as properties of the recorded runs."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from trustlab.optim import (
    DIVERGENCE_THRESHOLD,
    OBJECTIVES,
    SCHEDULES,
    compare,
    describe,
    get_objective,
    plot_trajectories,
    run_lecture_demos,
    run_trajectory,
    trajectory_table,
)
from trustlab.optim.lecture import GRAD_TOL, STATUSES
from trustlab.optim.trajectories import HALVING_FACTOR

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _max_curvature(name: str) -> float:
    """lambda_max of the Hessian at the objective's (first) minimum."""
    obj = get_objective(name)
    w_star = next(s.point for s in obj.stationary if s.kind == "min")
    h = torch.autograd.functional.hessian(obj.f, torch.tensor(w_star, dtype=torch.float64))
    return float(torch.linalg.eigvalsh(h.reshape(obj.dim, obj.dim)).max())


# --- objectives -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_stationary_points_have_zero_gradient(name):
    obj = get_objective(name)
    for s in obj.stationary:
        _, grad = obj.value_and_grad(torch.tensor(s.point, dtype=torch.float64))
        assert float(grad.norm()) < 1e-12


@pytest.mark.parametrize("name", sorted(OBJECTIVES))
def test_objective_is_batched(name):
    obj = get_objective(name)
    w = torch.stack([torch.tensor(p, dtype=torch.float64) for p in obj.starts])  # (S, d)
    batched = obj.f(w)
    assert batched.shape == (len(obj.starts),)
    for i, p in enumerate(obj.starts):
        assert torch.equal(batched[i], obj.f(torch.tensor(p, dtype=torch.float64)))


def test_unknown_objective_lists_choices():
    with pytest.raises(ValueError, match="rosenbrock"):
        get_objective("himmelblau")


# --- saddles ----------------------------------------------------------------------------------------------


def test_gd_from_the_saddles_stable_manifold_converges_to_the_saddle():
    t = run_trajectory("saddle", (1.0, 0.0), lr=0.1, steps=100)
    assert not t.diverged and t.steps_run == 100
    assert np.all(t.points[:, 1] == 0.0)  # the unstable direction is never excited
    assert np.all(np.diff(np.abs(t.points[:, 0])) < 0)
    assert abs(t.points[-1, 0]) < 1e-6 and t.grad_norms[-1] < GRAD_TOL
    assert describe(t, "saddle")["status"] == "stuck near saddle"


def test_gd_from_a_random_start_escapes_the_saddle():
    g = torch.Generator().manual_seed(0)
    start = torch.tensor([1.0, 0.0], dtype=torch.float64) + 1e-3 * torch.randn(2, generator=g, dtype=torch.float64)
    t = run_trajectory("saddle", start, lr=0.1, steps=100)
    w2 = np.abs(t.points[:, 1])
    assert np.all(np.diff(w2) > 0)
    assert w2[-1] > 1e3 * w2[0]


def test_gd_stalls_into_the_degenerate_saddle_from_above():
    t = run_trajectory("cubic-saddle", (1.0, 0.5), lr=0.1, steps=200)
    w2 = t.points[:, 1]
    assert not t.diverged
    assert np.all(w2 > 0) and np.all(np.diff(w2) < 0)  # decreasing, never crossing 0
    assert t.grad_norms[-1] < GRAD_TOL and t.grad_norms[-1] < t.grad_norms[0] * 1e-3
    # the stall: the steps in w2 shrink (gradient 3 w2^2 vanishes) and w2 -> 0 only like 1 / (3 lr t), while
    # the curved direction w1 has long since converged geometrically
    assert abs(w2[-1] - w2[-2]) < 1e-2 * abs(w2[1] - w2[0])
    assert abs(t.points[-1, 0]) < 1e-12 < 1e-3 < w2[-1] < 0.1 * w2[0]


def test_gd_below_the_degenerate_saddle_diverges_without_raising():
    t = run_trajectory("cubic-saddle", (1.0, -0.5), lr=0.1, steps=200)
    assert t.diverged and t.steps_run < 200
    assert not (abs(t.losses[-1]) <= DIVERGENCE_THRESHOLD and np.abs(t.points[-1]).max() <= DIVERGENCE_THRESHOLD)
    assert np.all(np.diff(t.points[:, 1]) < 0)  # heading to -inf


# --- the cubic: basin of the local minimum and the learning-rate limit ------------------------------------


def test_cubic_converges_to_the_local_min_from_inside_its_basin():
    t = run_trajectory("cubic", 0.0, lr=0.05, steps=100)
    assert abs(t.points[-1, 0] - 1.0) < 1e-3
    assert describe(t, "cubic")["status"] == "converged to min"


def test_cubic_diverges_from_beyond_the_local_max():
    t = run_trajectory("cubic", (-2.0,), lr=0.05, steps=100)
    assert t.diverged and t.steps_run < 100


def test_cubic_with_a_learning_rate_past_the_stability_limit_does_not_converge():
    lr = 1.2 * 2 / _max_curvature("cubic")
    t = run_trajectory("cubic", 0.0, lr=lr, steps=100)
    assert t.diverged or abs(t.points[-1, 0] - 1.0) > 1e-2
    assert describe(t, "cubic")["status"] in ("diverged", "not converged")


# --- ill-conditioning -------------------------------------------------------------------------------------


def test_gd_on_ill_conditioned_quadratic_is_stable_only_below_2_over_lambda_max():
    crit = 2 / _max_curvature("ill-conditioned")
    start = OBJECTIVES["ill-conditioned"].starts[0]
    above = run_trajectory("ill-conditioned", start, lr=1.25 * crit, steps=200)
    below = run_trajectory("ill-conditioned", start, lr=0.75 * crit, steps=200)
    assert above.diverged
    assert not below.diverged and below.losses[-1] < 1e-3 * below.losses[0]


def test_momentum_beats_gd_on_ill_conditioned_quadratic_at_the_same_lr():
    start = OBJECTIVES["ill-conditioned"].starts[0]
    gd, mom = compare(
        "ill-conditioned", start, [{"optimizer": "gd", "lr": 0.03}, {"optimizer": "momentum", "lr": 0.03}]
    )
    assert gd.steps_run == mom.steps_run == 100
    assert mom.losses[-1] < gd.losses[-1]
    np.testing.assert_array_equal(gd.points[0], mom.points[0])


def test_adam_reduces_the_rosenbrock_loss():
    t = run_trajectory("rosenbrock", (-1.2, 1.0), optimizer="adam", lr=0.05, steps=300)
    assert not t.diverged and t.losses[-1] < 0.1 * t.losses[0]


# --- randomness, inputs, records --------------------------------------------------------------------------


def _noisy_gd(seed: int):
    g = torch.Generator().manual_seed(seed)
    return run_trajectory(
        "ill-conditioned", (-4.0, 1.0), optimizer="noisy-gd", lr=0.02, steps=50, noise=0.5, generator=g
    )


def test_seeded_noisy_gd_is_reproducible_and_seeds_differ_and_global_rng_is_untouched():
    state = torch.get_rng_state()
    a, b, c = _noisy_gd(1), _noisy_gd(1), _noisy_gd(2)
    assert torch.equal(torch.get_rng_state(), state)
    np.testing.assert_array_equal(a.points, b.points)
    assert not np.array_equal(a.points, c.points)
    gd = run_trajectory("ill-conditioned", (-4.0, 1.0), lr=0.02, steps=50)
    assert not np.array_equal(a.points, gd.points)
    np.testing.assert_allclose(a.grad_norms[0], gd.grad_norms[0])  # grad_norms record the exact gradient


def test_start_is_not_mutated_and_records_are_read_only():
    start = torch.tensor([1.0, 0.5], dtype=torch.float32)
    steps = 5
    t = run_trajectory("cubic-saddle", start, lr=0.1, steps=steps)
    assert torch.equal(start, torch.tensor([1.0, 0.5])) and start.grad is None and not start.requires_grad
    assert t.points.shape == (steps + 1, len(start)) and t.lrs.shape == (steps,)  # iterates w_0 .. w_T, T updates
    assert t.losses.shape == t.grad_norms.shape == (steps + 1,)
    with pytest.raises(ValueError, match="assignment destination is read-only"):
        t.points[0, 0] = 3.0


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_schedules_start_at_lr_and_never_increase(schedule):
    lr, steps = 0.02, 40
    t = run_trajectory("ill-conditioned", (-4.0, 1.0), lr=lr, steps=steps, schedule=schedule)
    assert t.lrs[0] == lr and np.all(np.diff(t.lrs) <= 1e-15)
    if schedule == "constant":
        assert np.all(t.lrs == lr)
    elif schedule == "halving":  # x0.5 every steps // 4 updates
        quarter = steps // 4
        assert t.lrs[quarter - 1] == lr and t.lrs[quarter] == pytest.approx(HALVING_FACTOR * lr)
        assert t.lrs[-1] == pytest.approx(HALVING_FACTOR ** 3 * lr)
    else:
        assert t.lrs[-1] < 0.1 * t.lrs[0]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"steps": 0}, "steps"),
        ({"optimizer": "rmsprop"}, "rmsprop"),
        ({"schedule": "linear"}, "linear"),
        ({"momentum": 1.0, "optimizer": "momentum"}, "momentum"),
        ({"noise": -1.0}, "noise"),
        ({"noise": 0.1}, "generator"),
        ({"optimizer": "noisy-gd"}, "noise"),
        # training's names (torch.optim.SGD, its x0.1 step decay) mean something else and are not accepted here
        ({"optimizer": "sgd"}, r"unknown optimizer 'sgd'; choose one of \['gd', 'noisy-gd'"),
        ({"schedule": "step"}, r"unknown schedule 'step'; choose one of \['constant', 'halving'"),
    ],
)
def test_invalid_settings_raise_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        run_trajectory("saddle", (1.0, 0.0), **kwargs)


@pytest.mark.parametrize(
    ("name", "start"),
    [("saddle", (1.0,)), ("saddle", (1.0, 2.0, 3.0)), ("cubic", (0.0, 1.0)), ("saddle", (math.nan, 0.0)),
     ("saddle", (math.inf, 0.0)), ("rosenbrock", (1e4, 0.0))],
)
def test_bad_starts_raise_value_error(name, start):
    with pytest.raises(ValueError, match="start"):
        run_trajectory(name, start)


def test_compare_rejects_unknown_keys_and_empty_specs():
    with pytest.raises(ValueError, match="alpha"):
        compare("saddle", (1.0, 0.0), [{"optimizer": "gd", "alpha": 0.1}])
    with pytest.raises(ValueError, match="specs"):
        compare("saddle", (1.0, 0.0), [])


def test_table_rows_come_from_the_trajectories():
    runs = compare("cubic", 0.0, [{"lr": 0.05}, {"lr": 0.4}])
    rows = trajectory_table(runs)
    json.dumps(rows, allow_nan=False)
    for row, t in zip(rows, runs):
        assert row["steps"] == t.steps_run and row["diverged"] == t.diverged and row["lr"] == t.lrs[0]
        assert row["final_point"] == [float(v) for v in t.points[-1]]
        assert row["optimizer"] == t.optimizer and row["objective"] == "cubic"


# --- plots and the lecture --------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "start"), [("rosenbrock", (-1.2, 1.0)), ("cubic", (0.0,))])
def test_plot_writes_a_png_and_no_temp_files(tmp_path, name, start):
    runs = compare(name, start, [{"optimizer": "gd", "lr": 0.001 if name == "rosenbrock" else 0.4},
                                 {"optimizer": "adam", "lr": 0.05}])
    state = torch.get_rng_state()
    out = plot_trajectories(name, runs, tmp_path / "sub" / "fig.png")
    assert torch.equal(torch.get_rng_state(), state)
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000
    assert sorted(p.name for p in out.parent.iterdir()) == ["fig.png"]


def test_plot_rejects_mismatched_dimension(tmp_path):
    t = run_trajectory("cubic", 0.0, steps=3)
    with pytest.raises(ValueError, match="dimension"):
        plot_trajectories("saddle", [t], tmp_path / "x.png")


@pytest.fixture(scope="module")
def lecture(tmp_path_factory):
    out = tmp_path_factory.mktemp("lecture")
    state = torch.get_rng_state()
    rows = run_lecture_demos(out, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    return out, rows


def test_lecture_writes_its_figures(lecture):
    out, rows = lecture
    figures = {r["figure"] for r in rows}
    assert figures == {f"optim-{n}.png" for n in ("cubic-saddle", "saddle", "cubic", "ill-conditioned", "rosenbrock")}
    for name in figures:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
    json.dumps(rows, allow_nan=False)


def test_lecture_lessons_agree_with_the_trajectories(lecture):
    _, rows = lecture
    for r in rows:
        assert r["status"] in STATUSES and r["lesson"].startswith(r["status"])
        assert (r["status"] == "diverged") == r["diverged"]
        if r["status"] in ("stuck near saddle", "converged to min", "converged to max"):
            assert r["final_grad_norm"] < GRAD_TOL
        if r["status"] == "not converged":
            assert r["final_grad_norm"] >= GRAD_TOL
    by_demo = {d: [r["status"] for r in rows if r["demo"] == d] for d in "abcd"}
    assert sorted(by_demo["a"]) == ["diverged", "stuck near saddle"]  # w2 >= 0 stalls, w2 < 0 diverges
    stuck, escaped = by_demo["b"]  # from (1, 0) exactly, then from a random perturbation of it
    assert stuck == "stuck near saddle" and escaped in ("diverged", "not converged")
    assert "moved away from the saddle" in [r["lesson"] for r in rows if r["demo"] == "b"][1]
    assert "converged to min" in by_demo["c"] and "diverged" in by_demo["c"]
    assert {r["optimizer"] for r in rows if r["demo"] == "d"} == {"gd", "noisy-gd", "momentum", "adam"}
    assert any(r["schedule"] != "constant" for r in rows if r["demo"] == "d")
