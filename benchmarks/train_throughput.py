"""Training throughput of ``fit_torch`` with 1 Ray Train worker and with every CPU, as a ratio.

    .venv/bin/python benchmarks/train_throughput.py               # 2000 samples, 8 epochs
    .venv/bin/python benchmarks/train_throughput.py --quick       # smoke run, 512 samples, 4 epochs
    .venv/bin/python benchmarks/train_throughput.py --threaded --json /tmp/train.json

Input: the same synthetic arrays for every run: ``--samples`` training rows of shape (100, 120)
(MFCC-like: 100 frames x 40 MFCC + deltas), 4 classes whose means differ slightly, float32, and
128 validation rows. The model is ``cnn1d`` at small width (channels 32-32, dense 64) unless
``--model``/``--options`` say otherwise; ``patience`` is set above ``--epochs`` so every run trains
every epoch.

Runs (each is one ``ser_ray.learn.training.fit_torch`` call, i.e. one TorchTrainer):
  1 worker       num_workers=1, cpus_per_worker=1 (one torch thread);
  N workers      num_workers=N = the cluster's CPUs, cpus_per_worker=1 (DDP, one thread each);
  1 worker x N   (``--threaded``) num_workers=1, cpus_per_worker=N (N intra-op threads): is DDP
                 better than giving one worker every core?
Before them one small untimed fit warms Ray up (Ray Data, the Train controller, imports).

Two measurements of the steady-state epoch time, both excluding Ray Train start-up:
  (wall)      ``fit_torch``'s history carries no timestamps, so: total wall time of an E-epoch
              fit minus that of a 1-epoch fit of the same setup, divided by E-1. Start-up
              (workers, process group, dataset), result loading and the final report cancel out.
  (callback)  where a run reports more than once: a ``ray.train.UserCallback`` (run in the Train
              controller, passed through fit_torch's ``callbacks``) appends time.time() and the
              reported epoch to a file after every ``ray.train.report``; epoch time = (last report
              - first report) / (epochs between them). The training loop reports (and
              checkpoints) at most every ``checkpoint_every_s`` (10 s by default) and after the
              last epoch, so short runs report once and show n/a here. Needs the controller on
              this machine (a local Ray), since the file is local.
Both use fit_torch as a job would (its default reporting interval), so the steady state includes
what the loop does per epoch besides SGD: every worker evaluates all validation rows, and the
occasional report + checkpoint. Throughput = training samples / epoch time. With N workers each
worker sees 1/N of the rows per epoch at the same per-worker batch size (global batch N x
batch_size; cnn1d's is 64).

Printed: a table per run and the ratio (N workers / 1 worker), ideally N. Figures come from
one run on one machine; on a shared machine they move with other people's load: the 1-minute
load average is printed at the start and the end, compare it with the CPU count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SHAPE = (100, 120)
N_CLASSES = 4
N_VAL = 128
SMALL_CNN = {"channels": [32, 32], "dense": [64]}


def make_arrays(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(X (n, 100, 120) float32, y (n,) int64): unit noise plus a small per-class offset."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, N_CLASSES, n)
    centres = rng.normal(0.0, 0.3, (N_CLASSES, 1, SHAPE[1]))
    X = rng.normal(0.0, 1.0, (n, *SHAPE)) + centres[y]
    return X.astype(np.float32), y.astype(np.int64)


def epoch_clock(path: str):
    """A Train callback that appends ``<unix time> <epoch>`` to ``path`` after every report."""
    import ray.train

    class EpochClock(ray.train.UserCallback):
        def __init__(self, path: str):
            self.path = path

        def after_report(self, run_context, metrics, checkpoint):
            epoch = metrics[0].get("epoch", -1) if metrics else -1
            with open(self.path, "a") as f:
                f.write(f"{time.time():.6f} {epoch}\n")

    return EpochClock(path)


def fit_once(train, val, *, model: str, options: dict, epochs: int, num_workers: int,
             cpus_per_worker: float, work: Path, name: str) -> dict:
    """One fit_torch call; returns its wall time and the (time, epoch) of each report."""
    from ser_ray.learn.training import fit_torch

    clock = work / f"{name}.clock"
    opts = {**options, "epochs": epochs, "patience": epochs + 1000}
    t0 = time.time()
    fit_torch(model, opts, SHAPE, N_CLASSES, train, val, storage_path=work, run_name=name,
              num_workers=num_workers, cpus_per_worker=cpus_per_worker,
              callbacks=[epoch_clock(str(clock))])
    wall = time.time() - t0
    stamps = [(float(t), int(e)) for t, e in (line.split() for line in
                                              clock.read_text().splitlines())] \
        if clock.exists() else []  # (unix time, epoch) per report
    return {"wall_s": wall, "stamps": stamps, "start": t0}


def measure(label: str, train, val, *, model: str, options: dict, epochs: int, workers: int,
            cpus_per_worker: float, work: Path) -> dict:
    n = len(train[1])
    tag = label.replace(" ", "_")
    one = fit_once(train, val, model=model, options=options, epochs=1, num_workers=workers,
                   cpus_per_worker=cpus_per_worker, work=work, name=f"{tag}_e1")
    full = fit_once(train, val, model=model, options=options, epochs=epochs,
                    num_workers=workers, cpus_per_worker=cpus_per_worker, work=work,
                    name=f"{tag}_e{epochs}")
    stamps = full["stamps"]
    epoch_cb = float("nan")
    if len(stamps) >= 2 and stamps[-1][1] > stamps[0][1]:
        epoch_cb = (stamps[-1][0] - stamps[0][0]) / (stamps[-1][1] - stamps[0][1])
    epoch_wall = (full["wall_s"] - one["wall_s"]) / (epochs - 1)
    first = stamps[0][0] - full["start"] if stamps else float("nan")
    row = {"label": label, "num_workers": workers, "cpus_per_worker": cpus_per_worker,
           "samples": n, "epochs": epochs, "wall_1_epoch_s": one["wall_s"],
           "wall_s": full["wall_s"], "first_report_s": first, "reports": stamps,
           "n_reports": len(stamps),
           "epoch_s_callback": epoch_cb, "epoch_s_wall": epoch_wall,
           "samples_per_s_callback": n / epoch_cb, "samples_per_s_wall": n / epoch_wall}
    print(f"  {label}: wall {one['wall_s']:.1f} s (1 epoch), {full['wall_s']:.1f} s ({epochs}); "
          f"epoch {epoch_wall:.2f} s (wall), {epoch_cb:.2f} s (callback, {len(stamps)} "
          f"reports)", file=sys.stderr)
    return row


def strict_json(obj):
    """``obj`` with NaN as None, so --json output is strict JSON."""
    if isinstance(obj, dict):
        return {k: strict_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_json(v) for v in obj]
    return None if isinstance(obj, float) and obj != obj else obj


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="512 samples, 4 epochs (smoke run)")
    ap.add_argument("--samples", type=int, default=None, help="training rows (default 2000)")
    ap.add_argument("--epochs", type=int, default=None, help="epochs per timed fit (default 8)")
    ap.add_argument("--model", default="cnn1d")
    ap.add_argument("--options", default=None,
                    help="model options as JSON (default for cnn1d: channels [32, 32], dense [64])")
    ap.add_argument("--num-cpus", type=int, default=None,
                    help="CPUs of the local Ray (default: all; ignored on a cluster)")
    ap.add_argument("--threaded", action="store_true",
                    help="also time 1 worker with every CPU as torch threads")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    args = ap.parse_args(argv)
    samples = args.samples or (512 if args.quick else 2000)
    epochs = args.epochs or (4 if args.quick else 8)
    if epochs < 2:
        ap.error("--epochs must be >= 2 (a 1-epoch fit is subtracted)")
    options = json.loads(args.options) if args.options else \
        (dict(SMALL_CNN) if args.model == "cnn1d" else {})

    import ray

    from ser_ray.runtime import init_ray
    from ser_ray.runtime import quiet_data_progress
    from ser_ray.learn.training import resolve_hyperparameters

    batch = resolve_hyperparameters(args.model, options)["batch_size"]
    load_start = os.getloadavg()
    init_ray(num_cpus=args.num_cpus)
    quiet_data_progress()
    cpus = int(ray.cluster_resources().get("CPU", 1))
    train, val = make_arrays(samples, seed=0), make_arrays(N_VAL, seed=1)
    runs = [("1 worker", 1, 1.0), (f"{cpus} workers", cpus, 1.0)]
    if args.threaded:
        runs.append((f"1 worker x {cpus} CPUs", 1, float(cpus)))

    with tempfile.TemporaryDirectory(prefix="train-throughput-") as tmp:
        work = Path(tmp)
        print(f"[bench] Ray up with {cpus} CPU(s); warm-up fit (untimed)", file=sys.stderr)
        t0 = time.time()
        fit_once(make_arrays(64, seed=2), val, model=args.model, options=options, epochs=1,
                 num_workers=1, cpus_per_worker=1.0, work=work, name="warmup")
        warm = time.time() - t0
        rows = [measure(label, train, val, model=args.model, options=options, epochs=epochs,
                        workers=w, cpus_per_worker=c, work=work) for label, w, c in runs]
    load_end = os.getloadavg()

    base = rows[0]
    ratios = {r["label"]: {"wall": r["samples_per_s_wall"] / base["samples_per_s_wall"],
                           "callback": r["samples_per_s_callback"] / base["samples_per_s_callback"]}
              for r in rows[1:]}

    def fmt(x: float, spec: str) -> str:
        return "n/a" if x != x else format(x, spec)  # NaN: the run reported once

    print(f"\ntraining throughput, {args.model} {json.dumps(options)}, {samples} x {SHAPE} "
          f"float32, {N_CLASSES} classes, {epochs} epochs, batch {batch} per worker, CPU")
    print(f"machine: {platform.node()}, {os.cpu_count()} CPUs visible, Ray CPUs {cpus}; "
          f"load average (1 min) start {load_start[0]:.2f}, end {load_end[0]:.2f}; "
          f"warm-up fit {warm:.1f} s\n")
    hdr = (f"{'run':<20}{'cpu/w':>6}{'wall 1ep':>10}{'wall':>8}{'1st rep':>9}{'reps':>5}"
           f"{'epoch wall':>11}{'epoch cb':>10}{'samples/s wall':>16}{'samples/s cb':>14}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        print(f"{r['label']:<20}{r['cpus_per_worker']:>6.0f}{r['wall_1_epoch_s']:>10.1f}"
              f"{r['wall_s']:>8.1f}{r['first_report_s']:>9.1f}{r['n_reports']:>5}"
              f"{r['epoch_s_wall']:>11.3f}{fmt(r['epoch_s_callback'], '.3f'):>10}"
              f"{r['samples_per_s_wall']:>16.0f}{fmt(r['samples_per_s_callback'], '.0f'):>14}")
    print("  seconds. wall 1ep / wall: one fit_torch call of 1 / all epochs; 1st rep: call start "
          "-> first report; reps: reports of the full run;\n  epoch wall = (wall - wall 1ep) / "
          "(epochs - 1); epoch cb = time between first and last report / epochs between.\n")
    print("ratios: samples/s over the 1-worker run")
    for r in rows[1:]:
        ideal = r["num_workers"] * r["cpus_per_worker"]
        q = ratios[r["label"]]
        print(f"  {r['label']:<20} wall {q['wall']:5.2f} (efficiency {q['wall'] / ideal:.0%} of "
              f"ideal {ideal:.0f})   callback {fmt(q['callback'], '5.2f')}")
    if max(load_start[0], load_end[0]) > cpus:
        print(f"  WARNING: the load average exceeded the {cpus} Ray CPU(s): other processes shared "
              "the machine, so these figures are noisy and understate the hardware.")
    if args.json:
        Path(args.json).write_text(json.dumps(strict_json({
            "model": args.model, "options": options, "samples": samples, "shape": list(SHAPE),
            "epochs": epochs, "cpus": cpus, "load_start": load_start, "load_end": load_end,
            "batch_size": batch, "warmup_s": warm, "runs": rows, "ratios": ratios}),
            indent=2, allow_nan=False))
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
