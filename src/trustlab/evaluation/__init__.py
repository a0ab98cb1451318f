"""Evaluating trained models under attack: per-example records and summaries."""

from trustlab.evaluation.attack_run import attack_id, attack_run, evaluate_attack

__all__ = ["attack_id", "attack_run", "evaluate_attack"]
