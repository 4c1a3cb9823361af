"""Throughput and peak memory of the ``score`` job, printed as ratios from ONE run.

    .venv/bin/python benchmarks/score_throughput.py              # 8 calls, x10; ~5 min on 2 cores
    .venv/bin/python benchmarks/score_throughput.py --quick      # smoke run, ~1.5 min
    .venv/bin/python benchmarks/score_throughput.py --model demo-output/model-cnn1d \
        --json /tmp/score.json

Input: a synthetic backlog of contact-centre calls (``synthesize_backlog``: 8 kHz 16-bit WAV,
3-5 min each, half of them stereo, no broken files), synthesised once into a temp folder in one
part per core (``--calls`` in all). The 1x backlog is ``rep00/``; the Nx backlog is ``rep00/`` to
``rep<N-1>/``, hard links to the same files under distinct names, so every call has its own
call_id and costs the same to score. Audio seconds are the run record's ``fresh_audio_s``
(calls scored or found without speech), checked against the synthesised durations.

The model (unless ``--model DIR``) is the one ``make demo`` trains, left untrained (weights do
not change the cost): ``cnn1d`` with channels (64, 32) and dense (64,) on 40 MFCC + deltas x
200 frames (2 s windows at 16 kHz), 8 classes, global mean 0 / std 1. Every run uses the job's
defaults (``ScoreConfig()``: VAD ``auto`` = silero when installed, units of 4 calls, one actor
per Ray CPU) with ``rescore=True`` and a fresh output folder.

Ray is started once (``init_ray``) and one every-core 1x run warms it up, untimed (c0). Then
``--repeats`` interleaved rounds of:
  (b)  ``run_score`` with num_workers=1, 1x;
  (c)  ``run_score`` with num_workers=None (one actor per Ray CPU), 1x;
  (cN) the same on the Nx backlog;
  (bN) num_workers=1 on the Nx backlog;
  (cNd), (bNd) (``--also-ray-data``, on by default) (cN) and (bN) with ``engine=ray_data``
       (Ray Data ``map_batches`` over an actor pool) instead of the default pool of Ray actors.
       Ray Data leaves detached helper actors (stats, autoscaling coordinator, actor
       locations) running for the rest of the session; after every run the benchmark kills
       them, untimed, so each run is measured in a session like its own job's;
  (v)  (``--also-energy``, on by default) (c) with ``vad.name=energy``: what the default VAD
       costs;
  (e)  (``--in-process``, on by default) the actors' per-unit code, ``UnitScorer.score_unit``,
       in this process on the 1x backlog, one thread, no Ray: the per-core ceiling of the runs,
       split into decode (read, decode, channel, resample), VAD, features, model and the rest
       (summaries, staged Parquet writes). Loading and a warm-up call are timed apart.
Throughput is audio seconds per second of the run's scoring phase (``scoring_s``: from listing
to the last unit, so Ray Data start-up, actor start-up and model loading count, publishing does
not); the table also shows it per ``wall_s`` (all of ``run_score``). The attempt with the
highest throughput among those whose "others" stays under 0.3 cores counts. Peak memory and
"others" are measured as in prepare_throughput.py (its Monitor): the max over 0.2 s samples of
RSS(driver) + RSS(every ``ray::`` worker process this driver started, idle pooled workers
included), and the CPU of processes outside this benchmark, in cores. "actors" counts the
scoring actor processes seen during a run. After each run the benchmark waits, untimed, until
that run's actors have exited: they take seconds and CPU to go, which the next run would pay.

Ratios and targets:
  (cN)/(bN)            every core vs one worker, Nx        >= 0.9 x cores (1.8 on 2 cores)
  (cN)/cores           real-time factor per core, Nx       >= 300
  peak (cN)/(c)        memory of an Nx vs a 1x backlog      <= 1.3
Scaling and the real-time factor use the Nx backlog: a nightly backlog holds hours of audio, so
actor start-up is paid once a run, not once per half hour of audio. The 1x figures are printed
beside them: (c)/(b) on half an hour of audio is mostly start-up on both sides (see "scoring
time beyond (e)"). The exit status is 1 when a target is not met.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from prepare_throughput import DISTURBED_CORES, Monitor, _psutil, wait_quiet  # noqa: E402

MINUTES = (3.0, 5.0)
CALL_SR = 8000
# What `make demo` trains (ser_ray/demo.py learn()): cnn1d on MFCC cropped to 200 frames.
FRAMES = 200
CNN = {"channels": (64, 32), "dense": (64,)}
LABELS = ("neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised")
RTF_TARGET = 300.0
MEM_TARGET = 1.3


# --------------------------------------------------------------------------------------------
# Inputs: backlog and model
# --------------------------------------------------------------------------------------------

def _synth_part(args: tuple[str, int, int, tuple[float, float]]) -> float:
    """Write part ``k`` of the backlog; returns its audio seconds."""
    from ser_ray.synth import synthesize_backlog

    root, k, n_calls, minutes = args
    truth = synthesize_backlog(Path(root) / f"part{k}", n_calls=n_calls, seed=k, minutes=minutes,
                               sr=CALL_SR, stereo_share=0.5, bad=False, metadata=False)
    return float(truth["duration_s"].sum())


def make_backlog(tmp: Path, n_calls: int, scale: int, parts: int,
                 minutes: tuple[float, float]) -> tuple[Path, Path, float]:
    """-> (1x folder, Nx folder, 1x audio seconds). Parts are synthesised in parallel, outside
    the backlog (synthesize_backlog writes a truth CSV beside its folder); the Nx folder holds
    ``scale`` hard-linked copies of them, named ``rep<r>/r<r>-p<k>-call-NNNN.wav`` so call_ids
    differ whether the job names calls by file name or by path."""
    synth, big = tmp / "synth", tmp / "backlog"
    sizes = [n_calls // parts + (k < n_calls % parts) for k in range(parts)]
    with ProcessPoolExecutor(max_workers=parts) as pool:
        audio_s = sum(pool.map(_synth_part, [(str(synth), k, n, minutes)
                                             for k, n in enumerate(sizes) if n]))
    wavs = sorted(synth.glob("part*/*.wav"))
    for r in range(scale):
        for f in wavs:
            target = big / f"rep{r:02d}" / f"r{r:02d}-p{f.parent.name[4:]}-{f.name}"
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.link(f, target)
            except OSError:  # another filesystem: a copy costs the same to score
                shutil.copyfile(f, target)
    return big / "rep00", big, audio_s


def write_default_model(path: Path) -> Path:
    """The demo's cnn1d on MFCC, untrained, as a model dir with the feature config that
    ``load_features`` + ``train_model`` would store."""
    import numpy as np
    import torch

    from ser_ray.models.artifact import save_model_dir
    from ser_ray.config import AudioConfig, to_dict
    from ser_ray.learn.data import TIME_AXIS
    from ser_ray.features import extractor_config, get_extractor
    from ser_ray.models import build_model, model_config

    mfcc = extractor_config(get_extractor("mfcc"))
    n_feat = mfcc["n_mfcc"] * (mfcc["deltas"] + 1)
    shape = (FRAMES, n_feat)
    feature_config = {
        "features": ["mfcc"], "frames": FRAMES, "time_axis": TIME_AXIS["mfcc"],
        "extractors": {"mfcc": mfcc}, "audio": to_dict(AudioConfig(trim=True, normalise="rms")),
        "label_set": None, "roots": [], "dropped_labels": {}, "clip_s": 3.0, "normalise": "global",
    }
    torch.manual_seed(0)
    net = build_model("cnn1d", shape, len(LABELS), **CNN).eval()
    return save_model_dir(
        path, model_name="cnn1d", model_config=model_config("cnn1d", **CNN), input_shape=shape,
        labels=list(LABELS), model=net, feature_config=feature_config,
        normalisation={"mean": np.zeros((1, n_feat), np.float32),
                       "std": np.ones((1, n_feat), np.float32)},
        extra={"note": "untrained; written by benchmarks/score_throughput.py"})


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def score_config(backlog: Path, model: Path, out: Path, num_workers: int | None,
                 vad: str | None = None, engine: str | None = None):
    from ser_ray.config import ScoreConfig

    extra = {"vad": {"name": vad}} if vad else {}
    if engine:
        extra["engine"] = engine
    return ScoreConfig(model=str(model), inputs=(str(backlog),), output=str(out),
                       num_workers=num_workers, rescore=True, **extra)


def run_score_once(backlog: Path, model: Path, out: Path, num_workers: int | None,
                   vad: str | None = None, engine: str | None = None) -> dict[str, Any]:
    from ser_ray.score import run_score

    shutil.rmtree(out, ignore_errors=True)
    return run_score(score_config(backlog, model, out, num_workers, vad, engine), progress=False)


class _Clock:
    """Wraps a callable and adds its wall time to ``totals[key]``."""

    def __init__(self, fn, totals: dict[str, float], key: str):
        self.fn, self.totals, self.key = fn, totals, key

    def __call__(self, *a, **kw):
        t0 = time.perf_counter()
        try:
            return self.fn(*a, **kw)
        finally:
            self.totals[self.key] += time.perf_counter() - t0


def units_in_process(backlog: Path, model: Path, out: Path) -> dict[str, Any]:
    """(e) ``UnitScorer.score_unit`` over every unit of ``backlog`` in this process, one thread:
    the actors' per-unit code without Ray. Loading (model, detector) and a warm-up unit of one
    call are timed apart; then every unit is timed, split by wrapping the scorer's steps."""
    from collections import Counter

    import torch
    from threadpoolctl import threadpool_limits

    from ser_ray import score
    from ser_ray.score import read as score_read
    from ser_ray.storage import Storage

    shutil.rmtree(out, ignore_errors=True)
    cfg = score_config(backlog, model, out, 1)
    info = score.ModelInfo.read(model)
    settings = score.worker_settings(cfg, info, "bench", str(out / "_staging"))
    calls = score.iter_calls(cfg.inputs, Storage(), Counter(), [], call_id=cfg.call_id)
    units = list(score.iter_units(calls, cfg.calls_per_task, int(cfg.mb_per_task * 2**20), "bench"))
    detect_speech = score_read.detect_speech
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a Ray worker (OMP_NUM_THREADS=1)
    try:
        with threadpool_limits(1):
            t0 = time.perf_counter()
            scorer = score.UnitScorer(settings, model)
            load_s = time.perf_counter() - t0
            # First calls pay one-off costs (numba's set-up under librosa, silero's and torch's
            # first passes), as each new actor does: one call is scored first, timed apart.
            t0 = time.perf_counter()
            st0 = scorer.score_unit(score.Unit("warm-up", units[0].calls[:1]))
            warmup_s = time.perf_counter() - t0
            parts = {"decode": 0.0, "vad": 0.0, "features": 0.0, "model": 0.0}
            scorer.reader.load = _Clock(scorer.reader.load, parts, "decode")
            score_read.detect_speech = _Clock(detect_speech, parts, "vad")  # a module-level call
            scorer.features.many = _Clock(scorer.features.many, parts, "features")
            scorer.predictor.predict_proba = _Clock(scorer.predictor.predict_proba, parts, "model")
            status: Counter = Counter()
            audio_s, t0 = 0.0, time.perf_counter()
            for unit in units:
                st = scorer.score_unit(unit)
                status.update(st["status"])
                audio_s += st["audio_s"]
            seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
        score_read.detect_speech = detect_speech
    parts["rest (summaries, Parquet writes)"] = seconds - sum(parts.values())
    return {"audio_s": audio_s, "seconds": seconds, "load_s": load_s, "warmup_unit_s": warmup_s,
            "first_unit_audio_s": st0["audio_s"], "parts_s": parts,
            "status": dict(status), "units": len(units), "vad": scorer.reader.detector.name}


class ActorMonitor(Monitor):
    """A :class:`Monitor` that also remembers every scoring actor process it saw, so a run
    shows how many actors it started and how the work spread over them."""

    def __init__(self):
        super().__init__()
        self.actors: set[int] = set()

    def _sample(self) -> None:
        super()._sample()
        try:
            self.actors.update(p.pid for p in _scoring_actors(self.psutil, self.me))
        except self.psutil.Error:
            pass

    def actor_cpu(self) -> list[float]:
        """CPU seconds each scoring actor used during the run (as last sampled), largest first."""
        return sorted((self._cpu.get(p, 0.0) - self._cpu0.get(p, 0.0) for p in self.actors),
                      reverse=True)


def _ray_workers(psutil, me, match) -> list:
    """This process's Ray worker descendants whose title (``ray::...``) ``match`` accepts."""
    procs = []
    for p in me.children(recursive=True):
        try:
            cmd = p.cmdline()
        except psutil.Error:
            continue
        if cmd and cmd[0].startswith("ray::") and match(cmd[0]):
            procs.append(p)
    return procs


def _scoring_actors(psutil, me) -> list:
    return _ray_workers(psutil, me, lambda title: "ScoreActor" in title)


def _wait_gone(match, max_s: float) -> float:
    """Wait (at most ``max_s``) until no Ray worker ``match`` accepts is alive; -> seconds."""
    psutil = _psutil()
    me, t0 = psutil.Process(), time.perf_counter()
    while _ray_workers(psutil, me, match) and time.perf_counter() - t0 < max_s:
        time.sleep(0.1)
    return time.perf_counter() - t0


def wait_actors_gone(max_s: float = 60.0) -> float:
    """Wait until no scoring actor of an earlier run is alive; returns the seconds waited.

    A finished run's actors take seconds (and about a core) to exit; a run measured meanwhile
    would pay for them."""
    return _wait_gone(lambda title: "ScoreActor" in title, max_s)


# Ray Data's detached helpers (name, namespace). A Ray Data run starts them and they stay for the
# rest of the Ray session, using CPU while idle; a nightly job with engine=actors never has them.
RAY_DATA_ACTORS = (("datasets_stats_actor", "_dataset_stats_actor"),
                   ("AutoscalingCoordinator", "AutoscalingCoordinator"),
                   ("ActorLocationTracker", "ActorLocationTracker"))


def drop_ray_data_actors(max_s: float = 30.0) -> None:
    """Kill Ray Data's helper actors and wait for their processes to exit (untimed), so the next
    run is measured in a session like its own job's."""
    import ray

    for name, namespace in RAY_DATA_ACTORS:
        try:
            ray.kill(ray.get_actor(name, namespace=namespace))
        except ValueError:  # not started in this session
            pass
    titles = tuple(f"ray::{t}" for t in ("_StatsActor", "_AutoscalingCoordinatorActor",
                                          "ActorLocationTracker"))
    _wait_gone(lambda title: title.startswith(titles), max_s)


def measure(label: str, fn) -> tuple[Monitor, Any]:
    with ActorMonitor() as mon:
        result = fn()
    mon.actors_exit_s = wait_actors_gone()
    drop_ray_data_actors()
    gone = f"; its actors exited {mon.actors_exit_s:.1f} s later" if mon.actors else ""
    print(f"  {label}: {mon.wall:.2f} s wall, {mon.own_cpu / mon.wall:.2f} cores ours, "
          f"{mon.others:.2f} cores others{gone}", file=sys.stderr, flush=True)
    return mon, result


def _rate(key: str, result: dict[str, Any]) -> float:
    if key == "e":
        return result["audio_s"] / result["seconds"]
    return result["fresh_audio_s"] / result["scoring_s"]


def best_attempt(key: str, attempts: list[tuple[Monitor, Any]]) -> tuple[Monitor, Any, dict, int]:
    """Fastest undisturbed attempt (fastest of all when every one was disturbed); peak memory
    is the max over all attempts."""
    quiet = [a for a in attempts if a[0].others <= DISTURBED_CORES] or attempts
    mon, result = max(quiet, key=lambda a: _rate(key, a[1]))
    peak = max((a[0].peak for a in attempts), key=lambda p: p["driver_workers"])
    return mon, result, peak, sum(a[0].others > DISTURBED_CORES for a in attempts)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


NAMES = {"b": "(b) score, 1 worker, 1x", "c": "(c) score, every core, 1x",
         "cN": "(cN) score, every core, {N}x", "bN": "(bN) score, 1 worker, {N}x",
         "cNd": "(cNd) (cN) with engine=ray_data", "bNd": "(bNd) (bN) with engine=ray_data",
         "v": "(v) (c) with vad=energy, 1x", "e": "(e) UnitScorer, no Ray, 1 core, 1x"}
ORDER = ("b", "c", "cN", "bN", "cNd", "bNd", "v", "e")


def summarise(attempts: dict[str, list], n_cores: int, scale: int, audio_1x: float,
              names: dict[str, str]) -> tuple[dict, dict, dict]:
    """Best attempts -> (per-run figures, ratios, targets {key: (met, text)})."""
    res: dict[str, dict] = {}
    for key, tries in attempts.items():
        mon, out, peak, disturbed = best_attempt(key, tries)
        r = res[key] = {"monitor_wall_s": mon.wall, "cores_used": mon.own_cpu / mon.wall,
                        "others": mon.others, "attempts": len(tries),
                        "disturbed_attempts": disturbed,
                        "all_rates": [round(_rate(key, t[1]), 1) for t in tries]}
        if key == "e":
            r.update(out, audio_s_per_s=_rate(key, out), workers=1,
                     calls=sum(out["status"].values()), counts=out["status"])
            continue
        r.update(audio_s=out["fresh_audio_s"], scoring_s=out["scoring_s"], wall_s=out["wall_s"],
                 publish_s=out["publish_s"], calls=out["calls"], counts=out["counts"],
                 units=out["units"], vad=out["vad"]["name"], window_s=out["window_s"],
                 window_from=out["window_from"], audio_s_per_s=_rate(key, out),
                 audio_s_per_wall_s=out["fresh_audio_s"] / out["wall_s"],
                 workers=1 if key.startswith("b") else n_cores, peak_rss=dict(peak),
                 actors=len(mon.actors), actor_cpu_s=[round(x, 2) for x in mon.actor_cpu()],
                 actors_exit_s=mon.actors_exit_s)
    # Every call must have been scored, and the audio counted must be what was synthesised.
    for key, r in res.items():
        want = audio_1x * (scale if "N" in key else 1)
        bad = {s: n for s, n in r["counts"].items() if s not in ("scored", "no_speech")}
        if bad or abs(r["audio_s"] - want) > 1e-3 * want:
            raise RuntimeError(f"{names[key]}: counted {r['audio_s']:.1f} s of audio, "
                               f"synthesised {want:.1f} s; other statuses {bad}")

    b, c, cn, bn = (res[k]["audio_s_per_s"] for k in ("b", "c", "cN", "bN"))
    mem1, memn = (res[k]["peak_rss"]["driver_workers"] for k in ("c", "cN"))
    ratios: dict[str, Any] = {"cN_over_bN": cn / bn, "c_over_b": c / b,
                              "rtf_per_core": cn / n_cores, "rtf_per_core_1x": c / n_cores,
                              "mem_scale_over_1x": memn / mem1}
    if "cNd" in res:
        cnd, bnd = res["cNd"]["audio_s_per_s"], res["bNd"]["audio_s_per_s"]
        ratios.update(ray_data_cN_over_bN=cnd / bnd, actors_over_ray_data_cN=cn / cnd,
                      actors_over_ray_data_bN=bn / bnd)
    if "v" in res:
        ratios["energy_over_default_vad"] = res["v"]["audio_s_per_s"] / c
    if "e" in res:
        e = res["e"]["audio_s_per_s"]
        ratios["per_core_over_e"] = {k: res[k]["audio_s_per_s"] / res[k]["workers"] / e
                                     for k in ORDER if k in res and k not in ("v", "e")}
        # Scoring time beyond the in-process rate (e) spread over the workers: Ray Data
        # start-up, actors importing and loading the model and warming up, uneven units.
        ratios["overhead_s"] = {k: res[k]["scoring_s"] - res[k]["audio_s"] / (e * res[k]["workers"])
                                for k in ORDER if k in res and k not in ("v", "e")}
    target_scaling = 0.9 * n_cores
    targets = {
        "cN_over_bN": (ratios["cN_over_bN"] >= target_scaling, f">= {target_scaling:.1f}"),
        "rtf_per_core": (ratios["rtf_per_core"] >= RTF_TARGET, f">= {RTF_TARGET:.0f}"),
        "mem_scale_over_1x": (ratios["mem_scale_over_1x"] <= MEM_TARGET, f"<= {MEM_TARGET}"),
    }
    return res, ratios, targets


def print_report(res: dict, ratios: dict, targets: dict, names: dict[str, str], facts: dict,
                 cold: Monitor) -> None:
    mib = 2**20
    scale, n_cores = facts["scale"], facts["ray_cpus"]
    c = res["c"]
    print(f"\nscore throughput: {facts['model']}, vad {c['vad']}, windows {c['window_s']:.2f} s "
          f"({c['window_from']}), job defaults otherwise")
    print(f"machine: {facts['cpu']}, {facts['cores']} cores, {n_cores} Ray CPUs, Python "
          f"{facts['python']}, torch {facts['torch']}, ray {facts['ray']}, silero-vad "
          f"{'installed' if facts['silero'] else 'missing'}")
    print(f"backlog: 1x = {c['calls']} calls / {facts['audio_s_1x'] / 60:.1f} min audio "
          f"({c['units']} units); {scale}x = {res['cN']['calls']} calls / "
          f"{res['cN']['audio_s'] / 60:.0f} min ({res['cN']['units']} units); best of "
          f"{facts['repeats']} interleaved rounds; {facts['total_s']:.0f} s in all")
    print(f"load average (1 min) start {facts['load_average_start'][0]:.2f}, end "
          f"{facts['load_average_end'][0]:.2f}\n")
    hdr = (f"{'run':<38}{'audio s':>9}{'scoring s':>10}{'audio s/s':>10}{'wall s':>8}"
           f"{'per wall':>9}{'actors':>7}{'cores':>7}{'others':>8}{'peak MiB':>10}")
    print(hdr)
    print("-" * len(hdr))
    for key in (k for k in ORDER if k in res):
        r = res[key]
        if key == "e":
            print(f"{names[key]:<38}{r['audio_s']:>9.0f}{r['seconds']:>10.2f}"
                  f"{r['audio_s_per_s']:>10.0f}{'':>8}{'':>9}{'':>7}{r['cores_used']:>7.2f}"
                  f"{r['others']:>8.2f}")
            continue
        print(f"{names[key]:<38}{r['audio_s']:>9.0f}{r['scoring_s']:>10.2f}"
              f"{r['audio_s_per_s']:>10.0f}{r['wall_s']:>8.2f}{r['audio_s_per_wall_s']:>9.0f}"
              f"{r['actors']:>7}{r['cores_used']:>7.2f}{r['others']:>8.2f}"
              f"{r['peak_rss']['driver_workers'] / mib:>10.0f}")
    print(f"{'(c0) first score after init, 1x':<38}{'':>9}{'':>10}{'':>10}{cold.wall:>8.2f}"
          f"{'':>9}{'':>7}{cold.own_cpu / cold.wall:>7.2f}{cold.others:>8.2f}   untimed warm-up")
    print("  audio s/s: fresh_audio_s / scoring_s (listing to last unit: actor start-up "
          "included, publishing not); per wall: / wall_s.\n"
          "  actors: scoring actor processes seen. cores: CPU of our process tree / wall.\n"
          "  others: CPU of outside processes (cores). peak: max over 0.2 s samples of "
          "RSS(driver) + RSS(all ray:: worker processes).")
    for key in (k for k in ORDER if k in res and k != "e"):
        print(f"  {names[key].split(')')[0]}) CPU s per actor: "
              f"{', '.join(f'{x:.1f}' for x in res[key]['actor_cpu_s'])}; the actors exited "
              f"{res[key]['actors_exit_s']:.1f} s after run_score returned (not timed)")
    if "e" in res:
        e = res["e"]
        split = ", ".join(f"{k} {v / e['seconds']:.0%}" for k, v in e["parts_s"].items())
        print(f"  (e) {e['units']} units in {e['seconds']:.2f} s: {split}; not counted: "
              f"loading model + {e['vad']} detector {e['load_s']:.2f} s, a warm-up call "
              f"({e['first_unit_audio_s']:.0f} s audio) {e['warmup_unit_s']:.2f} s")
    for key in ("c", "cN"):
        p = res[key]["peak_rss"]
        print(f"  peak {names[key][5 if key == 'cN' else 4:]}: driver {p['driver'] / mib:.0f} MiB "
              f"+ {p['n_workers']} worker processes {p['workers'] / mib:.0f} MiB (Ray daemons "
              f"{p['ray_daemons'] / mib:.0f} MiB, not counted)")
        print("    " + ", ".join(f"{n} {t}" for t, n in sorted(p["worker_titles"].items())))

    ok = lambda k: "met" if targets[k][0] else "NOT met"  # noqa: E731
    b = res["b"]["audio_s_per_s"]
    mem1, memn = (res[k]["peak_rss"]["driver_workers"] / mib for k in ("c", "cN"))
    print("\nratios")
    print(f"  (cN)/(bN)          {ratios['cN_over_bN']:6.2f}  {ok('cN_over_bN')}  (target "
          f"{targets['cN_over_bN'][1]}: {scale}x, every core {res['cN']['audio_s_per_s']:.0f} vs "
          f"one worker {res['bN']['audio_s_per_s']:.0f} audio s/s; 1x (c)/(b): "
          f"{ratios['c_over_b']:.2f}, {c['audio_s_per_s']:.0f} vs {b:.0f})")
    print(f"  (cN)/{n_cores} cores       {ratios['rtf_per_core']:6.0f}  {ok('rtf_per_core')}  "
          f"(target {targets['rtf_per_core'][1]}x real time per core, {scale}x backlog; 1x: "
          f"{ratios['rtf_per_core_1x']:.0f}x)")
    print(f"  peak (cN)/(c)      {ratios['mem_scale_over_1x']:6.2f}  "
          f"{ok('mem_scale_over_1x')}  (target {targets['mem_scale_over_1x'][1]}: "
          f"{scale}x {memn:.0f} vs 1x {mem1:.0f} MiB)")
    if "cNd" in res:
        print(f"  informative: engine=ray_data: (cNd)/(bNd) = {ratios['ray_data_cN_over_bN']:.2f}; "
              f"the default actor pool is {ratios['actors_over_ray_data_cN']:.2f}x as fast "
              f"every core, {ratios['actors_over_ray_data_bN']:.2f}x with one worker")
    if "v" in res:
        print(f"  informative: vad=energy / vad={c['vad']} = "
              f"{ratios['energy_over_default_vad']:.2f} (every core, 1x: "
              f"{res['v']['audio_s_per_s']:.0f} vs {c['audio_s_per_s']:.0f} audio s/s)")
    if "e" in res:
        kept = ", ".join(f"({k}) {v:.0%}" for k, v in ratios["per_core_over_e"].items())
        over = ", ".join(f"({k}) {v:.1f} s" for k, v in ratios["overhead_s"].items())
        print(f"  informative: per worker, the runs keep {kept} of the in-process rate (e) "
              f"{res['e']['audio_s_per_s']:.0f} audio s/s\n"
              f"  scoring time beyond (e) on every worker: {over}")
    disturbed = [k for k, r in res.items() if r["others"] > DISTURBED_CORES]
    if disturbed:
        print(f"  WARNING: every attempt of {', '.join(disturbed)} ran while other processes "
              f"used > {DISTURBED_CORES} cores; rerun when the machine is quiet")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=8,
                    help="calls in the 1x backlog; a multiple of 4 x cores gives every worker "
                         "a unit (the job cuts units of 4 calls)")
    ap.add_argument("--minutes", type=float, nargs=2, default=MINUTES, metavar=("LO", "HI"),
                    help="call lengths are drawn uniformly from LO..HI minutes")
    ap.add_argument("--scale", type=int, default=10, help="size of the large backlog in 1x units")
    ap.add_argument("--repeats", type=int, default=2,
                    help="interleaved rounds of every measurement; the fastest undisturbed "
                         "attempt counts")
    ap.add_argument("--model", metavar="DIR",
                    help="benchmark this model dir instead of the untrained demo cnn1d")
    ap.add_argument("--also-energy", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure (c) with vad.name=energy (informative)")
    ap.add_argument("--in-process", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure (e): the per-unit code without Ray (informative)")
    ap.add_argument("--also-ray-data", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure (cN) and (bN) with engine=ray_data (informative)")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 2 calls of 0.5-1 min, scale 3, 1 round")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp backlog and outputs")
    ap.add_argument("--tmp", help="parent folder for the temp backlog (default: $TMPDIR)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the load average to drop below 0.5")
    args = ap.parse_args(argv)
    n_calls, scale, repeats, minutes = args.calls, args.scale, args.repeats, tuple(args.minutes)
    if args.quick:
        n_calls, scale, repeats, minutes = 2, min(scale, 3), 1, (0.5, 1.0)
    if scale < 2 or n_calls < 1 or repeats < 1:
        ap.error("need --scale >= 2, --calls >= 1 and --repeats >= 1")
    if args.model and not Path(args.model, "model.json").is_file():
        ap.error(f"--model {args.model}: not a model dir (no model.json)")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ser-ray-score-bench-", dir=args.tmp))
    t_start = time.perf_counter()
    try:
        parts = min(os.cpu_count() or 1, n_calls)
        small, big, audio_1x = make_backlog(tmp, n_calls, scale, parts, minutes)
        model = Path(args.model) if args.model else write_default_model(tmp / "model-cnn1d")
        print(f"[bench] backlog: {n_calls} calls, {audio_1x / 60:.1f} min audio (1x), x{scale} "
              f"hard-linked, in {time.perf_counter() - t_start:.1f} s -> {tmp}", file=sys.stderr)

        import ray
        import torch

        from ser_ray import vad
        from ser_ray.runtime import init_ray

        init_ray()  # once, untimed
        n_cores = int(ray.cluster_resources().get("CPU", 1))
        print(f"[bench] Ray up with {n_cores} CPU(s); warm-up score (untimed)", file=sys.stderr)
        with Monitor() as cold:  # informative: a one-shot job pays this once per Ray session
            run_score_once(small, model, tmp / "out-warmup", None)
        wait_actors_gone()

        steps = {
            "b": lambda: run_score_once(small, model, tmp / "out-b", 1),
            "c": lambda: run_score_once(small, model, tmp / "out-c", None),
            "cN": lambda: run_score_once(big, model, tmp / "out-cN", None),
            "bN": lambda: run_score_once(big, model, tmp / "out-bN", 1),
        }
        if args.also_ray_data:
            steps["cNd"] = lambda: run_score_once(big, model, tmp / "out-cNd", None, engine="ray_data")
            steps["bNd"] = lambda: run_score_once(big, model, tmp / "out-bNd", 1, engine="ray_data")
        if args.also_energy:
            steps["v"] = lambda: run_score_once(small, model, tmp / "out-v", None, "energy")
        if args.in_process:
            steps["e"] = lambda: units_in_process(small, model, tmp / "out-e")
        names = {k: v.format(N=scale) for k, v in NAMES.items()}
        attempts: dict[str, list] = {k: [] for k in steps}
        for r in range(repeats):
            for key, fn in steps.items():
                attempts[key].append(measure(f"round {r + 1} {names[key]}", fn))
        res, ratios, targets = summarise(attempts, n_cores, scale, audio_1x, names)
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    facts = {
        "cpu": cpu_model(), "cores": os.cpu_count(), "ray_cpus": n_cores,
        "python": platform.python_version(), "torch": torch.__version__, "ray": ray.__version__,
        "silero": vad.silero_installed(),
        "model": args.model or (f"untrained cnn1d channels {CNN['channels']} dense "
                                f"{CNN['dense']} on MFCC x {FRAMES} frames"),
        "calls_1x": n_calls, "audio_s_1x": audio_1x, "minutes": minutes, "scale": scale,
        "repeats": repeats, "load_average_start": load_start, "load_average_end": os.getloadavg(),
        "total_s": time.perf_counter() - t_start, "first_score_after_init_1x_s": cold.wall,
    }
    print_report(res, ratios, targets, names, facts, cold)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            **facts, "runs": res, "ratios": ratios,
            "targets": {k: {"met": m, "target": t} for k, (m, t) in targets.items()},
        }, indent=2, default=str))
    return 0 if all(m for m, _ in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
