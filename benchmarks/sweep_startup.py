"""What a small torch model's cv and sweep spend starting Ray Train, as ratios from ONE run.

    .venv/bin/python benchmarks/sweep_startup.py              # ~20 min on 2 cores
    .venv/bin/python benchmarks/sweep_startup.py --quick      # smoke run, ~4 min

The two trainers give the same weights on CPU, so the UA columns must agree.

Input: a synthetic RAVDESS-layout corpus (``synthesize_corpus``: 10 speakers x 8 emotions x 4
takes = 320 clips), prepared once with ``prepare`` (mfcc), untimed. The model is ``cnn1d``
(channels 16, dense 16) on 60 MFCC frames, at most 8 epochs with patience 3: a fold of a
small model, as a sweep over many configurations runs it.

Ray is started once and one untimed Ray Train fit warms it up. Then:
  (a) a 10-fold ``speaker-kfold`` cv with ``trainer: ray_train`` (every fold one TorchTrainer,
      as every torch fold ran before the local trainer);
  (b) the same cv with ``trainer: auto`` (one CPU worker: the fold trains in the cv's process);
  (c) a 16-trial grid sweep (4 learning rates x 4 widths; FIFO, so both sides do the same
      work) of a 3-fold cv each, ``trainer: ray_train``, 0.5 CPU per trial + 0.5 per worker;
  (d) the same sweep with ``trainer: auto`` (the fit runs in the trial's task, which then
      reserves the worker's 0.5 CPU too: the same trials run at once).
Start-up is, per fold, the fit's wall time minus the time inside the training loop (model
build, epochs, reports and checkpoints, measured by the loop itself), summed over folds; the
share is start-up / the cv's wall time (which also holds fold preparation and prediction).

Targets: start-up share of (b) <= 0.25; sweep (c) wall / (d) wall >= 2. The exit status is 1
when a target is not met. The figures are one run on one machine and move with other load: the
1-minute load average is printed at the start and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import yaml

MODEL = {"model": "cnn1d", "features": ["mfcc"], "frames": 60, "cpus_per_worker": 0.5,
         "model_options": {"channels": [16], "dense": [16], "epochs": 8, "patience": 3,
                           "lr": 0.003}}


def prepare(root: Path, speakers: int) -> Path:
    from ser_ray.config import PrepareConfig
    from ser_ray.prepare import run_prepare
    from ser_ray.synth import synthesize_corpus

    synthesize_corpus("ravdess", root / "corpus", n_speakers=speakers, per_emotion=4, seed=0)
    run_prepare(PrepareConfig(inputs=(str(root / "corpus"),), output=str(root / "prepared"),
                              corpus="ravdess", features=("mfcc",)))
    return root / "prepared"


def cv(prepared: Path, trainer: str, folds: int, out: Path) -> dict:
    from ser_ray import config as config_mod
    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import load_learn_features
    from ser_ray.learn.experiment import cross_validate

    cfg = config_mod.from_dict(LearnConfig, {**MODEL, "protocol": "speaker-kfold",
                                             "folds": folds, "trainer": trainer}, "benchmark")
    data = load_learn_features([str(prepared)], cfg)
    t0 = time.time()
    m = cross_validate(data, cfg, out)
    wall = time.time() - t0
    return {"wall_s": wall, "startup_s": m["startup_s"], "fit_s": m["fit_s"],
            "share": m["startup_s"] / wall, "ua": m["ua_mean"], "trainer": m["trainer"]}


def sweep(prepared: Path, trainer: str, trials: int, folds: int, out: Path) -> dict:
    lrs = trials // 4
    from ser_ray.learn.tuning import load_space, run_sweep

    space = {"base": {**MODEL, "protocol": "speaker-kfold", "folds": folds, "trainer": trainer},
             "space": {"model_options.lr": {"grid": [3e-4, 1e-3, 3e-3, 1e-2][:lrs]},
                       "model_options.channels": {"grid": [[8], [16], [32], [16, 16]]}},
             "search": "grid", "scheduler": "fifo", "seed": 0,
             "export_best": False,
             "resources": {"cpus_per_trial": 0.5, "workers_per_trial": 1,
                           "cpus_per_worker": 0.5}}
    path = out.with_suffix(".yaml")
    path.write_text(yaml.safe_dump(space))
    t0 = time.time()
    table = run_sweep([str(prepared)], load_space(path), out, resume=False)
    return {"wall_s": time.time() - t0, "trials": int(table["complete"].sum()),
            "best_ua": float(table["ua_mean"].max())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="4 folds, 4 trials x 2 folds")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args(argv)
    folds, trials, trial_folds = (4, 4, 2) if args.quick else (10, 16, 3)

    import ser_ray  # noqa: F401  (before torch/transformers: the torchvision hook)
    from ser_ray.runtime import init_ray
    from ser_ray.learn.training import fit_torch

    load0 = os.getloadavg()[0]
    init_ray()
    import numpy as np
    import ray

    cores = ray.cluster_resources().get("CPU", 0)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        prepared = prepare(root, speakers=10)
        rng = np.random.default_rng(0)  # warm-up: one small Ray Train fit, untimed
        X, y = rng.normal(size=(32, 60, 6)).astype(np.float32), rng.integers(0, 2, 32)
        fit_torch("cnn1d", {"channels": [4], "dense": [4], "epochs": 1}, (60, 6), 2,
                  (X[:24], y[:24]), (X[24:], y[24:]), storage_path=root / "warm",
                  run_name="warm", trainer="ray_train", cpus_per_worker=0.5)
        fig = {"cores": cores, "folds": folds, "trials": trials, "trial_folds": trial_folds}
        fig["a"] = cv(prepared, "ray_train", folds, root / "cv-a")
        fig["b"] = cv(prepared, "auto", folds, root / "cv-b")
        fig["c"] = sweep(prepared, "ray_train", trials, trial_folds, root / "sweep-c")
        fig["d"] = sweep(prepared, "auto", trials, trial_folds, root / "sweep-d")
    fig["load_avg"] = [load0, os.getloadavg()[0]]
    speedup = fig["c"]["wall_s"] / fig["d"]["wall_s"]
    fig["same_results"] = abs(fig["c"]["best_ua"] - fig["d"]["best_ua"]) < 1e-9 and \
        abs(fig["a"]["ua"] - fig["b"]["ua"]) < 1e-9
    checks = [("(b) start-up share of a cv, trainer auto", fig["b"]["share"], "<=", 0.25,
               fig["b"]["share"] <= 0.25),
              ("sweep (c) / (d) wall", speedup, ">=", 2.0, speedup >= 2.0)]
    print(f"\n{cores:.0f} CPUs; 1-min load average {load0:.2f} at the start, "
          f"{fig['load_avg'][1]:.2f} at the end")
    print(f"{'run':<34}{'wall s':>8}{'start-up s':>12}{'share':>8}{'UA':>7}")
    for key, label in (("a", f"(a) cv {folds} folds, ray_train"), ("b", f"(b) cv {folds} folds, auto")):
        r = fig[key]
        print(f"{label + ' [' + r['trainer'] + ']':<34}{r['wall_s']:>8.1f}{r['startup_s']:>12.1f}"
              f"{r['share']:>8.2f}{r['ua']:>7.3f}")
    for key, label in (("c", "(c) sweep, ray_train"), ("d", "(d) sweep, auto")):
        r = fig[key]
        print(f"{label + f' {trials}x{trial_folds}':<34}{r['wall_s']:>8.1f}{'':>12}{'':>8}"
              f"{r['best_ua']:>7.3f}  ({r['trials']} trials complete)")
    print(f"the same UA on both trainers (cv and the sweep's best): {fig['same_results']}")
    ok = True
    for name, value, op, target, passed in checks:
        ok &= passed
        print(f"{'PASS' if passed else 'FAIL'}  {name}: {value:.2f} (target {op} {target})")
    if args.json:
        Path(args.json).write_text(json.dumps(fig, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
