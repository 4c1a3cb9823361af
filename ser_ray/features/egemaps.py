"""openSMILE eGeMAPSv02 functionals: the field's standard 88-value baseline set."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ser_ray.features.base import Extractor, register


@register("egemaps")
@dataclass(frozen=True)
class EGeMAPS(Extractor):
    """eGeMAPSv02 functionals, shape (88,), in openSMILE's column order and units
    (F0 in semitones from 27.5 Hz, loudness in sones, formants in Hz, slopes, rates per second).

    openSMILE analyses any sample rate itself, so ``sample_rate`` is not enforced.
    """

    @property
    def expected_sr(self) -> int | None:
        return None

    def min_samples(self, sr: int) -> int:
        # openSMILE's longest analysis frame is 60 ms; shorter input gives all-NaN functionals.
        return math.ceil(0.06 * sr)

    def _smile(self):
        # Built on first use, not in __init__: the extractor is pickled into Ray actors and the
        # Smile object wraps a native openSMILE handle.
        smile = self.__dict__.get("_smile_obj")
        if smile is None:
            import opensmile

            smile = opensmile.Smile(
                feature_set=opensmile.FeatureSet.eGeMAPSv02,
                feature_level=opensmile.FeatureLevel.Functionals,
            )
            self.__dict__["_smile_obj"] = smile  # frozen dataclass: bypass __setattr__ for a cache
        return smile

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k != "_smile_obj"}

    def compute(self, y, sr):
        return self._smile().process_signal(y, sr).to_numpy(dtype=np.float32).reshape(-1)
