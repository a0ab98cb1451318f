"""Data poisoning and backdoors: triggers, backdoor poisoning as a training-set transform, defenses that find
poisoned points in a model's representations, and a cryptographic (signature) backdoor (needs ``cryptography``,
the ``poisoning`` extra, only when keys are made or signatures checked)."""

from trustlab.poisoning.backdoor import (BackdoorPoisoning, attack_success_rate, backdoor_metrics, poison_count,
                                         poison_indices)
from trustlab.poisoning.defenses import (Detection, WithoutPoints, activation_clustering, detection_quality,
                                         penultimate_features, spectral_signatures)
from trustlab.poisoning.signature import SignatureBackdoor, activate, generate_keys, verify_trigger
from trustlab.poisoning.triggers import TRIGGERS, Trigger, blend_trigger, patch_trigger, random_pattern_trigger

__all__ = ["TRIGGERS", "Trigger", "patch_trigger", "random_pattern_trigger", "blend_trigger", "BackdoorPoisoning",
           "poison_count", "poison_indices", "attack_success_rate", "backdoor_metrics", "Detection",
           "penultimate_features", "spectral_signatures", "activation_clustering", "detection_quality",
           "WithoutPoints", "SignatureBackdoor", "generate_keys", "activate", "verify_trigger"]
