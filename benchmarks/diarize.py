"""Mono calls scored on the downmix against diarised (``customer_channel=diarize``): how much of
the scored window time truly is the customer's, the urgency ranking's precision, and the cost.

    .venv/bin/python benchmarks/diarize.py --model DIR                 # synthetic + EmoDB
    .venv/bin/python benchmarks/diarize.py --model DIR --only emodb --json /tmp/diarize.json
    .venv/bin/python benchmarks/diarize.py --model DIR --only emodb --line mulaw   # 8 kHz G.711

Backlogs (both mono, with the truth of who speaks when):
  synthetic  ``synthesize_backlog`` with ``stereo_share=0``: every call an agent of a pool of
             four and one caller of its own, whose mood (angry, sad, calm, neutral) is the truth.
  emodb      (when ``../shared/data/emodb`` is there) calls of an "agent" speaker's neutral
             utterances alternating with a "customer" speaker's utterances of one emotion, 0.5 s
             apart. Agents: speakers 03 and 08; customers: 15 and 16 (held out of
             ``docs/emodb-model.sh``'s training speakers), each with W, T, A, N, L, F (12 calls).
             It also scores with the agents enrolled from neutral utterances of 03 and 08 that no
             call uses (and, on the synthetic backlog, from 8 s of each agent's synthetic voice).

Runs per backlog: ``mono`` (downmix), ``diarize`` (recurring voices) and, on EmoDB, ``enrolled``.
Figures: customer-time share = the scored windows' time inside the customer's true turns over
all scored window time (and the share of the customer's speech the scored windows cover);
precision@k of the urgency ranking, k = the calls whose customer's mood
is negative (angry, sad, fearful, disgust), and the average precision of the urgency score;
audio seconds per second of scoring and per second
of worker time; and how separable the speaker encoder finds each call's two true voices (AUC
of same-voice against other-voice pairs of 1.5 s pieces). Target: share >= 0.9 with diarize.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf

REPO = Path(__file__).resolve().parent.parent
EMODB = REPO.parent / "shared" / "data" / "emodb" / "wav"
NEGATIVE = {"W": "angry", "T": "sad", "A": "fearful", "E": "disgust"}
MOODS = {"W": "angry", "T": "sad", "A": "fearful", "N": "neutral", "L": "boredom", "F": "happy"}


def emodb_calls(folder: Path, agents_dir: Path | None, pause_s: float = 0.5,
                line: str | None = None) -> pd.DataFrame:
    """EmoDB mono calls (see the module doc) -> truth: call_id, customer spans, negative."""
    folder.mkdir(parents=True, exist_ok=True)
    files = sorted(glob.glob(str(EMODB / "*.wav")))
    by = {}
    for f in files:
        b = os.path.basename(f)
        by.setdefault((b[:2], b[5]), []).append(f)
    agents = ("03", "08")
    # Three neutral utterances of each agent are kept for enrolment; calls use the others.
    enrol = {a: by[(a, "N")][:3] for a in agents}
    pool = {a: by[(a, "N")][3:] for a in agents}
    rows = []
    for k, (cust, code) in enumerate((c, m) for c in ("15", "16") for m in MOODS):
        agent = agents[k % 2]
        mine = by.get((cust, code), [])[:5]
        if not mine:
            continue
        theirs = [pool[agent][(k + j) % len(pool[agent])] for j in range(len(mine))]
        parts, spans, agent_spans, t, sr = [], [], [], 0.0, 16000
        for a, c in zip(theirs, mine):
            for who, f in (("agent", a), ("customer", c)):
                y, sr = sf.read(f, dtype="float32")
                (spans if who == "customer" else agent_spans).append((t, t + len(y) / sr))
                parts += [y, np.zeros(int(pause_s * sr), np.float32)]
                t += len(y) / sr + pause_s
        call_id = f"a{agent}-c{cust}-{MOODS[code]}"
        y = np.concatenate(parts)
        if line:  # the mixed call through a telephone line, stored at 8 kHz
            from ser_ray import audio
            from ser_ray.channel import Line, telephone

            y, sr = audio.resample(telephone(y, sr, Line(codec=line)), sr, 8000), 8000
        sf.write(folder / f"{call_id}.wav", y, sr, subtype="PCM_16")
        rows.append({"call_id": call_id, "customer": json.dumps(spans), "agent": json.dumps(agent_spans),
                     "negative": code in NEGATIVE})
    if agents_dir is not None:
        for agent in agents:
            (agents_dir / agent).mkdir(parents=True, exist_ok=True)
            for f in enrol[agent]:
                shutil.copy(f, agents_dir / agent / os.path.basename(f))
    return pd.DataFrame(rows)


def synthetic_calls(folder: Path, n_calls: int, agents_dir: Path | None = None, seed: int = 7
                    ) -> pd.DataFrame:
    """The synthetic mono backlog; with ``agents_dir`` also 8 s of neutral speech of each of its
    agents (the same voices the backlog draws), for enrolment."""
    from ser_ray.synth import synthesize_backlog
    from ser_ray.synth.backlog import BACKLOG_AGENTS
    from ser_ray.synth.voice import seeded, synth_utterance, voice

    t = synthesize_backlog(folder, n_calls=n_calls, seed=seed, minutes=(1.0, 2.0), stereo_share=0.0,
                           bad=False, metadata=False)
    if agents_dir is not None:
        agents_dir.mkdir(parents=True, exist_ok=True)
        for a, sex in BACKLOG_AGENTS:
            v = voice(f"agent-{a}", sex, seeded(seed, f"backlog/agent/{a}"))
            sf.write(agents_dir / f"{a}.wav", synth_utterance("neutral", v, seeded(seed, f"enrol/{a}"),
                                                              8000, 8.0), 8000, subtype="PCM_16")
    def spans(role):
        return [json.dumps([(s["start_s"], s["end_s"]) for s in json.loads(x) if s["role"] == role])
                for x in t["spans"]]

    return pd.DataFrame({"call_id": t["call_id"], "negative": t["negative"].astype(bool),
                         "customer": spans("customer"), "agent": spans("agent")})


def separability(folder: Path, truth: pd.DataFrame, neighbours: int = 3) -> dict:
    """How well the speaker encoder tells a call's two true voices apart (``auc``: same-voice
    against other-voice pairs of 1.5 s pieces of the true turns, within each call), and in how
    many calls the true agent's voice recurs more than the customer's (``agent_recurs``: the
    share of calls where ``speakers.recurrence`` of the true voices' centroids ranks the agent
    first): what the recurring rule needs."""
    from sklearn.metrics import roc_auc_score

    from ser_ray import audio, speakers, vad

    enc = speakers.SpeakerEncoder("cpu")
    same, sims, cents = [], [], []
    for r in truth.itertuples():
        y, sr = sf.read(next(folder.glob(f"{r.call_id}.wav")), dtype="float32")
        y = audio.resample(audio.downmix(y), sr, speakers.SPEAKER_RATE)
        pieces, role = [], []
        for k, col in enumerate(("agent", "customer")):
            for s, e in vad.windows(json.loads(getattr(r, col)), 1.5, None, 1.5):
                pieces.append(y[round(s * speakers.SPEAKER_RATE):round(e * speakers.SPEAKER_RATE)])
                role.append(k)
        E, role = enc.embed(pieces), np.array(role)
        cents += [E[role == k].mean(axis=0) for k in (0, 1)]
        iu = np.triu_indices(len(E), 1)
        sims += (E @ E.T)[iu].tolist()
        same += (role[:, None] == role[None, :])[iu].tolist()
    rec = speakers.recurrence(np.array(cents), np.repeat(np.arange(len(truth)), 2), neighbours)
    return {"auc": float(roc_auc_score(same, sims)),
            "agent_recurs": float(np.mean(rec[0::2] > rec[1::2]))}


def figures(out: Path, truth: pd.DataFrame, run: dict) -> dict:
    from ser_ray.score import read_calls, read_segments

    calls, segs = read_calls(out), read_segments(out)
    inside = total = kept = talk = 0.0
    for r in truth.itertuples():
        turns = json.loads(r.customer)
        talk += sum(b - a for a, b in turns)
        mine = sorted(zip(*(segs.loc[segs["call_id"] == r.call_id, c].to_numpy() for c in ("start_s", "end_s"))))
        merged: list[list[float]] = []
        for s, e in mine:  # windows may overlap: the customer time they cover, once
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
            else:
                merged.append([s, e])
        kept += sum(max(0.0, min(e, b) - max(s, a)) for s, e in merged for a, b in turns)
        for s, e in zip(*(segs.loc[segs["call_id"] == r.call_id, c].to_numpy() for c in ("start_s", "end_s"))):
            total += e - s
            inside += sum(max(0.0, min(e, b) - max(s, a)) for a, b in turns)
    scored = calls[calls["status"] == "scored"].merge(truth[["call_id", "negative"]], on="call_id")
    k = int(scored["negative"].sum())
    top = scored.sort_values("urgency_rank").head(k)
    from sklearn.metrics import average_precision_score

    ap = float(average_precision_score(scored["negative"], scored["urgency_score"])) if k else float("nan")
    methods = calls["diarization"].value_counts().to_dict() if "diarization" in calls else {}
    return {"customer_share": inside / max(total, 1e-9), "scored_window_s": total,
            "customer_recall": kept / max(talk, 1e-9),
            "precision_at_k": float(top["negative"].mean()) if k else float("nan"), "k": k,
            "average_precision": ap,
            # the mean negative share of the calls whose customer is negative, and of the others
            "negative_share_neg": float(scored.loc[scored["negative"], "negative_share"].mean()),
            "negative_share_other": float(scored.loc[~scored["negative"], "negative_share"].mean()),
            "calls": int(len(calls)), "scored": int(len(scored)), "methods": methods,
            "audio_s_per_s": run["real_time_factor"],
            "audio_s_per_worker_s": run["real_time_factor_per_worker"]}


def score(model: str, folder: Path, out: Path, channel: str, agents: Path | None = None) -> dict:
    from ser_ray.config import ScoreConfig, load
    from ser_ray.score import run_score

    shutil.rmtree(out, ignore_errors=True)
    cfg = load(ScoreConfig, None, [f"customer_channel={channel}"], model=model,
               inputs=[str(folder)], output=str(out), run_date="2026-11-22", rescore=True,
               agents=str(agents) if agents else None)
    return run_score(cfg, progress=False)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="a model folder (e.g. docs/emodb-model.sh's)")
    ap.add_argument("--only", choices=("synthetic", "emodb"))
    ap.add_argument("--calls", type=int, default=24, help="synthetic calls (default 24)")
    ap.add_argument("--line", choices=("mulaw", "alaw", "mp3", "opus"),
                    help="EmoDB calls through this telephone line, stored at 8 kHz")
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    sys.path.insert(0, str(REPO))
    from ser_ray.runtime import init_ray

    init_ray()
    work = Path(tempfile.mkdtemp(prefix="ser-ray-diarize-"))
    results: dict[str, dict] = {}
    backlogs = []
    if args.only in (None, "synthetic"):
        backlogs.append(("synthetic", synthetic_calls(work / "synthetic", args.calls,
                                                      work / "synthetic-agents"),
                         work / "synthetic-agents"))
    if args.only in (None, "emodb"):
        if EMODB.is_dir():
            backlogs.append(("emodb", emodb_calls(work / "emodb", work / "agents", line=args.line),
                             work / "agents"))
        else:
            print(f"EmoDB not found at {EMODB}: its figures are skipped")
    ok = True
    for name, truth, agents in backlogs:
        sep = results[f"{name}/separability"] = separability(work / name, truth)
        print(f"{name:9s} the speaker encoder tells a call's two true voices apart with AUC "
              f"{sep['auc']:.3f} (1.5 s pieces, pairs within calls); the true agent's voice recurs "
              f"more than the customer's in {sep['agent_recurs']:.0%} of calls", flush=True)
        runs = [("mono", None), ("diarize", None)] + ([("enrolled", agents)] if agents else [])
        for label, bank in runs:
            channel = "mono" if label == "mono" else "diarize"
            run = score(args.model, work / name, work / f"out-{name}-{label}", channel, bank)
            f = results[f"{name}/{label}"] = figures(work / f"out-{name}-{label}", truth, run)
            print(f"{name:9s} {label:8s} customer share {f['customer_share']:.3f} (of the customer's "
                  f"speech {f['customer_recall']:.0%} scored)  precision@{f['k']} "
                  f"{f['precision_at_k']:.2f}  AP {f['average_precision']:.2f}  negative share "
                  f"{f['negative_share_neg']:.2f} (negative calls) / {f['negative_share_other']:.2f}  "
                  f"{f['audio_s_per_s']:.1f} audio s/s "
                  f"({f['audio_s_per_worker_s']:.1f} per worker s)  {f['methods']}", flush=True)
            if label != "mono" and f["customer_share"] < 0.9:
                ok = False
        if f"{name}/diarize" in results:
            cost = results[f"{name}/mono"]["audio_s_per_worker_s"] / results[f"{name}/diarize"]["audio_s_per_worker_s"]
            print(f"{name:9s} diarize costs {cost:.2f}x the worker time of mono")
    print("target customer share >= 0.9 with diarize:", "met" if ok else "NOT met")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
