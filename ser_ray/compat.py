"""torchvision beside a CPU build of torch.

The registry's torchvision wheels carry ops compiled for CUDA torch. Beside the CPU build their
library does not load, and ``import torchvision`` then stops while registering fake kernels for
two of those ops ("operator torchvision::nms does not exist"). transformers imports torchvision
whenever it is installed, so that error would break every Hugging Face model, not only the
image CNNs. ser-ray uses torchvision's model definitions only: when its ops library does not
load, the two schemas are declared before torchvision is imported, and the import succeeds
(its detection ops stay unavailable). Where the library loads (a CUDA torch), nothing is
declared. :func:`install` runs when ``ser_ray`` is imported: an import hook, so nothing is
imported until torchvision is.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

_LIBRARY = []  # a torch Library's definitions last as long as the object


def declare_torchvision_ops() -> bool:
    """Load torchvision's ops library, or declare the schemas its import needs; returns
    whether they had to be declared."""
    import torch

    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.origin:
        return False
    for lib in sorted(Path(spec.origin).parent.glob("_C*.so")):
        try:
            torch.ops.load_library(str(lib))
            return False
        except OSError:
            break
    if _LIBRARY:
        return True
    lib = torch.library.Library("torchvision", "DEF")
    for op in ("nms", "qnms"):
        lib.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.append(lib)
    return True


class _BeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs :func:`declare_torchvision_ops` once, just before torchvision is first imported."""

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision":
            sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, _BeforeTorchvision)]
            declare_torchvision_ops()
        return None


def quiet_optional_kernels() -> None:
    """torchao (the int8 encoder path; transformers imports it too when installed) logs every
    optional CUDA kernel library a CPU-only torch cannot load, and torch a deprecation of how
    torchao registers its enums: noise in every worker's log, set to errors only before either
    is imported."""
    import logging

    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def install() -> None:
    quiet_optional_kernels()
    if "torchvision" in sys.modules:
        return
    if not any(isinstance(f, _BeforeTorchvision) for f in sys.meta_path):
        sys.meta_path.insert(0, _BeforeTorchvision())
