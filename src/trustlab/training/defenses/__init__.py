"""Training defenses by registry name; each module registers itself (one import line here per defense).

- ``none``: standard ERM.
- ``fgsm``: FGSM from ``x``, step ``eps`` (Goodfellow et al. 2015).
- ``fgsm-rs``: FGSM from a uniform random start (Wong, Rice & Kolter 2020).
- ``pgd``: PGD with random start (Madry et al. 2018).
- ``trades``: clean CE plus beta * KL to the adversarial prediction (Zhang et al. 2019).
- ``ibp``: clean CE mixed with the verified loss on IBP margin bounds (Gowal et al. 2018).
- ``crown-ibp``: the same on a mix of CROWN-IBP and IBP margin bounds (Zhang et al. 2020).
- ``noise``: Gaussian noise augmentation at the smoothing sigma, checked on the smoothed classifier (Cohen et al.
  2019).
"""

from trustlab.training.defenses.base import (
    DEFENSES, Defense, Objective, build_defense, defense_names, option_prefix, register_defense, robust_check,
    split_prefixed,
)
from trustlab.training.defenses import erm, fgsm, fgsm_rs, pgd, trades  # noqa: F401  (registration)
from trustlab.training.defenses import ibp, crown_ibp  # noqa: F401  (registration, in this order)
from trustlab.training.defenses import noise  # noqa: F401  (registration)

__all__ = ["DEFENSES", "Defense", "Objective", "build_defense", "defense_names", "option_prefix",
           "register_defense", "robust_check", "split_prefixed"]
