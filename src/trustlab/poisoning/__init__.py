"""Data poisoning and backdoors: triggers, backdoor poisoning as a training-set transform, defenses that find
poisoned points in a model's representations, and a cryptographic (signature) backdoor."""

from trustlab.poisoning.backdoor import (BackdoorPoisoning, attack_success_rate, backdoor_metrics, poison_count,
                                         poison_indices)
from trustlab.poisoning.triggers import TRIGGERS, Trigger, blend_trigger, patch_trigger, random_pattern_trigger

__all__ = ["TRIGGERS", "Trigger", "patch_trigger", "random_pattern_trigger", "blend_trigger", "BackdoorPoisoning",
           "poison_count", "poison_indices", "attack_success_rate", "backdoor_metrics"]
