"""Evaluating trained models under attack: per-example records and summaries, and the gradient-masking checks."""

from trustlab.evaluation.attack_run import attack_id, attack_run, evaluate_attack, evaluate_ensemble
from trustlab.evaluation.checks import MODEL_CHECKS, run_checks

__all__ = ["attack_id", "attack_run", "evaluate_attack", "evaluate_ensemble", "run_checks", "MODEL_CHECKS"]
