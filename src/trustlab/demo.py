"""``trustlab demo``: the main job on the embedded digits data, end to end, in a few minutes on 2 CPU cores.

Trains a standard, an FGSM-trained and a PGD-trained ``cnn-small`` on scikit-learn's 8x8 digits, evaluates
each with FGSM and PGD (plus the eps grid and the convergence check), prints the training type x evaluation
type matrix with its diagnosis, draws the optimizer trajectories of the lecture, and writes the HTML report.
"""

from __future__ import annotations

from pathlib import Path

from trustlab.evaluation.matrix import MatrixConfig, MatrixResult, run_matrix
from trustlab.optim.lecture import run_lecture_demos
from trustlab.optim.report import optim_section, write_optim_outputs
from trustlab.training import TrainConfig

__all__ = ["run_demo", "DEMO_TRAIN", "DEMO_MATRIX"]

DEMO_TRAIN = TrainConfig(dataset="digits", model="cnn-small", epochs=15, batch_size=50, lr=5e-3, seed=0)
DEMO_MATRIX = MatrixConfig(eps=0.1, train=("none", "fgsm", "pgd"), pgd_steps=20, curve_subset=None,
                           defense_options={"pgd": {"steps": 7}})


def run_demo(
    out: Path, *, progress: bool = True, train: TrainConfig = DEMO_TRAIN, matrix: MatrixConfig = DEMO_MATRIX
) -> MatrixResult:
    """Run the demo into ``out``; prints the matrix, the diagnosis and where the report is.

    ``train`` and ``matrix`` default to the demo's recipe; a smaller one runs the same steps faster (the tests).
    """
    out = Path(out)
    rows = run_lecture_demos(out / "optim")
    write_optim_outputs(rows, out / "optim")
    result = run_matrix(train, matrix, out, progress=progress,
                        extra_sections=(optim_section(rows, out / "optim"),))
    print(f"Optimizer trajectories (figures in {out / 'optim'}):")
    for r in rows:
        print(f"- {r['objective']}, {r['label']}: {r['lesson']}")
    print()
    print(result.text())
    return result
