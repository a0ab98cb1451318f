"""Evaluating trained models: attacks and certification into per-example records and summaries, and the
gradient-masking checks."""

from trustlab.evaluation.attack_run import attack_id, attack_run, evaluate_attack, evaluate_ensemble
from trustlab.evaluation.certify_run import certificate_id, certify_run
from trustlab.evaluation.checks import MODEL_CHECKS, run_checks
from trustlab.evaluation.smoothing_run import smoothing_config, smoothing_id, smoothing_run

__all__ = ["attack_id", "attack_run", "evaluate_attack", "evaluate_ensemble", "certificate_id", "certify_run",
           "run_checks", "MODEL_CHECKS", "smoothing_config", "smoothing_id", "smoothing_run"]
