"""``make demo``: the main job end to end on the embedded default (local Ray, local files).

Writes a small *synthetic* RAVDESS-layout corpus (speech-like audio whose emotion is carried by
prosody; no real speech), seeds it with the kinds of broken files real archives hold, and runs
``prepare`` over it.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from ser_ray import config as config_mod
from ser_ray.config import PrepareConfig
from ser_ray.console import session
from ser_ray.prepare import run_prepare
from ser_ray.runtime import init_ray
from ser_ray.synth import synthesize_corpus


def seed_bad_files(root: Path) -> list[str]:
    """Files every real archive eventually holds: empty, truncated and non-audio."""
    actor = sorted(root.glob("Actor_*"))[0]
    good = sorted(actor.glob("*.wav"))[0].read_bytes()
    bad = {
        "03-01-01-01-01-02-01.wav": b"",                          # empty
        "03-01-02-01-01-02-01.wav": good[: len(good) // 3],       # truncated copy
        "03-01-03-01-01-02-01.wav": b"this is a text file, not audio\n" * 20,
    }
    for name, data in bad.items():
        (actor / name).write_bytes(data)
    return [str(actor / n) for n in bad]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--output", default="demo-output")
    ap.add_argument("--speakers", type=int, default=4)
    ap.add_argument("--config", default=str(Path(__file__).parent.parent / "configs" / "demo.yaml"))
    ap.add_argument("--verbose", action="store_true",
                    help="show Ray's and the libraries' logs here instead of in OUTPUT/logs/")
    args = ap.parse_args(argv)
    out = Path(args.output)
    shutil.rmtree(out, ignore_errors=True)
    with session(str(out), "demo", verbose=args.verbose):
        return run(out, args)


def run(out: Path, args: argparse.Namespace) -> int:
    corpus = out / "corpus-synthetic-ravdess"
    rows = synthesize_corpus("ravdess", corpus, n_speakers=args.speakers, per_emotion=2, seed=0)
    bad = seed_bad_files(corpus)
    print(f"[demo] wrote {len(rows)} synthetic RAVDESS-layout clips + {len(bad)} broken files "
          f"to {corpus}", file=sys.stderr)
    cfg = config_mod.load(PrepareConfig, args.config, inputs=[str(corpus)],
                          output=str(out / "prepared"))
    init_ray()
    summary = run_prepare(cfg)
    assert summary["ok"] + summary["quarantined"] == summary["input_files"]
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(summary["quarantine_reasons"].items()))
    print(f"[demo] 1. prepare: {summary['input_files']} files -> {summary['ok']} ok, "
          f"{summary['quarantined']} quarantined ({reasons}); {summary['speakers']} "
          f"speakers, labels {', '.join(summary['labels'])}", file=sys.stderr)
    print(f"[demo]    tables in {out / 'prepared'}: manifest/, features/, quarantine/, "
          f"summary.json", file=sys.stderr)
    learn(out)
    score(out)
    return 0


def learn(out: Path) -> None:
    """Cross-validate a classical baseline, train a 1-D CNN, evaluate it."""
    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import load_features
    from ser_ray.learn.evaluate import evaluate_model
    from ser_ray.learn.experiment import run_cv, train_model

    prepared = out / "prepared"
    cfg = LearnConfig(features=("handcrafted94",), model="logreg", protocol="speaker-kfold",
                      folds=2)
    cv = run_cv(load_features(prepared, cfg.features), cfg, out / "cv")
    print(f"[demo] 2. cv: speaker-independent 2-fold cv, logreg on handcrafted94: UA "
          f"{cv['ua_mean']:.3f} WA {cv['wa_mean']:.3f} (chance {1 / len(cv['labels']):.3f}); "
          f"report in {out / 'cv' / 'summary.md'}", file=sys.stderr)
    cnn = LearnConfig(features=("mfcc",), frames=200, model="cnn1d", cpus_per_worker=0.5,
                      model_options={"channels": (64, 32), "dense": (64,), "epochs": 20,
                                     "lr": 0.003})
    data = load_features(prepared, cnn.features, frames=cnn.frames)
    train_model(data, cnn, out / "model-cnn1d")
    ev = evaluate_model(out / "model-cnn1d", [str(prepared)], out / "eval-cnn1d")
    print(f"[demo] 3. train: cnn1d model in {out / 'model-cnn1d'}; scored on its own corpus (speakers "
          f"shared, so optimistic): UA {ev['ua_mean']:.3f}", file=sys.stderr)



DEMO_NIGHT = "2026-11-22"


def demo_backlog(out: Path):
    """The demo's night: 8 synthetic calls (new voices, stereo and mono, 1-2 min, broken ones
    among them) in ``out/calls-2026-11-22`` and their metadata beside it -> (folder, metadata
    file, truth). The report-page browser test scores the same backlog."""
    from ser_ray.synth import synthesize_backlog

    backlog = out / f"calls-{DEMO_NIGHT}"
    truth = synthesize_backlog(backlog, n_calls=8, seed=0, minutes=(1.0, 2.0), sr=8000, layout="dated")
    return backlog, out / f"calls-{DEMO_NIGHT}-metadata.csv", truth


def score(out: Path) -> None:
    """Score a synthetic backlog of calls (new voices, broken files among them) and print the
    top of the urgency ranking."""
    import pandas as pd

    from ser_ray.config import LearnConfig, ScoreConfig
    from ser_ray.learn.data import load_features
    from ser_ray.learn.experiment import train_model
    from ser_ray.score import read_calls, run_score

    model = LearnConfig(features=("handcrafted94",), model="logreg")
    train_model(load_features(out / "prepared", model.features), model, out / "model-logreg")
    backlog, metadata, truth = demo_backlog(out)
    print(f"[demo] 4. score: wrote a synthetic backlog of {len(truth)} calls ({int(truth['negative'].notna().sum())} "
          f"good, {int(truth['negative'].isna().sum())} broken) to {backlog}", file=sys.stderr)
    run = run_score(ScoreConfig(model=str(out / "model-logreg"), inputs=(str(backlog),),
                                output=str(out / "scored"), run_date=DEMO_NIGHT, customer_channel="right",
                                metadata=str(metadata)))
    calls = read_calls(out / "scored", DEMO_NIGHT).merge(truth[["call_id", "kind"]], on="call_id")
    top = calls.sort_values("urgency_rank").head(10)
    with pd.option_context("display.width", 120, "display.max_columns", 10):
        print(top[["urgency_rank", "call_id", "status", "urgency_score", "agent", "queue", "kind"]]
              .to_string(index=False))
    print(f"[demo] {run['calls']} calls scored into {out / 'scored'} (calls/, segments/, runs/, reports/); "
          f"the column 'kind' is the synthetic truth, not something the model saw. Report: "
          f"{run['outputs']['report']}; page for a browser: {run['outputs']['report_html']}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
