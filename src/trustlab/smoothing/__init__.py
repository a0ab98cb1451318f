"""Randomized smoothing (Cohen et al. 2019) with Gaussian, uniform and Laplace noise (Yang et al. 2020).

- :class:`SmoothedClassifier`: ``predict`` (PREDICT) and ``certify`` (CERTIFY), batched over inputs and noise
  samples, seeded by an explicit ``torch.Generator``; :data:`ABSTAIN`.
- :mod:`~trustlab.smoothing.stats`: the exact one-sided Clopper-Pearson bound and PREDICT's binomial test.
- :mod:`~trustlab.smoothing.noises`: the noises and their certified radii.
- :mod:`~trustlab.smoothing.linf`: the l_inf radius an l_2 certificate implies, and how it shrinks with d.
"""

from trustlab.smoothing.core import (ABSTAIN, DEFAULT_BATCH_SIZE, NOISE_BLOCK, Certification, Prediction,
                                     SmoothedClassifier, certify_from_counts, predict_from_counts, sample_counts)
from trustlab.smoothing.linf import linf_radius_from_l2, plot_linf_shrinkage
from trustlab.smoothing.noises import NOISES, GaussianNoise, LaplaceNoise, Noise, UniformNoise, make_noise
from trustlab.smoothing.stats import clopper_pearson_lower, predict_pvalue

__all__ = ["ABSTAIN", "DEFAULT_BATCH_SIZE", "NOISE_BLOCK", "Certification", "Prediction", "SmoothedClassifier",
           "certify_from_counts", "predict_from_counts", "sample_counts", "linf_radius_from_l2",
           "plot_linf_shrinkage", "NOISES", "GaussianNoise", "LaplaceNoise", "Noise", "UniformNoise", "make_noise",
           "clopper_pearson_lower", "predict_pvalue"]
