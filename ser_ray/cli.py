"""The ``ser-ray`` command: thin wrappers that turn arguments into configs and library calls."""

from __future__ import annotations

import argparse
import json
import sys

from ser_ray import config as config_mod
from ser_ray.config import PrepareConfig

EXIT_NOTHING_USABLE = 1
EXIT_STRICT = 3
EXIT_DRIFT = 4
SHEET_HELP = "the sheet.csv of a `ser-ray sample` folder, labelled on its label.html"


class Registered:
    """The names of a registry, looked up only when argparse needs them (a ``--help``, a value
    to check): importing every registry costs seconds that most commands never need. Used as a
    ``choices`` container, or as an action's ``names`` for ``%(names)s`` in its help."""

    def __init__(self, names):
        self._names, self._got = names, None

    def _all(self) -> list[str]:
        if self._got is None:
            self._got = [str(n) for n in self._names()]
        return self._got

    def __contains__(self, value) -> bool:
        return value in self._all()

    def __iter__(self):
        return iter(self._all())

    def __str__(self) -> str:
        return ", ".join(self._all())


def _registered(action: argparse.Action, kind: str) -> argparse.Action:
    """``action``'s help names every registered thing of ``kind`` (``ser-ray list KIND``)."""
    from ser_ray.catalog import names

    action.names = Registered(lambda: names(kind))
    return action


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _config_args(p: argparse.ArgumentParser, config_help: str, set_example: str) -> None:
    """``--config FILE`` and repeatable ``--set KEY=VALUE``, as every job command takes them."""
    p.add_argument("--config", help=config_help)
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override any config field, e.g. {set_example}")


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", action="extend", dest="inputs", metavar="URI",
                   help="folder, glob, tar shard(s) (shard-{000..009}.tar), s3://bucket/prefix, "
                        "or a manifest CSV/Parquet with path,label columns")
    _registered(p.add_argument("--corpus", help="%(names)s, manifest, sidecar (labels in tar JSON "
                                                "sidecars) or auto (default)"), "corpora")
    _registered(p.add_argument("--label-set", dest="label_set", help="%(names)s (default all)"),
                "label-sets")
    _registered(p.add_argument("--features", type=_csv,
                               help="comma-separated extractors: %(names)s (the encoder's model: "
                                    "feature_options.encoder.model)"), "extractors")
    p.add_argument("--output", help="output folder (rerun into it to resume)")
    _config_args(p, "YAML config file (see configs/)",
                 "--set audio.trim=true --set feature_options.mfcc.n_mfcc=20")
    p.add_argument("--num-workers", type=int, dest="num_workers")
    p.add_argument("--strict", action="store_true", default=None,
                   help=f"exit {EXIT_STRICT} when any file is quarantined")
    p.add_argument("--overwrite", action="store_true",
                   help="discard a previous run in --output instead of resuming it")
    p.add_argument("--no-progress", action="store_true")


def prepare_config(args: argparse.Namespace) -> PrepareConfig:
    return config_mod.load(
        PrepareConfig, args.config, args.set, inputs=args.inputs, corpus=args.corpus,
        label_set=args.label_set, features=args.features, output=args.output,
        num_workers=args.num_workers, strict=args.strict)


def cmd_prepare(args: argparse.Namespace) -> int:
    from ser_ray.prepare import run_prepare

    cfg = prepare_config(args)
    summary = run_prepare(cfg, overwrite=args.overwrite, progress=not args.no_progress)
    brief = {k: summary[k] for k in ("input_files", "ok", "quarantined", "quarantine_reasons",
                                     "skipped", "speakers", "labels", "dropped_labels")}
    print(json.dumps(brief, indent=2))
    if summary["ok"] == 0:
        print("ser-ray prepare: no usable file; see quarantine/ for the reasons", file=sys.stderr)
        return EXIT_NOTHING_USABLE
    if cfg.strict and summary["quarantined"]:
        print(f"ser-ray prepare: --strict and {summary['quarantined']} file(s) quarantined",
              file=sys.stderr)
        return EXIT_STRICT
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from ser_ray.synth import synthesize_backlog, synthesize_corpus

    if args.layout == "backlog":
        table = synthesize_backlog(args.output, n_calls=args.calls, seed=args.seed,
                                   sr=args.sample_rate or 8000, layout="dated" if args.dated else "flat",
                                   **({"moods": args.emotions} if args.emotions else {}))
        print(f"wrote {len(table)} synthetic calls {table['kind'].value_counts().to_dict()} to "
              f"{args.output}; truth and metadata CSVs beside it", file=sys.stderr)
        return 0

    rows = synthesize_corpus(args.layout, args.output, n_speakers=args.speakers,
                             per_emotion=args.per_emotion, emotions=args.emotions,
                             sr=args.sample_rate, seed=args.seed)
    speakers = len({r["speaker"] for r in rows})
    print(f"wrote {len(rows)} synthetic {args.layout} files ({speakers} speakers) "
          f"to {args.output}", file=sys.stderr)
    return 0


# --------------------------------------------------------------------------------------------
# Learning plane: train, cv, tune, evaluate
# --------------------------------------------------------------------------------------------

def add_learn_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--features", nargs="+", required=True, metavar="DIR", dest="roots",
                   help="output folder(s) of `ser-ray prepare`; several are concatenated "
                        "(e.g. one per corpus for --protocol cross-corpus)")
    p.add_argument("--feature-set", type=_csv, dest="features", metavar="NAME[,NAME]",
                   help="feature table(s) to learn from (default: the one table the folder "
                        "holds; with several, name one); several 1-D vectors are "
                        "concatenated, e.g. egemaps,handcrafted173")
    _registered(p.add_argument("--model", help="registered model: %(names)s; required unless "
                                               "--config names one"), "models")
    _config_args(p, "YAML LearnConfig (see configs/)", "--set balance=smote "
                 "--set model_options.epochs=20 --set augment.variant=merged")
    _registered(p.add_argument("--label-set", dest="label_set", help="%(names)s"), "label-sets")
    p.add_argument("--seed", type=int)
    p.add_argument("--num-workers", type=int, dest="num_workers",
                   help="Ray Train workers per fit (DDP)")
    p.add_argument("--gpu", action="store_true", default=None, dest="use_gpu")


def learn_config(args: argparse.Namespace, **extra):
    """The resolved LearnConfig; ``features`` left unset becomes the one table ``--features``
    holds (several tables: an error naming them)."""
    import dataclasses

    from ser_ray.config import LearnConfig
    from ser_ray.learn.data import resolve_feature_set

    data = config_mod.merged(
        args.config, args.set, features=args.features, model=args.model,
        label_set=args.label_set, seed=args.seed, num_workers=args.num_workers,
        use_gpu=args.use_gpu, **extra)
    if not data.get("model"):
        raise ValueError("give --model NAME (or model: in the --config file, or --set model=NAME)")
    cfg = config_mod.from_dict(LearnConfig, data)
    if not cfg.features:
        cfg = dataclasses.replace(cfg, features=resolve_feature_set(args.roots, cfg.features))
        print(f"ser-ray: learning from feature table {cfg.features[0]!r} (the only one in "
              f"--features)", file=sys.stderr)
    return cfg


def _load_data(args: argparse.Namespace, cfg):
    from ser_ray.learn.data import load_learn_features

    data = load_learn_features(args.roots, cfg)
    if data.feature_config["dropped_labels"]:
        print(f"ser-ray: labels outside the set dropped: {data.feature_config['dropped_labels']}",
              file=sys.stderr)
    return data


def cmd_train(args: argparse.Namespace) -> int:
    from ser_ray.learn.experiment import train_model
    from ser_ray.runtime import init_ray

    cfg = learn_config(args)
    data = _load_data(args, cfg)
    init_ray()
    metrics = train_model(data, cfg, args.output)
    val = metrics.get("validation")
    if val:
        print(json.dumps({"validation_ua": val["ua"], "validation_wa": val["wa"],
                          "speakers": val["speakers"]}, indent=2))
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from ser_ray.learn.experiment import run_cv
    from ser_ray.runtime import init_ray

    cfg = learn_config(args, protocol=args.protocol, folds=args.folds,
                       test_speakers=args.test_speakers, train_corpora=args.train_corpora,
                       test_corpus=args.test_corpus)
    data = _load_data(args, cfg)
    init_ray()
    metrics = run_cv(data, cfg, args.output, progress=not args.no_progress)
    print(json.dumps({k: metrics[k] for k in ("protocol", "ua_mean", "ua_std", "wa_mean",
                                              "wa_std", "n_folds")}, indent=2))
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    if args.labels:
        from ser_ray.learn.labelled import evaluate_labels

        m = evaluate_labels(args.model, args.labels, args.output, trust=args.trust_model,
                            seed=args.seed, outcomes=args.outcomes)
        keys = ("protocol", "ua", "wa", "intervals", "labelled", "outcomes")
    else:
        from ser_ray.learn.evaluate import evaluate_model

        m = evaluate_model(args.model, args.roots, args.output, trust=args.trust_model)
        keys = ("protocol", "ua_mean", "wa_mean", "shares_speakers")
    print(json.dumps({k: m.get(k) for k in keys}, indent=2, default=str))
    return 0


def cmd_adapt(args: argparse.Namespace) -> int:
    from ser_ray.learn.adapt import AdaptSettings, adapt_model
    from ser_ray.runtime import init_ray

    init_ray()
    settings = AdaptSettings(args.weight, args.min_per_class, args.folds)
    report = adapt_model(args.model, args.labels, args.output, roots=args.roots,
                         settings=settings, trust=args.trust_model)
    print(json.dumps({"pooled": report["pooled"], "labelled": report["labelled"],
                      "output": args.output}, indent=2))
    return 0


def cmd_fuse(args: argparse.Namespace) -> int:
    from ser_ray.models.late_fusion import save_late_fusion

    weights = [float(w) for w in _csv(args.weights)] if args.weights else None
    out = save_late_fusion(args.models, args.output, weights, trust=args.trust_model)
    print(json.dumps({"late_fusion": str(out), "members": args.models}, indent=2))
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    from ser_ray.runtime import init_ray
    from ser_ray.learn.tuning import load_space, run_sweep

    space = load_space(args.space)
    init_ray()
    table = run_sweep(args.roots, space, args.output, resume=not args.restart,
                      progress=not args.no_progress)
    best = table.iloc[0].to_dict() if len(table) else {}
    print(json.dumps({"best": best}, indent=2, default=str))
    return 0


# --------------------------------------------------------------------------------------------
# Scoring plane
# --------------------------------------------------------------------------------------------

def score_config(args: argparse.Namespace):
    from ser_ray.config import ScoreConfig

    sets = [*(args.set or []), *(["drift.fail_on_drift=true"] if args.fail_on_drift else [])]
    return config_mod.load(
        ScoreConfig, args.config, sets, model=args.model, inputs=args.inputs,
        output=args.output, run_date=args.run_date, metadata=args.metadata,
        customer_channel=args.customer_channel, agents=args.agents, num_workers=args.num_workers,
        rescore=args.rescore, trust_model=args.trust_model)


def cmd_score(args: argparse.Namespace) -> int:
    from ser_ray.score import run_score

    cfg = score_config(args)
    run = run_score(cfg, progress=not args.no_progress)
    print(json.dumps({k: run[k] for k in ("run_id", "calls", "counts", "skipped_previously_scored",
                                          "audio_s", "wall_s", "outputs")}, indent=2, default=str))
    top = run.get("top_calls") or []
    if top:
        print("most urgent calls:")
        for row in top:
            print(f"  {row['urgency_rank']:>3}. {row['call_id']}  urgency {row['urgency_score']:.2f}")
    drift = run.get("drift") or {}
    if drift.get("alarm") and cfg.drift.fail_on_drift:  # published: the rows are there
        print(f"ser-ray score: --fail-on-drift: {drift['message']}", file=sys.stderr)
        return EXIT_DRIFT
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from ser_ray.config import SampleConfig
    from ser_ray.score.sample import run_sample

    cfg = config_mod.load(SampleConfig, args.config, args.set, scored=args.scored,
                          run_dates=args.run_dates, n=args.n, output=args.output, seed=args.seed)
    record = run_sample(cfg)
    print(json.dumps({k: record[k] for k in ("nights", "n", "counts", "candidates")}, indent=2))
    print(f"label the segments: open {cfg.output}/label.html, save the sheet as {cfg.output}/sheet.csv")
    return 0


# Every subcommand's --help ends with one of these.
EXAMPLES = {
    "prepare": "ser-ray prepare --input ../shared/data/emodb --features mfcc,egemaps "
               "--set audio.trim=true --output runs/emodb",
    "synth": "ser-ray synth --layout ravdess --speakers 4 --output runs/synthetic",
    "train": "ser-ray train --features runs/emodb --feature-set egemaps --model logreg "
             "--output runs/emodb-logreg",
    "cv": "ser-ray cv --features runs/emodb --feature-set egemaps --model logreg --protocol loso "
          "--output runs/emodb-cv",
    "tune": "ser-ray tune --features runs/emodb --space configs/tune_emodb.yaml --output runs/t",
    "evaluate": "ser-ray evaluate --model runs/emodb-logreg --features runs/ravdess "
                "--output runs/logreg-on-ravdess",
    "fuse": "ser-ray fuse --model runs/audio --model runs/text --weights 0.6,0.4 --output runs/late",
    "score": "ser-ray score --model runs/emodb-logreg --input calls/2026-11-22 "
             "--output reports --run-date 2026-11-22",
    "sample": "ser-ray sample --scored reports --run-date 2026-11-22 --n 200 --output label-1122",
    "adapt": "ser-ray adapt --model runs/emodb-logreg --labels label-1122/sheet.csv --output m2",
    "list": "ser-ray list models",
}


def cmd_list(args: argparse.Namespace) -> int:
    from ser_ray.catalog import KINDS, render

    print(render([args.kind] if args.kind else KINDS), end="")
    return 0


def _synth_layouts() -> list[str]:
    from ser_ray.synth import LAYOUTS

    return [*LAYOUTS, "backlog"]


def build_parser() -> argparse.ArgumentParser:
    from ser_ray import __version__
    from ser_ray.catalog import KINDS

    parser = argparse.ArgumentParser(prog="ser-ray", description=__doc__)
    parser.add_argument("--version", action="version", version=f"ser-ray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="extractors, models, label sets, corpora and protocols, "
                                     "each with its one-line doc")
    ls.add_argument("kind", nargs="?", choices=KINDS, help="only this kind")
    ls.set_defaults(func=cmd_list)
    p = sub.add_parser("prepare", help="audio -> manifest, features, quarantine, summary")
    add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)
    s = sub.add_parser("synth", help="write a synthetic emotional-speech corpus (for demos/tests)")
    s.add_argument("--layout", required=True,
                   choices=Registered(_synth_layouts),
                   help="a corpus layout, or backlog: recorded calls for `ser-ray score`")
    s.add_argument("--output", required=True)
    s.add_argument("--speakers", type=int)
    s.add_argument("--per-emotion", type=int, default=2, dest="per_emotion")
    s.add_argument("--emotions", type=_csv)
    s.add_argument("--sample-rate", type=int, dest="sample_rate")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--calls", type=int, default=8, help="backlog: number of good calls")
    s.add_argument("--dated", action="store_true", help="backlog: 2026-11-22/<queue>/ sub-folders")
    s.set_defaults(func=cmd_synth)

    t = sub.add_parser("train", help="features -> a model artifact (safetensors + configs)")
    add_learn_args(t)
    t.add_argument("--output", required=True, help="model folder to write")
    t.set_defaults(func=cmd_train)

    c = sub.add_parser("cv", help="cross-validate one configuration under a protocol")
    add_learn_args(c)
    _registered(c.add_argument("--protocol", help="%(names)s (default speaker-kfold; random-kfold "
                                                  "shares speakers: optimistic)"), "protocols")
    c.add_argument("--folds", type=int)
    c.add_argument("--test-speakers", type=_csv, dest="test_speakers")
    c.add_argument("--train-corpora", type=_csv, dest="train_corpora")
    c.add_argument("--test-corpus", dest="test_corpus")
    c.add_argument("--output", required=True, help="report folder (metrics.json, summary.md, ...)")
    c.set_defaults(func=cmd_cv)

    u = sub.add_parser("tune", help="Ray Tune sweep over models, features and hyperparameters")
    u.add_argument("--features", nargs="+", required=True, metavar="DIR", dest="roots")
    u.add_argument("--space", required=True, help="YAML search space (see configs/tune_*.yaml)")
    u.add_argument("--output", required=True)
    u.add_argument("--restart", action="store_true",
                   help="start over instead of resuming an interrupted sweep in --output")
    u.set_defaults(func=cmd_tune)

    e = sub.add_parser("evaluate", help="score a saved model on prepared features, or on "
                                        "segments people labelled (--labels)")
    e.add_argument("--model", required=True, help="model folder written by train, tune or fuse")
    src = e.add_mutually_exclusive_group(required=True)
    src.add_argument("--features", nargs="+", metavar="DIR", dest="roots")
    src.add_argument("--labels", metavar="SHEET", help=SHEET_HELP)
    e.add_argument("--outcomes", metavar="TABLE",
                   help="--labels: CSV/Parquet of call outcomes (call_id, optional run_date, 0/1 "
                        "columns such as escalated): precision@k, recall@k and AUROC of the ranking")
    e.add_argument("--seed", type=int, default=0, help="--labels: the bootstrap's seed")
    e.add_argument("--output", required=True)
    e.set_defaults(func=cmd_evaluate)

    ad = sub.add_parser("adapt", help="refit a model's head on its data plus your labelled calls")
    ad.add_argument("--model", required=True, help="model folder written by train or tune")
    ad.add_argument("--labels", required=True, metavar="SHEET", help=SHEET_HELP)
    ad.add_argument("--output", required=True, help="the adapted model folder to write")
    ad.add_argument("--features", nargs="+", metavar="DIR", dest="roots",
                    help="the model's training feature folders (default: those it names)")
    for flag, default, what in (("weight", 3, "copies of each labelled segment"),
                                ("min-per-class", 3, "labelled segments each labelled class needs"),
                                ("folds", 3, "before/after folds over the labelled calls")):
        ad.add_argument(f"--{flag}", type=int, default=default, help=f"{what} ({default})")
    ad.set_defaults(func=cmd_adapt)

    f = sub.add_parser("fuse", help="late fusion: average the probabilities of saved models")
    f.add_argument("--model", action="append", required=True, dest="models", metavar="DIR",
                   help="a model folder written by train or tune; give two or more")
    f.add_argument("--weights", help="comma-separated, one per --model (default: equal)")
    f.add_argument("--output", required=True, help="fusion folder to write (for evaluate)")
    f.set_defaults(func=cmd_fuse)

    sc = sub.add_parser("score", help="score a backlog of call recordings into ranked Parquet reports")
    sc.add_argument("--model", help="model folder written by train or tune")
    sc.add_argument("--input", nargs="+", action="extend", dest="inputs", metavar="URI",
                    help="folder(s) or s3://bucket/prefix of recordings, searched recursively")
    sc.add_argument("--output", help="report folder or s3://bucket/prefix (segments/, calls/, "
                                     "runs/, reports/)")
    sc.add_argument("--run-date", dest="run_date", metavar="YYYY-MM-DD",
                    help="night being scored (default today); rerunning a night replaces its rows")
    sc.add_argument("--metadata", help="CSV/Parquet of call metadata with a call_id column")
    sc.add_argument("--customer-channel", dest="customer_channel", choices=config_mod.CHANNELS,
                    help="stereo: the customer's channel; mono: downmix (default); diarize: score "
                         "the customer's voice; auto: stereo_channel of stereo calls, mono diarised")
    sc.add_argument("--agents", metavar="DIR", help="enrolled agent voices: a file or folder each")
    _config_args(sc, "YAML ScoreConfig (see configs/score.yaml)",
                 "--set vad.name=energy --set urgency.weights.sad=1.0 --set window_s=2")
    sc.add_argument("--num-workers", type=int, dest="num_workers")
    sc.add_argument("--rescore", action="store_true", default=None,
                    help="also score calls an earlier night scored with this model")
    sc.add_argument("--fail-on-drift", dest="fail_on_drift", action="store_true",
                    help=f"exit {EXIT_DRIFT} after publishing when the night's audio is unlike the "
                         "training audio (the drift limits; same as drift.fail_on_drift=true)")
    sc.add_argument("--no-progress", action="store_true")
    sc.set_defaults(func=cmd_score)

    sa = sub.add_parser("sample", help="choose segments of scored nights to label in the browser")
    sa.add_argument("--scored", help="a `score` output folder or s3://bucket/prefix")
    sa.add_argument("--run-date", dest="run_dates", action="append", metavar="YYYY-MM-DD",
                    help="a night to sample (repeat for more; default every committed night)")
    sa.add_argument("--n", type=int, help="segments to choose (100)")
    sa.add_argument("--seed", type=int, help="the same seed chooses the same segments")
    sa.add_argument("--output", help="the labelling folder to write (local)")
    _config_args(sa, "YAML SampleConfig (mix, per_call, labels, label_map, ...)",
                 "--set per_call=2 --set mix.uncertain=0.5")
    sa.set_defaults(func=cmd_sample)
    for name in JOBS:
        sub.choices[name].add_argument(
            "--verbose", action="store_true",
            help="show Ray's and the libraries' logs here instead of in <output>/logs/")
    for name in ("train", "cv", "tune"):
        sub.choices[name].add_argument("--no-progress", action="store_true")
    for name in ("evaluate", "fuse", "score", "adapt"):
        sub.choices[name].add_argument(
            "--trust-model", dest="trust_model", action="store_true",
            default=None if name == "score" else False,
            help="also load a model folder that needs pickle (an old classical model.joblib): "
                 "unpickling can run any code, so only for folders you trust")
    for name, sp in sub.choices.items():
        sp.formatter_class = argparse.RawDescriptionHelpFormatter
        sp.epilog = f"example:\n  {EXAMPLES[name]}"
    return parser


# Commands that run jobs on Ray: quiet by default (ser_ray.console), --verbose to see it all.
JOBS = ("prepare", "train", "cv", "tune", "evaluate", "score", "adapt")


def main(argv: list[str] | None = None) -> int:
    from ser_ray.console import session

    args = build_parser().parse_args(argv)
    try:
        with session(getattr(args, "output", None), args.command,
                     verbose=args.command not in JOBS or args.verbose):
            return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ser-ray {args.command}: {exc}", file=sys.stderr)
        return 2
    finally:  # what the command printed is out before Ray's exit handlers run
        sys.stdout.flush()
        sys.stderr.flush()


if __name__ == "__main__":
    sys.exit(main())
