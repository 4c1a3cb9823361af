"""Waveform augmentation: named steps and chains (``steps``), noise to mix in (``noise``), and
the Ray stage that makes augmented and noisy feature rows exactly as prepare makes its rows
(``pipeline``). Augment the training split only."""

from ser_ray.learn.augment.noise import AugmentError, babble, mix_at_snr, noise_bank, read_sources
from ser_ray.learn.augment.pipeline import (META_COLUMNS, ORIGINAL, VARIANTS, augmented_features,
                                            channel_features, noisy_features, select_variant)
from ser_ray.learn.augment.telephone import Telephone
from ser_ray.learn.augment.steps import (DEFAULT_CHAIN, BackgroundNoise, Chain, Gain,
                                         GaussianNoise, Pitch, Shift, Step, Stretch, UniformNoise,
                                         available_steps, make_step, row_rng)

__all__ = ["AugmentError", "BackgroundNoise", "Chain", "DEFAULT_CHAIN", "Gain", "GaussianNoise",
           "META_COLUMNS", "ORIGINAL", "Pitch", "Shift", "Step", "Stretch", "Telephone", "UniformNoise",
           "VARIANTS", "augmented_features", "channel_features", "available_steps", "babble", "make_step",
           "mix_at_snr", "noise_bank", "noisy_features", "read_sources", "row_rng", "select_variant"]
