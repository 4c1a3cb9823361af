"""Throughput and peak memory of ``prepare`` (features=mfcc), printed as ratios from ONE run.

    .venv/bin/python benchmarks/prepare_throughput.py            # 1x and 10x, ~2.5-3.5 min
    .venv/bin/python benchmarks/prepare_throughput.py --quick    # smoke run, ~30 s
    .venv/bin/python benchmarks/prepare_throughput.py --scale 20 --json /tmp/prepare.json

Input: a synthetic RAVDESS-layout corpus at 48 kHz (so resampling to 16 kHz is real), written
with ``synthesize_corpus`` into a temp folder. The 1x corpus is one replica (``rep00/Actor_*``,
64 files, ~3.4 min of audio); the Nx corpus is N replicas with different seeds (no duplicates).
Audio seconds are the manifest's ``duration_s``; every measurement reads the same Nx files.

Ray is started once (``init_ray``) and one ``prepare`` warms it up, untimed (shown as (c0): what
a one-shot job pays on top of Ray start-up). Then ``--repeats`` interleaved rounds of:
  (a)  seed loop: one process, ``librosa.load(path, sr=16000)`` + ``librosa.feature.mfcc`` +
       two ``librosa.feature.delta`` calls (the extractor's parameters), with the process's
       default BLAS threads, as the seed ran it;
  (a1) the same with one BLAS thread (Ray sets OMP_NUM_THREADS=1 in its workers);
  (a') the seed loop calling ser-ray's ``mfcc`` extractor instead of librosa's functions
       (the same array to float32 rounding, checked): the ratio against it is printed too;
  (d)  decode+resample ceiling: ``audio.decode`` + ``audio.condition`` only, one thread;
  (e)  prepare's own per-unit code (``UnitProcessor.process``) in this process, one thread, no
       Ray: the per-core ceiling of (b) and (c) (not asked for; it separates Ray overhead from
       per-file cost);
  (b)  ``prepare`` with num_workers=1, Nx;  (c) ``prepare`` with every core, Nx and 1x.
The fastest attempt whose "others" stays under 0.3 cores counts. Throughput is audio seconds per
wall second. Peak memory is the max over 0.2 s samples of RSS(driver) + RSS(every ``ray::``
worker process this driver started, idle pooled workers included); the node daemons (raylet,
GCS, dashboard/runtime-env agents) are shown apart. "others" is CPU used by processes outside
this benchmark (system CPU time minus our process tree's), in cores.
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
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from pathlib import Path

BASE_SPEAKERS, BASE_PER_EMOTION = 4, 2  # RAVDESS: 4 actors x 16 takes = 64 files, ~203 s at 1x
SAMPLE_INTERVAL_S = 0.2


# --------------------------------------------------------------------------------------------
# Corpus
# --------------------------------------------------------------------------------------------

def _synth_replica(args: tuple[str, int, int, int]) -> int:
    from ser_ray.synth import synthesize_corpus

    root, seed, speakers, per = args
    return len(synthesize_corpus("ravdess", Path(root) / f"rep{seed:02d}", n_speakers=speakers,
                                 per_emotion=per, sr=48000, seed=seed))


def make_corpora(tmp: Path, scale: int, speakers: int, per: int) -> tuple[Path, Path]:
    """-> (1x root, Nx root); the 1x root hard-links replica 0 of the Nx one."""
    big, small = tmp / f"corpus-{scale}x", tmp / "corpus-1x"
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(pool.map(_synth_replica, [(str(big), s, speakers, per) for s in range(scale)]))
    for f in sorted((big / "rep00").rglob("*")):
        target = small / f.relative_to(big)
        if f.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            os.link(f, target)
    return small, big


def audio_files(root: Path) -> list[str]:
    return sorted(str(p) for p in root.rglob("*.wav"))


# --------------------------------------------------------------------------------------------
# Monitoring: wall, our CPU, others' CPU, peak RSS of driver + Ray workers
# --------------------------------------------------------------------------------------------

def _psutil():
    try:
        import psutil
    except ImportError:  # Ray vendors psutil; importing ray puts it on sys.path
        import ray  # noqa: F401
        import psutil
    return psutil


_DAEMON_TITLES = ("ray::DashboardAgent", "ray::RuntimeEnvAgent")  # per node, not per job


def _is_worker(cmdline: list[str]) -> bool:
    if not cmdline or cmdline[0].startswith(_DAEMON_TITLES):
        return False
    return cmdline[0].startswith("ray::") or any("default_worker.py" in c for c in cmdline)


class Monitor:
    """Samples this process and its descendants every ``interval`` s in a thread."""

    def __init__(self, interval: float = SAMPLE_INTERVAL_S):
        self.psutil = _psutil()
        self.me = self.psutil.Process()
        self.interval = interval
        self._stop = threading.Event()
        self.peak = {"driver_workers": 0, "driver": 0, "workers": 0, "ray_daemons": 0,
                     "n_workers": 0, "worker_titles": {}}
        self._cpu0: dict[int, float] = {}
        self._cpu: dict[int, float] = {}

    def _sample(self) -> None:
        ps = self.psutil
        driver = workers = daemons = n_workers = 0
        titles: dict[str, int] = {}
        try:
            procs = [self.me] + self.me.children(recursive=True)
        except ps.Error:
            return
        for p in procs:
            try:
                with p.oneshot():
                    rss = p.memory_info().rss
                    t = p.cpu_times()
                    cpu = t.user + t.system
                    cmd = p.cmdline() if p.pid != self.me.pid else []
            except ps.Error:
                continue
            self._cpu[p.pid] = cpu
            self._cpu0.setdefault(p.pid, 0.0 if self._started else cpu)
            if p.pid == self.me.pid:
                driver = rss
            elif _is_worker(cmd):
                workers += rss
                n_workers += 1
                title = cmd[0].split(" ")[0] if cmd[0].startswith("ray::") else "ray::(starting)"
                titles[title] = titles.get(title, 0) + 1
            else:
                daemons += rss
        pk = self.peak
        if driver + workers > pk["driver_workers"]:
            pk.update(driver_workers=driver + workers, driver=driver, workers=workers,
                      n_workers=n_workers, worker_titles=titles)
        pk["ray_daemons"] = max(pk["ray_daemons"], daemons)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "Monitor":
        self._started = False
        self._sample()  # CPU baselines of processes alive at the start
        self._started = True
        self._sys0 = self.psutil.cpu_times()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self.t0 = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.wall = time.perf_counter() - self.t0
        self._stop.set()
        self._thread.join()
        self._sample()
        sys1 = self.psutil.cpu_times()
        busy = lambda t: sum(t) - t.idle - getattr(t, "iowait", 0.0)  # noqa: E731
        self.sys_cpu = busy(sys1) - busy(self._sys0)
        self.own_cpu = sum(c - self._cpu0.get(pid, 0.0) for pid, c in self._cpu.items())
        # Processes that ended between samples lose < one interval of CPU: others is an upper
        # bound of what outside processes used, and never negative.
        self.others = max(0.0, self.sys_cpu - self.own_cpu) / self.wall


# --------------------------------------------------------------------------------------------
# Measurements
# --------------------------------------------------------------------------------------------

def seed_mfcc(y, sr: int):
    """The seed's feature code: ``librosa.feature.mfcc`` + two ``librosa.feature.delta`` calls,
    with the parameters of ser-ray's ``mfcc`` extractor (time x [mfcc | delta | delta2])."""
    import librosa
    import numpy as np

    from ser_ray.features import get_extractor

    e = get_extractor("mfcc")
    m = librosa.feature.mfcc(y=y, sr=sr, n_mfcc=e.n_mfcc, n_fft=e.n_fft, hop_length=e.hop_length,
                             win_length=e.win_length, n_mels=e.n_mels)
    return np.concatenate([m, librosa.feature.delta(m), librosa.feature.delta(m, order=2)]).T


def seed_loop(files: list[str], features: str = "librosa") -> float:
    """(a) what the seed script did: ``librosa.load`` at 16 kHz, then MFCC + deltas with
    librosa's functions (``features="librosa"``) or with ser-ray's extractor ("pipeline")."""
    import librosa

    from ser_ray.features import get_extractor

    ext, total = (seed_mfcc if features == "librosa" else get_extractor("mfcc")), 0.0
    for f in files:
        y, sr = librosa.load(f, sr=16000)
        ext(y, sr)
        total += len(y) / sr
    return total


def check_same_features(path: str) -> float:
    """Both seed loops compute the same array (to float32 rounding): -> max abs difference."""
    import librosa
    import numpy as np

    from ser_ray.features import get_extractor

    y, sr = librosa.load(path, sr=16000)
    a, b = seed_mfcc(y, sr), get_extractor("mfcc")(y, sr)
    if a.shape != b.shape or not np.allclose(a, b, rtol=1e-4, atol=1e-2):
        raise RuntimeError(f"seed MFCC {a.shape} and ser-ray's {b.shape} differ")
    return float(np.abs(a - b).max())


def decode_condition_loop(files: list[str], audio_cfg) -> float:
    """(d) decode + condition only (read, sniff, decode, downmix, soxr HQ to 16 kHz, window)."""
    from ser_ray import audio

    total = 0.0
    for f in files:
        with open(f, "rb") as fh:
            decoded = audio.decode(fh.read())
        total += decoded.duration_s
        audio.condition(decoded, audio_cfg)
    return total


def prepare_config(input_root: Path, out: Path, num_workers: int | None):
    from ser_ray.config import PrepareConfig

    return PrepareConfig(inputs=(str(input_root),), output=str(out), corpus="ravdess",
                         features=("mfcc",), num_workers=num_workers)


def units_in_process(input_root: Path, out: Path) -> float:
    """(e) prepare's own per-unit code (UnitProcessor: read, parse, decode, condition, MFCC,
    sha256, Parquet parts, marker) called in this process, one thread, no Ray: the per-core
    ceiling of (b) and (c)."""
    import pyarrow.parquet as pq

    from ser_ray.storage import Storage
    from ser_ray.prepare import UnitProcessor, iter_units, plan_inputs

    shutil.rmtree(out, ignore_errors=True)  # a marker left by an earlier attempt would resume
    cfg = prepare_config(input_root, out, None)
    storage = Storage(cfg.s3)
    proc = UnitProcessor(cfg, str(out))
    for source in plan_inputs(cfg, storage):
        for unit in iter_units(source, storage, cfg.files_per_task):
            proc.process(unit)
    return float(sum(pq.read_table(out / "manifest", columns=["duration_s"])
                     .column("duration_s").to_pylist()))


def run_prepare_once(input_root: Path, out: Path, num_workers: int | None,
                     module: str = "ser_ray.prepare"):
    import importlib

    import pyarrow.parquet as pq

    run_prepare = importlib.import_module(module).run_prepare
    summary = run_prepare(prepare_config(input_root, out, num_workers), overwrite=True,
                          progress=False)
    man = pq.read_table(out / "manifest", columns=["duration_s"])
    # Unit markers hold the unit's stats; other files there (the config stamp) do not.
    units = [u for u in (json.loads(p.read_text()) for p in (out / "_units").glob("*.json"))
             if isinstance(u, dict) and "seconds" in u and "unit_id" in u]
    return summary, float(sum(man.column("duration_s").to_pylist())), units


DISTURBED_CORES = 0.3  # CPU used by outside processes above which an attempt is "disturbed"


def measure(label: str, fn, n_threads: int | None = None) -> tuple[Monitor, object]:
    """One attempt of ``fn`` under a Monitor (and a BLAS thread limit when given)."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(n_threads) if n_threads else _null():
        with Monitor() as mon:
            result = fn()
    print(f"  {label}: {mon.wall:.2f} s wall, {mon.own_cpu / mon.wall:.2f} cores ours, "
          f"{mon.others:.2f} cores others", file=sys.stderr, flush=True)
    return mon, result


def best_attempt(attempts: list[tuple[Monitor, object]]) -> tuple[Monitor, object, dict, int]:
    """Fastest undisturbed attempt (fastest of all when every one was disturbed); peak memory
    is the max over all attempts."""
    quiet = [a for a in attempts if a[0].others <= DISTURBED_CORES] or attempts
    mon, result = min(quiet, key=lambda a: a[0].wall)
    peak = max((a[0].peak for a in attempts), key=lambda p: p["driver_workers"])
    return mon, result, peak, len(attempts) - len([a for a in attempts
                                                   if a[0].others <= DISTURBED_CORES])


@contextmanager
def _null():
    yield


def wait_quiet(max_s: float, below: float = 0.5) -> float:
    """Wait (at most ``max_s``) until the 1-minute load average drops below ``below``."""
    t0 = time.time()
    while os.getloadavg()[0] >= below and time.time() - t0 < max_s:
        time.sleep(5)
    return os.getloadavg()[0]


NAMES = {"a": "(a) seed loop, 1 process", "a1": "(a1) seed loop, 1 BLAS thread",
         "ap": "(a') seed loop, ser-ray's mfcc",
         "d": "(d) decode+condition, 1 core", "e": "(e) UnitProcessor, no Ray, 1 core",
         "b": "(b) prepare, 1 worker", "c": "(c) prepare, every core", "c_1x": "(c) prepare, every core, 1x"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scale", type=int, default=10, help="size of the large corpus in 1x units")
    ap.add_argument("--quick", action="store_true",
                    help="smoke run: 1x = 2 actors x 1 take (16 files), scale 3, 1 round")
    ap.add_argument("--repeats", type=int, default=3,
                    help="interleaved rounds of every measurement; the fastest undisturbed "
                         "attempt counts (this VM varies by +-30%% between runs)")
    ap.add_argument("--json", metavar="PATH", help="also write every figure as JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the temp corpus and outputs")
    ap.add_argument("--tmp", help="parent folder for the temp corpus (default: $TMPDIR)")
    ap.add_argument("--wait-quiet", type=float, default=0, metavar="S",
                    help="first wait up to S seconds for the load average to drop below 0.5")
    ap.add_argument("--prepare-module", default="ser_ray.prepare", metavar="MODULE",
                    help="take run_prepare from this module, to compare a candidate change "
                         "(it must be importable by Ray workers, e.g. via PYTHONPATH)")
    args = ap.parse_args(argv)
    speakers, per, scale, repeats = BASE_SPEAKERS, BASE_PER_EMOTION, args.scale, args.repeats
    if args.quick:
        speakers, per, scale, repeats = 2, 1, min(args.scale, 3), 1
    if scale < 2:
        ap.error("--scale must be >= 2 (memory is compared between 1x and --scale x)")
    logging.getLogger("ray").setLevel(logging.WARNING)
    if args.wait_quiet:
        wait_quiet(args.wait_quiet)
    load_start = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="ser-ray-bench-", dir=args.tmp))
    t_start = time.perf_counter()
    try:
        small, big = make_corpora(tmp, scale, speakers, per)
        files = audio_files(big)
        print(f"[bench] corpus: {len(audio_files(small))} files (1x), {len(files)} files "
              f"({scale}x) in {time.perf_counter() - t_start:.1f} s -> {tmp}", file=sys.stderr)

        import ray

        from ser_ray.config import AudioConfig
        from ser_ray.runtime import init_ray

        init_ray()  # once, untimed
        n_cores = int(ray.cluster_resources().get("CPU", 1))
        print(f"[bench] Ray up with {n_cores} CPU(s); warm-up prepare (untimed)",
              file=sys.stderr)
        with Monitor() as cold:  # informative: a one-shot job pays this once per Ray session
            run_prepare_once(small, tmp / "out-warmup", None, args.prepare_module)
        seed_loop(files[:2])  # librosa's lazy imports belong to no measurement
        seed_loop(files[:2], "pipeline")
        max_diff = check_same_features(files[0])

        steps = {  # key: (function, BLAS thread limit)
            "a": (lambda: seed_loop(files), None),
            "a1": (lambda: seed_loop(files), 1),
            "ap": (lambda: seed_loop(files, "pipeline"), None),
            "d": (lambda: decode_condition_loop(files, AudioConfig()), 1),
            "e": (lambda: units_in_process(big, tmp / "out-e"), 1),
            "b": (lambda: run_prepare_once(big, tmp / "out-b", 1, args.prepare_module), None),
            "c": (lambda: run_prepare_once(big, tmp / "out-c", None, args.prepare_module),
                  None),
            "c_1x": (lambda: run_prepare_once(small, tmp / "out-c_1x", None,
                                              args.prepare_module), None),
        }
        attempts: dict[str, list] = {k: [] for k in steps}
        for r in range(repeats):
            for key, (fn, threads) in steps.items():
                attempts[key].append(measure(f"round {r + 1} {NAMES[key]}", fn, threads))

        res: dict[str, dict] = {}
        for key, tries in attempts.items():
            m, out, peak, disturbed = best_attempt(tries)
            r = res[key] = {"wall_s": m.wall, "cores_used": m.own_cpu / m.wall,
                            "others": m.others, "attempts": len(tries),
                            "disturbed_attempts": disturbed,
                            "all_walls_s": [round(t[0].wall, 3) for t in tries]}
            if key in ("b", "c", "c_1x"):
                summary, audio_s, units = out
                r.update(audio_s=audio_s, files=summary["input_files"], ok=summary["ok"],
                         units=len(units), unit_seconds_sum=sum(u["seconds"] for u in units),
                         peak_rss=dict(peak), workers=1 if key == "b" else n_cores)
            else:
                r.update(decoded_s=out, files=len(files), workers=1)
        audio_big = res["c"]["audio_s"]
        # Same files, same durations: the loops' own totals must match the manifest's.
        for key in ("a", "a1", "ap", "d", "e"):
            if abs(res[key]["decoded_s"] - audio_big) > 1e-3 * audio_big:
                raise RuntimeError(f"({key}) decoded {res[key]['decoded_s']:.1f} s, the "
                                   f"manifest says {audio_big:.1f} s")
            res[key]["audio_s"] = audio_big
        for r in res.values():
            r["audio_s_per_s"] = r["audio_s"] / r["wall_s"]

        a, b, c = (res[k]["audio_s_per_s"] for k in ("a", "b", "c"))
        d_core = res["d"]["audio_s_per_s"]  # one thread, one core
        e_core = res["e"]["audio_s_per_s"]
        c_core = c / n_cores
        # Orchestration overhead: wall beyond the in-process rate (e) spread over the workers.
        overhead = {k: res[k]["wall_s"] - res[k]["audio_s"] / (e_core * res[k]["workers"])
                    for k in ("b", "c", "c_1x")}
        mem1 = res["c_1x"]["peak_rss"]["driver_workers"]
        memn = res["c"]["peak_rss"]["driver_workers"]
        target_ca = 0.9 * n_cores  # 1.8 on 2 cores
        ratios = {
            "c_over_a": c / a, "b_over_a": b / a, "c_over_b": c / b,
            "c_over_a1": c / res["a1"]["audio_s_per_s"],
            "c_over_a_pipeline_mfcc": c / res["ap"]["audio_s_per_s"],
            "seed_vs_pipeline_mfcc_max_abs_diff": max_diff,
            "c_per_core_over_d": c_core / d_core,
            "mem_scale_over_1x": memn / mem1,
            "e_over_d": e_core / d_core, "c_per_core_over_e": c_core / e_core,
            "overhead_s": overhead,
        }
        targets = {
            "c_over_a": (ratios["c_over_a"] >= target_ca, f">= {target_ca:.1f}"),
            "c_per_core_over_d": (ratios["c_per_core_over_d"] >= 0.5, ">= 0.5"),
            "mem_scale_over_1x": (ratios["mem_scale_over_1x"] <= 1.3, "<= 1.3"),
        }
        load_end = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)

    mib = 2**20
    ok = lambda k: "PASS" if targets[k][0] else "FAIL"  # noqa: E731
    print(f"\nprepare throughput, features=mfcc, synthetic RAVDESS 48 kHz -> 16 kHz, "
          f"{n_cores} Ray CPUs ({os.cpu_count()} cores), Python {platform.python_version()}, "
          f"run_prepare from {args.prepare_module}")
    print(f"corpus: 1x = {res['c_1x']['files']} files / {res['c_1x']['audio_s']:.0f} s audio; "
          f"{scale}x = {len(files)} files / {audio_big:.0f} s audio; best of {repeats} "
          f"interleaved rounds; {time.perf_counter() - t_start:.0f} s in all")
    print(f"load average (1 min) start {load_start[0]:.2f}, end {load_end[0]:.2f}\n")
    hdr = (f"{'run':<36}{'files':>6}{'audio s':>9}{'wall s':>8}{'audio s/s':>10}"
           f"{'cores':>7}{'others':>8}{'in-unit':>8}{'peak MiB':>10}")
    print(hdr)
    print("-" * len(hdr))
    for key in ("a", "a1", "ap", "d", "e", "b", "c", "c_1x"):
        r = res[key]
        name = NAMES[key] + ("" if key in ("a", "a1", "ap", "d", "e", "c_1x") else f", {scale}x")
        busy = (f"{r['unit_seconds_sum'] / (r['wall_s'] * r['workers']):>8.0%}"
                if "unit_seconds_sum" in r else f"{'':>8}")
        peak = f"{r['peak_rss']['driver_workers'] / mib:>10.0f}" if "peak_rss" in r else ""
        print(f"{name:<36}{r['files']:>6}{r['audio_s']:>9.0f}{r['wall_s']:>8.2f}"
              f"{r['audio_s_per_s']:>10.0f}{r['cores_used']:>7.2f}{r['others']:>8.2f}"
              f"{busy}{peak}")
    print(f"{'(c0) first prepare after init, 1x':<36}{'':>6}{'':>9}{cold.wall:>8.2f}"
          f"{'':>10}{cold.own_cpu / cold.wall:>7.2f}{cold.others:>8.2f}   untimed warm-up")
    print("  cores: CPU of our process tree / wall. others: CPU of outside processes (cores).\n"
          "  in-unit: share of workers x wall spent inside UnitProcessor.process.\n"
          "  peak: max over 0.2 s samples of RSS(driver) + RSS(all ray:: worker processes).")
    for key in ("c_1x", "c"):
        p = res[key]["peak_rss"]
        print(f"  peak {NAMES[key][4:]}{'' if key == 'c_1x' else f', {scale}x'}: driver "
              f"{p['driver'] / mib:.0f} MiB + {p['n_workers']} worker processes "
              f"{p['workers'] / mib:.0f} MiB (Ray daemons {p['ray_daemons'] / mib:.0f} MiB, "
              f"not counted)")
        print("    " + ", ".join(f"{n} {t}" for t, n in sorted(p["worker_titles"].items())))
    print("\nratios")
    print(f"  c/a            {ratios['c_over_a']:6.2f}  {ok('c_over_a')}  "
          f"(target {targets['c_over_a'][1]})")
    print(f"  (c/{n_cores})/d        {ratios['c_per_core_over_d']:6.2f}  "
          f"{ok('c_per_core_over_d')}  (target {targets['c_per_core_over_d'][1]}: c per core "
          f"{c_core:.0f} vs d {d_core:.0f} audio s/s)")
    print(f"  mem {scale}x/1x    {ratios['mem_scale_over_1x']:6.2f}  {ok('mem_scale_over_1x')}  "
          f"(target {targets['mem_scale_over_1x'][1]}: {memn / mib:.0f} vs {mem1 / mib:.0f} MiB)")
    print(f"  informative:   b/a {ratios['b_over_a']:.2f}   c/b {ratios['c_over_b']:.2f}   "
          f"c/a1 {ratios['c_over_a1']:.2f}")
    print(f"  c/a'           {ratios['c_over_a_pipeline_mfcc']:6.2f}  = against the seed loop "
          f"given ser-ray's MFCC code (same array: max |diff| {max_diff:.1e})")
    print(f"  e/d            {ratios['e_over_d']:6.2f}  = the best (c/{n_cores})/d with zero Ray "
          f"overhead (features + writes cost {1 / ratios['e_over_d'] - 1:.1f}x decode+condition)")
    print(f"  (c/{n_cores})/e        {ratios['c_per_core_over_e']:6.2f}  = share of the "
          f"in-process per-core rate that (c) keeps")
    print(f"  overhead beyond (e) on every worker: (b) {overhead['b']:.1f} s, (c) {scale}x "
          f"{overhead['c']:.1f} s, (c) 1x {overhead['c_1x']:.1f} s")
    disturbed = [k for k, r in res.items() if r["others"] > DISTURBED_CORES]
    if disturbed:
        print(f"  WARNING: every attempt of {', '.join(disturbed)} ran while other processes "
              f"used > {DISTURBED_CORES} cores; rerun when the machine is quiet")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "n_cores": n_cores, "scale": scale, "repeats": repeats,
            "prepare_module": args.prepare_module, "files_1x": res["c_1x"]["files"],
            "files_scale": len(files), "load_average_start": load_start,
            "load_average_end": load_end, "first_prepare_after_init_1x_s": cold.wall,
            "runs": res, "ratios": ratios,
            "targets": {k: {"pass": p, "target": t} for k, (p, t) in targets.items()},
        }, indent=2))
    return 0 if all(p for p, _ in targets.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
