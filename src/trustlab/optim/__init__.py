"""Optimization on small 1-D and 2-D objectives: where GD, noisy GD, momentum and Adam go, drawn and tabulated.

``run_trajectory(objective, start, optimizer=..., lr=...)`` records a run; ``compare`` runs several from one
start; ``plot_trajectories`` and ``trajectory_table`` show the same runs as a figure and as rows;
``run_lecture_demos(out_dir)`` produces the lecture's figures.
"""

from __future__ import annotations

from trustlab.optim.lecture import describe, run_lecture_demos
from trustlab.optim.objectives import OBJECTIVES, Objective, StationaryPoint, get_objective, ill_conditioned
from trustlab.optim.plots import plot_trajectories, trajectory_table
from trustlab.optim.trajectories import (
    DIVERGENCE_THRESHOLD,
    OPTIMIZERS,
    SCHEDULES,
    Trajectory,
    compare,
    run_trajectory,
)

__all__ = [
    "DIVERGENCE_THRESHOLD",
    "OBJECTIVES",
    "OPTIMIZERS",
    "SCHEDULES",
    "Objective",
    "StationaryPoint",
    "Trajectory",
    "compare",
    "describe",
    "get_objective",
    "ill_conditioned",
    "plot_trajectories",
    "run_lecture_demos",
    "run_trajectory",
    "trajectory_table",
]
