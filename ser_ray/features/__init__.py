"""Feature extractors, one module per family, chosen by registered name.

>>> e = get_extractor("mfcc", pooling="mean")
>>> x = e(y, 16000)            # float32; shapes in each extractor's docstring
>>> extractor_config(e)        # resolved config to write next to a run's outputs
"""

from ser_ray.features.base import Extractor, available, extractor_config, get_extractor, register

# Imported for their @register side effect.
from ser_ray.features import egemaps, encoder, handcrafted, spectral, text  # noqa: E402,F401

__all__ = ["Extractor", "available", "extractor_config", "get_extractor", "register"]
