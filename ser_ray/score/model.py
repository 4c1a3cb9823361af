"""The model as scoring sees it: its folder's files and identity (:class:`ModelInfo`); the
analysis window it wants and :class:`WindowFeatures` (a window of audio -> a model input row as
training made its rows) live in ``ser_ray.features.windows``, which labelled segments use too."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

from ser_ray.storage import is_s3


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """A model dir as the driver sees it: its bytes travel to the actors through Ray."""

    path: str
    files: dict[str, bytes]
    model_id: str
    model_hash: str
    labels: list[str]
    feature_config: dict[str, Any]

    @classmethod
    def read(cls, path: str | os.PathLike, trust: bool = False) -> "ModelInfo":
        from ser_ray.models.artifact import REQUIRED, check_model_dir, content_hash, folder_files

        root = Path(path)
        if is_s3(str(path)):
            raise ValueError(f"--model {path}: give a local or shared-filesystem model folder "
                             "(copy it from S3 first); its files are shipped to every worker")
        if not root.is_dir():
            raise FileNotFoundError(f"--model {path}: no such folder; pass a folder written by "
                                    "`ser-ray train` or `ser-ray tune` (best_model/)")
        check_model_dir(root, trust=trust)  # no links, no pickle: before a byte is shipped
        missing = [f for f in ("model.json", *REQUIRED) if not (root / f).is_file()]
        if missing:
            raise FileNotFoundError(f"--model {path}: lacks {missing}; it is not a complete "
                                    "model folder")
        files = folder_files(root)  # a fine-tuned encoder's backbone/ folder travels too
        meta = json.loads(files["model.json"])
        return cls(path=str(root.resolve()), files=files, model_id=f"{meta['name']}:{root.name}",
                   model_hash=content_hash(files), labels=json.loads(files["labels.json"]),
                   feature_config=json.loads(files["features.json"]))
