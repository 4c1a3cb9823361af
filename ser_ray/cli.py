"""The ``ser-ray`` command: thin wrappers that turn arguments into configs and library calls."""

from __future__ import annotations

import argparse
import json
import sys

from ser_ray import config as config_mod
from ser_ray.config import PrepareConfig

EXIT_NOTHING_USABLE = 1
EXIT_STRICT = 3


def _csv(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def add_prepare_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", action="extend", dest="inputs", metavar="URI",
                   help="folder, glob, tar shard(s) (shard-{000..009}.tar), s3://bucket/prefix, "
                        "or a manifest CSV/Parquet with path,label columns")
    p.add_argument("--corpus", help="ravdess, cremad, tess, savee, emodb, iemocap, manifest, "
                                    "sidecar (labels in tar JSON sidecars) or auto (default)")
    p.add_argument("--label-set", dest="label_set",
                   help="all (default), ravdess8, merged8, ekman7, iemocap4, iemocap4-aesn, "
                        "gender16")
    p.add_argument("--features", type=_csv, help="comma-separated extractors: mfcc, logmel, "
                                                 "stft, handcrafted173, handcrafted94, egemaps")
    p.add_argument("--output", help="output folder (rerun into it to resume)")
    p.add_argument("--config", help="YAML config file (see configs/)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config field, e.g. --set audio.trim=true "
                        "--set feature_options.mfcc.n_mfcc=20")
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
    from ser_ray.synth import synthesize_corpus

    rows = synthesize_corpus(args.layout, args.output, n_speakers=args.speakers,
                             per_emotion=args.per_emotion, emotions=args.emotions,
                             sr=args.sample_rate, seed=args.seed)
    speakers = len({r["speaker"] for r in rows})
    print(f"wrote {len(rows)} synthetic {args.layout} files ({speakers} speakers) "
          f"to {args.output}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ser-ray", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="audio -> manifest, features, quarantine, summary")
    add_prepare_args(p)
    p.set_defaults(func=cmd_prepare)
    s = sub.add_parser("synth", help="write a synthetic emotional-speech corpus (for demos/tests)")
    s.add_argument("--layout", required=True,
                   choices=["ravdess", "cremad", "tess", "savee", "emodb", "iemocap"])
    s.add_argument("--output", required=True)
    s.add_argument("--speakers", type=int)
    s.add_argument("--per-emotion", type=int, default=2, dest="per_emotion")
    s.add_argument("--emotions", type=_csv)
    s.add_argument("--sample-rate", type=int, dest="sample_rate")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_synth)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"ser-ray {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
