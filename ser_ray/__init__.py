"""ser-ray: speech emotion recognition as distributed batch jobs on Ray."""

from ser_ray import compat as _compat

__version__ = "0.1.0"

_compat.install()  # torchvision (and so transformers) importable beside CPU torch
