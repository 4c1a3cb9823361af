"""Throughput and peak memory of ``prepare`` with a pretrained encoder (whisper-base, frozen,
every hidden state pooled), printed as ratios from ONE run.

    .venv/bin/python benchmarks/encoder_throughput.py                       # EmoDB, ~6 min on 2 cores
    .venv/bin/python benchmarks/encoder_throughput.py --files 120 --json /tmp/enc.json
    .venv/bin/python benchmarks/encoder_throughput.py --model DIR --input DIR --gpu   # on a GPU node

Input: ``../shared/data/emodb`` (or ``--input``), the first ``--files`` recordings in name order;
model ``../shared/models/whisper-base`` (or ``--model``). Measurements, in this order:
  (a) plain loop: one process, one thread, file by file: read + resample + trim, then the same
      forward pass as ser-ray (``SpeechEncoder.pooled`` on one clip): the seed-style loop;
  (b) ``prepare`` on Ray Data (decode tasks -> encoder actor pool) on a Ray of one CPU: one
      encoder actor, decoding in the tenth of a CPU it leaves;
  (c) the same with every core (one actor per CPU);
  (d), (e) the task engine (``engine=tasks``, the CPU default) with one worker and every core.
Each is preceded by an untimed ``prepare`` of one 4-file unit per CPU, so the task engine's
workers have the model loaded (Ray Data's actors are fresh processes every run). Throughput is
audio seconds encoded per wall second, start-up included. Peak memory: driver + Ray workers (RSS,
sampled every 0.2 s; see ``prepare_throughput.Monitor``). Targets: every core / one worker >= 1.7
on 2+ cores; one worker / plain loop >= 0.8 (one Ray worker loses at most a fifth to the
pipeline). With ``--gpu``, (b) runs one actor with one GPU and the GPU busy share is sampled
with ``nvidia-smi``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_throughput import Monitor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


def _files(src: Path, n: int) -> list[Path]:
    return sorted(p for p in src.rglob("*.wav"))[:n]


def plain_loop(files: list[Path], model: str) -> tuple[float, float]:
    """(a): -> (audio seconds, wall seconds), one thread."""
    import torch

    from ser_ray import audio
    from ser_ray.config import AudioConfig
    from ser_ray.encoders import SpeechEncoder

    torch.set_num_threads(1)
    enc = SpeechEncoder(model, device="cpu")
    enc.pooled([audio.condition(audio.decode(files[0].read_bytes()), AudioConfig(trim=True))])
    t0, seconds = time.perf_counter(), 0.0
    for f in files:
        y = audio.condition(audio.decode(f.read_bytes()), AudioConfig(trim=True))
        enc.pooled([y])
        seconds += len(y) / 16000
    return seconds, time.perf_counter() - t0


def run_prepare(files: list[Path], model: str, out: Path, workers: int | None,
                gpu: bool, engine: str = "data",
                per_unit: int = 32) -> tuple[float, float, Monitor]:
    from ser_ray.config import PrepareConfig, load
    from ser_ray.prepare import run_prepare as prepare

    src = out.with_name(out.name + "-input")
    src.mkdir(parents=True)
    for f in files:  # the same files, as a folder prepare can walk
        os.symlink(f, src / f.name)
    cfg = load(PrepareConfig, None, inputs=[str(src)], output=str(out), corpus="emodb",
               features=["encoder"], feature_options={"encoder": {"model": model}},
               num_workers=workers, engine=engine, gpus_per_worker=1.0 if gpu else 0.0,
               audio={"trim": True}, files_per_task=per_unit)
    with Monitor() as mon:
        summary = prepare(cfg, progress=False)
    return summary["audio_hours"] * 3600, mon.wall, mon


class GpuBusy:
    """Share of ``nvidia-smi`` samples (every 0.2 s) with the GPU busy, over a block."""

    def __enter__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()

        def loop():
            while not self._stop.wait(0.2):
                try:
                    out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                          "--format=csv,noheader,nounits"],
                                         capture_output=True, text=True, timeout=5).stdout
                    self.samples.append(float(out.split()[0]))
                except Exception:
                    pass

        self._t = threading.Thread(target=loop, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()

    @property
    def share(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--input", default=str(SHARED / "data" / "emodb"))
    ap.add_argument("--model", default=str(SHARED / "models" / "whisper-base"))
    ap.add_argument("--files", type=int, default=535)
    ap.add_argument("--gpu", action="store_true")
    ap.add_argument("--json")
    args = ap.parse_args()
    if not Path(args.model).is_dir() or not Path(args.input).is_dir():
        print(f"needs --model {args.model} and --input {args.input}", file=sys.stderr)
        return 2
    files = _files(Path(args.input), args.files)
    from ser_ray.runtime import init_ray

    import ray

    work = Path(tempfile.mkdtemp(prefix="enc-bench-"))
    cores = os.cpu_count() or 1
    res: dict = {"cores": cores, "files": len(files), "model": Path(args.model).name}
    try:
        audio_s, wall = plain_loop(files, args.model)
        res["plain"] = {"audio_s": audio_s, "wall_s": wall, "rate": audio_s / wall}
        # (b)/(d) on a Ray of one CPU (decoding shares it), (c)/(e) on every core
        runs = {"one": (1, 1, "data"), "every": (None, None, "data"),
                "tasks_one": (1, 1, "tasks"), "tasks_every": (None, None, "tasks")}
        for name, (workers, ray_cpus, engine) in runs.items():
            if ray.is_initialized():
                ray.shutdown()
            init_ray(num_cpus=ray_cpus)
            # a unit of 4 files per worker, so that every worker (tasks) has loaded the model
            n_warm = 4 * int(ray.cluster_resources().get("CPU", 1))
            run_prepare(files[:n_warm], args.model, work / f"warm-{name}", None, args.gpu, engine,
                        per_unit=4)
            if args.gpu:
                with GpuBusy() as busy:
                    a, w, mon = run_prepare(files, args.model, work / name, workers, True)
                res[name] = {"gpu_busy": busy.share}
            else:
                a, w, mon = run_prepare(files, args.model, work / name, workers, False, engine)
                res[name] = {}
            res[name].update(audio_s=a, wall_s=w, rate=a / w,
                             peak_mb=mon.peak["driver_workers"] / 2**20)
            if args.gpu:
                break
        ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    p, one = res["plain"], res["one"]
    print(f"whisper-base encoder, {len(files)} files, {p['audio_s']:.0f} s of audio, {cores} cores")
    print(f"(a) plain loop, 1 thread      {p['rate']:7.1f} audio s/s")
    print(f"(b) prepare, 1 encoder actor  {one['rate']:7.1f} audio s/s  peak {one['peak_mb']:.0f} MB"
          + (f"  GPU busy {one['gpu_busy']:.0%}" if one.get("gpu_busy") is not None else ""))
    if "every" in res:
        ev = res["every"]
        print(f"(c) prepare, every core       {ev['rate']:7.1f} audio s/s  peak {ev['peak_mb']:.0f} MB")
        print(f"every core / one worker: {ev['rate'] / one['rate']:.2f} (target >= 1.7)")
    print(f"one worker / plain loop: {one['rate'] / p['rate']:.2f} (target >= 0.8)")
    if "tasks_every" in res:
        t1, tn = res["tasks_one"], res["tasks_every"]
        for label, r in (("(d) engine=tasks, 1 worker", t1), ("(e) engine=tasks, every core", tn)):
            print(f"{label:30s}{r['rate']:7.1f} audio s/s  peak {r['peak_mb']:.0f} MB")
        print(f"tasks: every core / one worker: {tn['rate'] / t1['rate']:.2f} (target >= 1.7); "
              f"one worker / plain loop: {t1['rate'] / p['rate']:.2f} (target >= 0.8); "
              f"per core / plain loop: {tn['rate'] / cores / p['rate']:.2f}")
        print(f"every core, tasks / data: {tn['rate'] / ev['rate']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
