"""Speed vs agreement of silero piece_s: detect (one clip at a time) and detect_many (all clips in
one call) on ~10 min of call audio at 16 kHz, one torch thread; IoU of speech time against a
one-pass run (piece_s >= clip length).

    .venv/bin/python benchmarks/vad_pieces.py [--audio synth|emodb] [--minutes 10] [--pieces 1 2 4 8]
                                             [--context 0.5] [--reps 3] [--batch]
synth: ser_ray.synth.synth_call calls of ~2.5 min (customer turns of 3-12 s, an agent turn before
each). emodb: ~2.5 min "calls" of EmoDB utterances (real speech) with 0.3-3 s of -60 dBFS noise
between them and one 20 s hold (digital silence) in each.
"""
import argparse
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

torch.set_num_threads(1)
from ser_ray import vad  # noqa: E402
from ser_ray.synth import EMOTIONS, make_speakers, synth_call  # noqa: E402

SR = 16000
ap = argparse.ArgumentParser()
ap.add_argument("--audio", choices=["synth", "emodb"], default="synth")
ap.add_argument("--minutes", type=float, default=10.0)
ap.add_argument("--pieces", type=float, nargs="*", default=[1.0, 2.0, 4.0, 8.0])
ap.add_argument("--context", type=float, default=0.5)
ap.add_argument("--reps", type=int, default=3)
ap.add_argument("--batch", action="store_true", help="also sweep max_batch_s at piece_s 2")
args = ap.parse_args()

rng = np.random.default_rng(0)
n_calls = max(1, round(args.minutes / 2.5))
clips = []
if args.audio == "synth":
    emotions = sorted(EMOTIONS)
    for spk in make_speakers(n_calls, rng):
        turns, total = [], 0.0
        while total < 150:
            d = float(rng.uniform(3, 12))
            turns.append((emotions[int(rng.integers(len(emotions)))], d))
            total += d + 1.5
        clips.append(synth_call(turns, spk, rng, sr=SR))
else:
    files = sorted((Path(__file__).resolve().parents[2] / "shared" / "data" / "emodb" / "wav").glob("*.wav"))
    order = rng.permutation(len(files))
    k = 0
    for _ in range(n_calls):
        parts, total = [], 0.0
        hold_at = rng.uniform(30, 120)
        while total < 150:
            x, sr = sf.read(files[order[k % len(files)]], dtype="float32")
            k += 1
            assert sr == SR
            gap = rng.normal(0, 10 ** (-60 / 20), int(rng.uniform(0.3, 3.0) * SR)).astype(np.float32)
            parts += [x, gap]
            if total < hold_at <= total + (x.size + gap.size) / SR:
                parts.append(np.zeros(20 * SR, np.float32))
            total = sum(p.size for p in parts) / SR
        clips.append(np.concatenate(parts))
audio_s = sum(c.size for c in clips) / SR
print(f"{args.audio}: {len(clips)} calls, {audio_s / 60:.1f} min of audio at {SR} Hz, "
      f"torch threads {torch.get_num_threads()}, context_s {args.context}")

vad.detect(clips[0][: 10 * SR], SR, "silero")  # load the model and let TorchScript warm up
ref = vad.detect_many(clips, SR, "silero", piece_s=1e5, silence_dbfs=None)


def mask(segs, n):
    m = np.zeros(int(n / SR * 100) + 1, bool)
    for s, e in segs:
        m[int(s * 100):int(e * 100)] = True
    return m


def iou(found):
    inter = union = 0
    for segs, want, c in zip(found, ref, clips):
        a, b = mask(segs, c.size), mask(want, c.size)
        inter += (a & b).sum()
        union += (a | b).sum()
    return inter / union


def timed(fn):
    """x real time from the best of --reps runs, by CPU time of this process (one torch thread, so
    CPU time is what wall time would be on an idle core; other jobs on the machine inflate wall time)."""
    best, out = float("inf"), None
    for _ in range(args.reps):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return audio_s / best, out


# Runs are interleaved (rep after rep over all settings) so a burst of load elsewhere on the
# machine hits every setting alike; the best run of each counts.
dets = {p: (vad.get_detector("silero", piece_s=p, context_s=args.context),
            vad.get_detector("silero", piece_s=p, context_s=args.context, silence_dbfs=None)) for p in args.pieces}
best = {}
found = {}
for _ in range(args.reps):
    for p, (det, noskip) in dets.items():
        for key, fn in [("single", lambda: [det(c, SR) for c in clips]), ("many", lambda: det.many(clips, SR)),
                        ("noskip", lambda: noskip.many(clips, SR))]:
            t = time.process_time()
            found[p, key] = fn()
            best[p, key] = min(best.get((p, key), float("inf")), time.process_time() - t)
print(f"{'piece_s':>7} {'detect xRT':>10} {'detect_many xRT':>15} {'(no skip)':>9} {'IoU':>6} {'IoU no skip':>11}")
for p in args.pieces:
    assert found[p, "many"] == found[p, "single"], "detect_many differs from detect"
    print(f"{p:7g} {audio_s / best[p, 'single']:10.0f} {audio_s / best[p, 'many']:15.0f} "
          f"{audio_s / best[p, 'noskip']:9.0f} {iou(found[p, 'many']):6.3f} {iou(found[p, 'noskip']):11.3f}")

if args.batch:
    sizes = [150.0, 300.0, 600.0, 1200.0, 2400.0]
    bdets = {mb: vad.get_detector("silero", piece_s=2.0, context_s=args.context, max_batch_s=mb) for mb in sizes}
    bbest = {}
    for _ in range(args.reps):
        for mb, det in bdets.items():
            t = time.process_time()
            det.many(clips, SR)
            bbest[mb] = min(bbest.get(mb, float("inf")), time.process_time() - t)
    for mb in sizes:
        print(f"piece_s 2, max_batch_s {mb:6.0f}: {audio_s / bbest[mb]:5.0f}x real time")
