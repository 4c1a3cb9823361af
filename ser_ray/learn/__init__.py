"""The learning plane: prepared feature tables -> cross-validated reports, trained model
folders, sweeps. ``data`` (feature tables -> X, y, meta), ``splits`` (speaker-grouped folds),
``balance``, ``augment``, ``experiment`` (cv, train), ``evaluate``, ``training`` (torch fits,
Ray Train), ``tuning`` (Ray Tune sweeps), ``metrics``, ``report``, ``tracking`` (MLflow)."""
