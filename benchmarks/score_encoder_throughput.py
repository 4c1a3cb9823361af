"""Nightly scoring with a whisper-base-feature model: throughput, scaling, model-stage busy share
and peak memory, printed as ratios from ONE run.

    sh docs/emodb-night.sh                                   # trains /tmp/emodb-night/model
    .venv/bin/python benchmarks/score_encoder_throughput.py  # ~10 min on 2 cores
    .venv/bin/python benchmarks/score_encoder_throughput.py --model DIR --calls 4 --scale 10 \
        --json /tmp/score-encoder.json

Model: any model folder on ``encoder`` features (default: the logistic regression on
whisper-base's middle layer that ``docs/emodb-night.sh`` trains on EmoDB speakers 03-14). Input:
the synthetic backlog of ``score_throughput.py`` (``make_backlog``: 8 kHz WAV calls, half of them
stereo, ``--minutes`` long; the Nx backlog is N hard-linked copies under distinct names). Every
run uses the job's defaults (VAD ``auto``, units of 4 calls) with ``rescore=True``.

Runs, after one untimed warm-up run (Ray start-up, first imports):
  (b)   ``num_workers=1``, the mid backlog (``--mid`` x 1x);
  (c)   one actor per core, the mid backlog;
  (s)   ``engine=staged`` (one read pool, model actors on the rest), the mid backlog;
  (c1)  one actor per core, 1x;   (c10) one actor per core, ``--scale`` x 1x;
  (c10-int8) the same with the encoder in int8 (``encoder_precision=int8``; the fp32-trained
        model, so ``allow_mixed_precision``: ``benchmarks/encoder_precision.py`` measures what
        that does to UA, within 0.5 points on EmoDB).
  (c10-diarize) (c10) with every call diarised (``customer_channel=diarize``: a voices pass,
        then only the customer's windows scored), the cost of diarisation.
  (c10-full), (c10-int8-full) (c10) and (c10-int8) with every encoder layer run
        (``SER_RAY_ENCODER_DEPTH=full``, in a child process with its own Ray): scoring runs
        the encoder only up to the deepest state the head reads (whisper-base's middle state:
        3 of 6 layers), and these rows are the cost without that cut.
Throughput is audio seconds per second of the scoring phase (``scoring_s``: listing to the last
unit, actor start-up and model loading included). The model-stage busy share is the run
record's ``model_seconds`` (features, encoder, head and staging writes, summed over the model
actors) over (model actors x ``scoring_s``); the rest of an actor's time is reading, decoding,
VAD and windows (``read_seconds``; in its own pool with ``staged``), start-up and waiting.
Peak memory as in ``prepare_throughput.py``: RSS of the driver and every Ray worker it started.

With ``--gpu`` (a GPU node; not run here, no GPU was lent) only (g) runs: the 10x backlog with
``engine=staged`` and one model actor per GPU, printing audio hours per GPU hour and the GPU busy
share (mean ``nvidia-smi`` utilisation over the run; target >= 80 %).

Targets on CPU: real-time factor per core (c10 / cores) >= 25, with int8 (c10-int8 / cores)
>= 50, peak memory c10 / c1 <= 1.3.
Scaling (c)/(b) is printed against the ideal of one per core. The exit status is 1 when a
target is not met.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from score_throughput import cpu_model, make_backlog, measure  # noqa: E402

DEFAULT_MODEL = Path("/tmp/emodb-night/model")
FULL = {"SER_RAY_ENCODER_DEPTH": "full"}


def run_once(backlog: Path, model: Path, out: Path, **kw) -> dict:
    import shutil

    from ser_ray.config import ScoreConfig
    from ser_ray.score import run_score

    shutil.rmtree(out, ignore_errors=True)
    return run_score(ScoreConfig(model=str(model), inputs=(str(backlog),), output=str(out),
                                 rescore=True, **kw), progress=False)


def run_child(backlog: Path, model: Path, out: Path, env: dict[str, str], **kw) -> dict:
    """:func:`run_once` in a child process with its own Ray and ``env`` (what Ray's workers of
    this process cannot be given after it started): the run record."""
    import subprocess

    code = ("import json, sys; from pathlib import Path; sys.path.insert(0, %r); "
            "from score_encoder_throughput import run_once; "
            "print('RUN ' + json.dumps(run_once(Path(%r), Path(%r), Path(%r), **%r), default=str))"
            % (str(Path(__file__).resolve().parent), str(backlog), str(model), str(out), kw))
    got = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, text=True,
                         capture_output=True, check=True)
    return json.loads(next(x for x in got.stdout.splitlines() if x.startswith("RUN "))[4:])


def busy_share(run: dict) -> float:
    return run["model_seconds"] / max(run["worker_processes"] * run["scoring_s"], 1e-9)


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


class GpuSampler:
    """``nvidia-smi`` GPU utilisation every 0.5 s while the block runs; ``busy()`` its mean."""

    def __init__(self):
        import threading

        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import subprocess

        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits"], capture_output=True, text=True)
            vals = [float(v) for v in out.stdout.split() if v.strip().isdigit()]
            if vals:
                self.samples.append(sum(vals) / len(vals) / 100)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        return False

    def busy(self) -> float:
        return sum(self.samples) / max(len(self.samples), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="a model on encoder features")
    ap.add_argument("--calls", type=int, default=4, help="calls in the 1x backlog")
    ap.add_argument("--minutes", type=float, nargs=2, default=(2.0, 3.0), metavar=("LO", "HI"))
    ap.add_argument("--mid", type=int, default=4, help="size of the backlog for (b), (c), (s)")
    ap.add_argument("--scale", type=int, default=10, help="size of the large backlog in 1x units")
    ap.add_argument("--gpu", action="store_true",
                    help="on a GPU node: (g) the 10x backlog with engine=staged, one model actor "
                         "per GPU; prints audio hours per GPU hour and the GPU busy share")
    ap.add_argument("--runs", help="comma-separated subset of b,c,s,c1,c10,c10-int8,c10-diarize,"
                                   "c10-full,c10-int8-full (default: all)")
    ap.add_argument("--json", metavar="PATH")
    ap.add_argument("--tmp", help="parent folder for the temp backlog (default: $TMPDIR)")
    args = ap.parse_args(argv)
    if not (args.model / "features.json").is_file():
        ap.error(f"--model {args.model}: no model folder there; `sh docs/emodb-night.sh` trains "
                 "the default (logreg on whisper-base features)")
    extractors = json.loads((args.model / "features.json").read_text()).get("features", [])
    from ser_ray.runtime import init_ray

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="ser-ray-score-enc-", dir=args.tmp))
    one, big, audio_1x = make_backlog(tmp, args.calls, args.scale, min(cores, args.calls),
                                      tuple(args.minutes))
    mid = tmp / "mid"
    mid.mkdir()
    for r in range(args.mid):
        os.symlink(big / f"rep{r:02d}", mid / f"rep{r:02d}")
    print(f"backlog: {args.calls} calls, {audio_1x / 60:.1f} min of audio (1x); model "
          f"{args.model} ({', '.join(extractors)}); {cores} cores", file=sys.stderr)
    init_ray()
    measure("warm-up (untimed)", lambda: run_once(one, args.model, tmp / "o"))
    plan = [("b", mid, {"num_workers": 1}), ("c", mid, {}),
            ("s", mid, {"engine": "staged", "read_cpus": 0.5}),
            ("c1", one, {}), ("c10", big, {}),
            ("c10-int8", big, {"encoder_precision": "int8", "allow_mixed_precision": True}),
            ("c10-diarize", big, {"customer_channel": "diarize"}),
            # every encoder layer run, as before scoring cut the encoder at the head's state
            ("c10-full", big, {"env": FULL}),
            ("c10-int8-full", big, {"encoder_precision": "int8", "allow_mixed_precision": True,
                                    "env": FULL})]
    if args.gpu:
        plan = [("g", big, {"engine": "staged", "gpus_per_worker": 1.0, "batch_size": 256})]
    elif args.runs:
        plan = [p for p in plan if p[0] in args.runs.split(",")]
    res = {}
    for key, backlog, kw in plan:
        t0 = time.time()
        gpu = GpuSampler() if args.gpu else None
        with gpu or _nothing():
            night = run_child if "env" in kw else run_once
            mon, run = measure(key, lambda: night(backlog, args.model, tmp / f"o-{key}", **kw))
        res[key] = {"audio_s": run["fresh_audio_s"], "scoring_s": run["scoring_s"],
                    "wall_s": time.time() - t0, "rate": run["fresh_audio_s"] / run["scoring_s"],
                    "engine": run["engine"], "model_workers": run["worker_processes"],
                    "model_busy": busy_share(run), "read_s": run["read_seconds"],
                    "model_s": run["model_seconds"], "peak_gb": mon.peak["driver_workers"] / 2 ** 30,
                    "calls": run["calls"],
                    "voices_s": (run.get("diarization") or {}).get("seconds")}
        if gpu:
            res[key]["gpu_busy"] = gpu.busy()
    if args.gpu:
        g = res["g"]
        gpus = g["model_workers"]
        print(f"\n(g) {g['audio_s'] / 3600:.2f} h of audio in {g['scoring_s']:.1f} s on {gpus} GPU(s): "
              f"{g['rate'] / gpus:.0f} audio hours per GPU hour; GPU busy {g['gpu_busy']:.0%} "
              f"(nvidia-smi utilisation, target >= 80 %); model actors busy {g['model_busy']:.0%}")
        if args.json:
            Path(args.json).write_text(json.dumps({"runs": res, "cores": cores}, indent=2))
        return 0 if g["gpu_busy"] >= 0.8 else 1
    formulas = {"rt_per_core": (("c10",), lambda r: r["c10"]["rate"] / cores),
                "rt_per_core_int8": (("c10-int8",), lambda r: r["c10-int8"]["rate"] / cores),
                "int8_vs_fp32": (("c10", "c10-int8"), lambda r: r["c10-int8"]["rate"] / r["c10"]["rate"]),
                "cut_vs_full": (("c10", "c10-full"), lambda r: r["c10"]["rate"] / r["c10-full"]["rate"]),
                "cut_vs_full_int8": (("c10-int8", "c10-int8-full"),
                                     lambda r: r["c10-int8"]["rate"] / r["c10-int8-full"]["rate"]),
                "rt_per_core_diarize": (("c10-diarize",), lambda r: r["c10-diarize"]["rate"] / cores),
                "diarize_vs_downmix": (("c10", "c10-diarize"),
                                       lambda r: r["c10-diarize"]["rate"] / r["c10"]["rate"]),
                # the voices pass alone: audio seconds per second of its worker time
                "voices_pass_rt_per_worker": (("c10-diarize",), lambda r: r["c10-diarize"]["audio_s"]
                                              / max(r["c10-diarize"]["voices_s"] or 0, 1e-9)),
                "scaling": (("b", "c"), lambda r: r["c"]["rate"] / r["b"]["rate"]),
                "staged_vs_actors": (("c", "s"), lambda r: r["s"]["rate"] / r["c"]["rate"]),
                "memory_10x_1x": (("c1", "c10"), lambda r: r["c10"]["peak_gb"] / r["c1"]["peak_gb"])}
    ratios = {k: f(res) for k, (need, f) in formulas.items() if all(n in res for n in need)}
    targets = {"rt_per_core": (">=", 25.0), "rt_per_core_int8": (">=", 50.0),
               "memory_10x_1x": ("<=", 1.3)}
    print(f"\n{cpu_model()}, {cores} cores; audio 1x {audio_1x:.0f} s\n")
    print("| run | engine | model actors | audio s | scoring s | audio s/s | model busy | read s "
          "| model s | peak GB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, r in res.items():
        print(f"| ({key}) | {r['engine']} | {r['model_workers']} | {r['audio_s']:.0f} | "
              f"{r['scoring_s']:.1f} | {r['rate']:.1f} | {r['model_busy']:.0%} | {r['read_s']:.1f} | "
              f"{r['model_s']:.1f} | {r['peak_gb']:.2f} |")
    ok = True
    print()
    for name, value in ratios.items():
        line = f"{name}: {value:.2f}"
        if name in targets:
            op, want = targets[name]
            met = value >= want if op == ">=" else value <= want
            ok &= met
            line += f" (target {op} {want}: {'met' if met else 'NOT met'})"
        elif name == "scaling":
            line += f" (ideal {cores})"
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": res, "ratios": ratios, "cores": cores,
                                               "audio_1x_s": audio_1x}, indent=2))
    import shutil

    shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
