"""Evaluation report of one experiment: metrics.json, per_class.csv, confusion.png, summary.md.

Every output is rendered in memory first and then written under a temporary name and moved into
place with ``os.replace``, so a crash (a plotting error, a full disk) never leaves a half-written
file, and a reader never sees one. metrics.json is moved last: once it exists, the rest does too.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import warnings
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ser_ray.config import redact
from ser_ray.storage import write_bytes_atomic
from ser_ray.learn.metrics import SCALAR_METRICS, scores_from_confusion
from ser_ray.markdown import table

# What a reader needs to know to trust a number: does a test speaker also appear in training?
PROTOCOL_MEANINGS: dict[str, str] = {
    "random-kfold": "random stratified k-fold: speakers are shared between train and test, so "
                    "scores are optimistic (the model can learn the speaker, not the emotion)",
    "speaker-kfold": "speaker-independent k-fold: whole speakers per fold, no speaker in both "
                     "train and test",
    "loso": "leave-one-speaker-out: each fold tests one speaker unseen in training",
    "explicit": "explicit speaker split: the named test speakers are held out, all other speakers "
                "train; no speaker in both train and test",
    "held-out": "held-out evaluation of a saved model on the given feature tables; the report "
                "says whether any test speaker was in the model's training data",
    "labelled": "a saved model on segments of scored calls that people labelled (ser-ray sample); "
                "intervals from a bootstrap over calls",
    "cross-corpus": "cross-corpus: train on some corpora, test on a corpus never seen in training "
                    "(new speakers, recording conditions and label habits)",
    "leave-one-corpus-out": "leave-one-corpus-out: each fold tests one corpus never seen in "
                            "training, trained on all the others",
}

FILES: dict[str, str] = {
    "per_class": "per_class.csv",
    "confusion": "confusion.png",
    "reliability": "reliability.png",  # when the metrics hold reliability curves
    "summary": "summary.md",
    "metrics": "metrics.json",  # last: its presence marks a complete report
}

_REQUIRED = ("protocol", "folds", "ua_mean", "ua_std", "wa_mean", "wa_std", "confusion")
_METRIC_NAMES = {"ua": "UA", "wa": "WA", "macro_f1": "macro F1", "weighted_f1": "weighted F1"}
# Summary lines taken from the run config when present: (shown as, keys tried in order).
_SETUP_KEYS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Model", ("model", "model_name")),
    ("Features", ("features", "feature")),
    ("Label set", ("label_set",)),
    ("Balancing", ("balance",)),
    ("Corpus balancing", ("balance_corpora",)),
    ("Augmentation", ("augment", "variant")),
)
_MAX_LISTED_SPEAKERS = 6


def describe_protocol(name: str) -> str:
    """One line on what ``name`` means for the trust one can put in its scores."""
    if name in PROTOCOL_MEANINGS:
        return PROTOCOL_MEANINGS[name]
    try:  # protocols registered in splits.py after this table was written
        from ser_ray.learn.splits import PROTOCOLS
    except ImportError:
        PROTOCOLS = {}
    spec = PROTOCOLS.get(name)
    if spec is not None and hasattr(spec, "shares_speakers"):
        return ("speakers shared between train and test (optimistic)" if spec.shares_speakers
                else "speaker-independent: no speaker in both train and test")
    warnings.warn(f"report: no description for protocol {name!r}; known: "
                  f"{sorted(PROTOCOL_MEANINGS)}", stacklevel=2)
    return "no description registered for this protocol"


# ----------------------------------------------------------------------------- JSON
def to_jsonable(obj: Any) -> Any:
    """``obj`` as plain JSON types: numpy values/arrays to Python, tuples to lists, keys to str,
    dataclasses to dicts, and NaN/inf to None (a warning names where), so strict parsers accept it.
    """
    bad: list[str] = []
    out = _jsonable(obj, "$", bad)
    if bad:
        warnings.warn(f"report: non-finite values written as null at {bad[:10]}", stacklevel=2)
    return out


def _jsonable(obj: Any, where: str, bad: list[str]) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = dataclasses.asdict(obj)
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v, f"{where}.{k}", bad) for k, v in obj.items()}
    if isinstance(obj, np.ndarray):
        obj = obj.tolist()
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v, f"{where}[{i}]", bad) for i, v in enumerate(obj)]
    if isinstance(obj, (set, frozenset)):
        return [_jsonable(v, f"{where}[]", bad) for v in sorted(obj, key=str)]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        bad.append(where)
        return None
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return str(obj)  # Paths, enums: readable beats failing at the end of a long run


# ----------------------------------------------------------------------------- outputs
def per_class_csv(per_class: Sequence[Mapping[str, Any]]) -> str:
    """CSV text, one row per class: label, precision, recall, f1, support."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["label", "precision", "recall", "f1", "support"])
    for row in per_class:
        writer.writerow([row["label"], *(round(float(row[k]), 6) for k in ("precision", "recall",
                                                                          "f1")),
                         int(row["support"])])
    return buf.getvalue()


def plot_confusion(confusion: Any, labels: Sequence[str], *, title: str | None = None) -> bytes:
    """PNG bytes of a (C, C) confusion matrix (rows true, columns predicted): each cell shows the
    count and the row-normalised percentage; colour is the row fraction."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ImportError("report: matplotlib draws confusion.png; install it with "
                          "`pip install matplotlib`") from e

    cm = np.asarray(confusion, dtype=np.int64)
    c = len(labels)
    support = cm.sum(axis=1, keepdims=True)
    frac = np.zeros(cm.shape, dtype=np.float64)
    np.divide(cm, support, out=frac, where=support > 0)

    side = max(4.0, 0.75 * c + 2.0)
    fig = Figure(figsize=(side + 1.2, side), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)  # pyplot-free: no global state, safe in worker processes
    ax = fig.add_subplot()
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="fraction of the true class (row)")
    ax.set_xticks(range(c), labels=list(labels), rotation=45, ha="right")
    ax.set_yticks(range(c), labels=[f"{label} (n={int(n)})" for label, n in
                                    zip(labels, support[:, 0])])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fontsize = max(6.0, min(11.0, 80.0 / c))
    for i in range(c):
        for j in range(c):
            pct = f"{100 * frac[i, j]:.0f}%" if support[i, 0] else "–"
            ax.text(j, i, f"{cm[i, j]}\n{pct}", ha="center", va="center", fontsize=fontsize,
                    color="white" if frac[i, j] > 0.5 else "black")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()


def plot_reliability(curves: Mapping[str, Mapping[str, list]], *, title: str | None = None
                     ) -> bytes:
    """PNG bytes of reliability curves ({name: :func:`~ser_ray.learn.metrics.reliability`}):
    accuracy against mean confidence per bin, the diagonal being perfect calibration, and the
    share of predictions in each bin underneath."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(5.5, 6.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    top, bottom = fig.subplots(2, 1, height_ratios=[3, 1], sharex=True)
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfectly calibrated")
    for k, (name, r) in enumerate(curves.items()):
        bins = len(r["count"])
        pts = [(c, a) for c, a in zip(r["confidence"], r["accuracy"]) if c is not None]
        if pts:
            top.plot(*zip(*pts), marker="o", label=name)
        total = max(sum(r["count"]), 1)
        width = 1.0 / bins / (len(curves) + 1)
        bottom.bar([(b + 0.5) / bins + (k - 0.5) * width for b in range(bins)],
                   [n / total for n in r["count"]], width=width, label=name)
    top.set_ylabel("accuracy")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.legend(loc="upper left")
    bottom.set_xlabel("confidence (highest probability)")
    bottom.set_ylabel("share")
    if title:
        top.set_title(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", pad_inches=0.1)
    return buf.getvalue()


def _calibration_lines(metrics: Mapping[str, Any]) -> list[str]:
    """summary.md's calibration section: ECE, Brier and NLL before and after."""
    cal = metrics["calibration"]
    if cal["method"] == "none":
        how = "not calibrated (`calibration: none`, or a torch model under `auto`)"
    else:
        temps = cal.get("temperatures") or []
        how = (f"temperature scaling fitted per fold on out-of-fold predictions of its training "
               f"speakers ({cal['inner_folds']} inner speaker folds; the test speakers never "
               f"touch it); temperatures {min(temps):.2f}-{max(temps):.2f}" if temps else
               "temperature scaling (no fold could fit one)")
    lines = ["## Calibration", "",
             f"{how}. Pooled over the {cal['n']} test predictions; ECE over "
             f"{cal['bins']} equal-width confidence bins. Lower is better.", ""]
    rows = [[name, *(f"{metrics[f'{k}_{kind}']:.3f}" for k in ("ece", "brier", "nll"))]
            for name, kind in (("raw", "raw"), ("calibrated", "calibrated"))]
    lines += table(["probabilities", "ECE", "Brier", "NLL"], rows)
    lines += ["", f"![reliability diagram]({FILES['reliability']})", ""]
    curve = metrics.get("risk_coverage") or []
    if curve:
        lines += ["## Not sure: risk and coverage", "",
                  "UA and WA of the most confident test predictions when the rest are answered "
                  "\"not sure\" (share answered; the lowest top probability answered).", ""]
        lines += table(["answered (%)", "threshold", "UA (%)", "WA (%)", "n"],
                       [[_pct(r["coverage"]), f"{r['threshold']:.3f}", _pct(r["ua"]),
                         _pct(r["wa"]), r["n"]] for r in curve])
        chosen = metrics.get("uncertain")
        if chosen:
            lines += ["", f"At the threshold each fold chose on its training speakers to answer "
                          f"{_pct(chosen['target'])} % of them: {_pct(chosen['answered'])} % of "
                          f"the test predictions answered ({chosen['n_answered']}), UA "
                          f"{_pct(chosen['ua'])} %, WA {_pct(chosen['wa'])} %."]
        lines.append("")
    return lines


def _pct(x: Any) -> str:
    return "–" if x is None else f"{100 * float(x):.1f}"


def _speakers(speakers: Any) -> str:
    if speakers is None:
        return "–"
    speakers = list(speakers)
    if len(speakers) <= _MAX_LISTED_SPEAKERS:
        return ", ".join(map(str, speakers)) or "–"
    return f"{len(speakers)} speakers"


def _name(value: Any) -> str | None:
    """Display name of a config entry: a string, a list of names, or a mapping with ``name``."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return _name(value.get("name"))
    if isinstance(value, (list, tuple)):
        names = [n for n in map(_name, value) if n]
        return ", ".join(names) or None
    return str(value)


def _setup(config: Mapping[str, Any]) -> dict[str, str]:
    found = {}
    for shown, keys in _SETUP_KEYS:
        for key in keys:
            name = _name(config.get(key))
            if name and name != "False":
                found[shown] = name
                break
    return found


def _noisy_rows(noisy: Mapping[Any, Mapping[str, Any]]) -> list[list[str]]:
    def cell(entry: Mapping[str, Any], key: str) -> str:
        if f"{key}_mean" in entry:
            return f"{_pct(entry[f'{key}_mean'])} ± {_pct(entry.get(f'{key}_std', 0.0))}"
        return _pct(entry.get(key))

    def snr_key(snr: Any) -> float:
        try:
            return float(snr)
        except (TypeError, ValueError):
            return math.inf

    return [[str(snr), cell(noisy[snr], "ua"), cell(noisy[snr], "wa")]
            for snr in sorted(noisy, key=snr_key)]


_CODEC_NAMES = {"mulaw": "G.711 mu-law", "alaw": "G.711 A-law", "pcm16": "8 kHz PCM",
                "mp3": "MP3", "opus": "Opus"}
_MODE_NAMES = {"clean": "trained clean", "telephone": "trained with telephone copies"}


def _channel_lines(channel: Mapping[str, Any], folds: Sequence[Mapping[str, Any]]) -> list[str]:
    """The channel protocol's tables: mean UA per training mode and test condition, then per
    fold."""
    codecs = list(channel["codecs"])
    heads = ["clean"] + [f"{_CODEC_NAMES.get(c, c)}" + (f" {channel['kbps']:g} kbit/s"
                                                         if c in ("mp3", "opus") else "")
                         for c in codecs]
    modes = channel["modes"]
    lines = ["## Telephone channel", "",
             "UA (%) of the test speakers as recorded (clean) and through a telephone line: "
             "300-3400 Hz band-pass, 8 kHz, then each codec (no loss or clipping on the test "
             "side). Training modes: " + "; ".join(
                 f"{_MODE_NAMES.get(m, m)}: {how}" for m, how in channel["training"].items())
             + ".", ""]
    rows = []
    for mode, cells in modes.items():
        tel = [cells[c]["ua_mean"] for c in codecs]
        rows.append([_MODE_NAMES.get(mode, mode), _pct(cells["clean"]["ua_mean"]),
                     *[_pct(u) for u in tel],
                     f"{100 * (min(tel) - cells['clean']['ua_mean']):+.1f}" if tel else "–"])
    lines += table(["model", *heads, "worst line - clean (points)"], rows)
    lines += ["", "Per fold (UA %):", ""]
    lines += table(["fold", "model", *heads],
                   [[f.get("name", i), _MODE_NAMES.get(mode, mode),
                     *[_pct(f["channel"][mode][c]["ua"]) for c in ["clean", *codecs]]]
                    for i, f in enumerate(folds) if "channel" in f for mode in f["channel"]])
    return lines + [""]


def _corpus_lines(matrix: Mapping[str, Any]) -> list[str]:
    """leave-one-corpus-out: UA of each model (rows) on each corpus (columns)."""
    corpora = list(matrix["corpora"])
    lines = ["## Across corpora", "",
             "UA (%) of a model trained on the row's corpora, tested on the column's corpus "
             "(all its speakers). The last row holds each corpus out in turn: trained on all "
             "the others. A cell is blank where the model saw that corpus in training.", ""]
    rows = [[row["trained_on"], *[_pct(row["ua"].get(c)) if c in row["ua"] else "" for c in
                                   corpora]] for row in matrix["rows"]]
    lines += table(["trained on / tested on", *corpora], rows)
    return lines + [""]


def render_summary(metrics: Mapping[str, Any], *, per_class: Sequence[Mapping[str, Any]],
                   seed: Any, config: Mapping[str, Any], title: str | None = None,
                   notes: Sequence[str] = ()) -> str:
    """summary.md text: protocol and its meaning, setup, UA/WA mean ± std, per-fold, per-class
    and (when ``metrics["noisy"]`` is present) noisy-test tables, and the confusion image."""
    protocol = str(metrics["protocol"])
    folds = list(metrics["folds"])
    setup = _setup(config)
    if title is None:
        title = "Speech emotion recognition"
        if "Model" in setup:
            title += f": {setup['Model']}"
            if "Features" in setup:
                title += f" on {setup['Features']}"
    n_folds = metrics.get("n_folds", len(folds))

    lines = [f"# {title}", ""]
    lines.append(f"- Protocol: **{protocol}**, {describe_protocol(protocol)}")
    lines.append(f"- Folds: {n_folds}")
    lines.append(f"- Seed: {seed}")
    lines += [f"- {shown}: {name}" for shown, name in setup.items()]
    if "n" in metrics:
        lines.append(f"- Test rows (all folds): {metrics['n']}")
    lines += [str(n) for n in notes]  # what the caller adds (evaluate --labels: what it rests on)
    drift = metrics.get("drift")
    if drift:  # evaluate: how unlike the model's training rows the test rows are
        lines.append(f"- Out of the training distribution: {_pct(drift['ood_share'])} % of "
                     f"{drift['rows']} rows (median feature PSI {drift['psi_median']:.2f})")
    lines.append("")

    lines += ["## Result", "",
              f"**UA {_pct(metrics['ua_mean'])} ± {_pct(metrics['ua_std'])} %**, "
              f"**WA {_pct(metrics['wa_mean'])} ± {_pct(metrics['wa_std'])} %** "
              f"(mean ± std over {n_folds} folds)", ""]
    pooled = metrics.get("pooled")
    header = ["metric", "mean ± std over folds (%)"]
    header += ["pooled over folds (%)"] if pooled else []
    rows = []
    for key in SCALAR_METRICS:
        if f"{key}_mean" not in metrics:
            continue
        row = [_METRIC_NAMES[key], f"{_pct(metrics[f'{key}_mean'])} ± "
                                   f"{_pct(metrics.get(f'{key}_std'))}"]
        if pooled:
            row.append(_pct(pooled.get(key)))
        rows.append(row)
    lines += table(header, rows)
    lines += ["", "UA (unweighted accuracy) is the mean per-class recall over the classes present "
              "in a test set; WA (weighted accuracy) is plain accuracy. Std is the population "
              "std (ddof=0) of the per-fold values; pooled scores come from all folds' "
              "predictions together.", ""]

    lines += ["## Folds", ""]
    lines += table(
        ["fold", "n", "UA (%)", "WA (%)", "train speakers", "test speakers"],
        [[fold.get("name", i), fold.get("n", fold.get("n_test", "–")), _pct(fold.get("ua")), _pct(fold.get("wa")),
          _speakers(fold.get("train_speakers")), _speakers(fold.get("test_speakers"))]
         for i, fold in enumerate(folds)],
    )
    lines.append("")

    lines += ["## Per class (pooled over folds)", ""]
    lines += table(
        ["label", "precision (%)", "recall (%)", "F1 (%)", "support"],
        [[row["label"], _pct(row["precision"]), _pct(row["recall"]), _pct(row["f1"]),
          row["support"]] for row in per_class],
    )
    lines.append("")

    noisy = metrics.get("noisy")
    if noisy:
        lines += ["## Noisy test sets", "",
                  "The test side mixed with background noise at each signal-to-noise ratio.", ""]
        lines += table(["SNR (dB)", "UA (%)", "WA (%)"], _noisy_rows(noisy))
        lines.append("")

    if metrics.get("calibration") and metrics["calibration"].get("reliability_raw"):
        lines += _calibration_lines(metrics)
    if metrics.get("channel"):
        lines += _channel_lines(metrics["channel"], folds)
    if metrics.get("corpus_matrix"):
        lines += _corpus_lines(metrics["corpus_matrix"])

    lines += ["## Confusion matrix", "",
              f"![confusion matrix, rows true, columns predicted]({FILES['confusion']})", "",
              f"Per-class numbers: [{FILES['per_class']}]({FILES['per_class']}); "
              f"all metrics: [{FILES['metrics']}]({FILES['metrics']}).", ""]
    if config:
        lines += ["## Config", "", "```json",
                  json.dumps(to_jsonable(config), indent=2, sort_keys=True), "```", ""]
    return "\n".join(lines)


def write_report(out_dir: str | Path, metrics: Mapping[str, Any], *, labels: Sequence[str],
                 seed: Any, config: Mapping[str, Any] | Any, title: str | None = None,
                 notes: Sequence[str] = ()) -> dict[str, Path]:
    """Write metrics.json, per_class.csv, confusion.png and summary.md into ``out_dir``.

    ``metrics`` holds at least ``protocol`` (a name, see :data:`PROTOCOL_MEANINGS`), ``folds``
    (one dict per fold: name, ua, wa, train_speakers, test_speakers, ...), the keys of
    :func:`ser_ray.learn.metrics.aggregate` (``confusion`` (C, C) counts, ``ua_mean`` ...), and
    optionally ``noisy``: {snr_db: {ua, wa} or {ua_mean, ua_std, ...}}. ``per_class`` is derived
    from ``confusion`` when absent. metrics.json is ``metrics`` as strict JSON (sorted keys,
    NaN -> null) with ``labels`` and ``seed`` added when missing. Returns the paths by role.
    """
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        config = dataclasses.asdict(config)
    config = redact(dict(config or {}))  # no user:password@ of a URL in a report
    missing = [k for k in _REQUIRED if k not in metrics]
    if missing:
        raise ValueError(f"metrics lacks {missing}: merge ser_ray.learn.metrics.aggregate() of the folds "
                         "with protocol and folds before writing the report")
    labels = [str(label) for label in labels]
    c = len(labels)
    if np.shape(metrics["confusion"]) != (c, c):
        raise ValueError(f"metrics['confusion'] has shape {np.shape(metrics['confusion'])} but "
                         f"labels has {c} entries: pass the labels the model was evaluated on")
    per_class = metrics.get("per_class")
    if per_class is None:
        per_class = scores_from_confusion(metrics["confusion"], labels)["per_class"]
    if [str(row["label"]) for row in per_class] != labels:
        raise ValueError(f"metrics['per_class'] labels {[row['label'] for row in per_class]} "
                         f"differ from labels {labels}: pass the same label list to both")

    n_folds = metrics.get("n_folds", len(metrics["folds"]))
    record = to_jsonable(metrics)
    record.setdefault("labels", labels)
    record.setdefault("seed", to_jsonable(seed))
    payloads = {
        "per_class": per_class_csv(per_class).encode(),
        "confusion": plot_confusion(metrics["confusion"], labels,
                                    title=f"{metrics['protocol']}, pooled over {n_folds} "
                                          f"fold{'s' if n_folds != 1 else ''}"),
        "summary": render_summary(metrics, per_class=per_class, seed=seed, config=config,
                                  title=title, notes=notes).encode(),
        "metrics": (json.dumps(record, indent=2, sort_keys=True, allow_nan=False) + "\n").encode(),
    }
    cal = metrics.get("calibration") or {}
    if cal.get("reliability_raw"):
        curves = {"raw": cal["reliability_raw"]}
        if cal.get("method") != "none":
            curves["calibrated"] = cal["reliability_calibrated"]
        payloads["reliability"] = plot_reliability(
            curves, title=f"{metrics['protocol']}, {cal['n']} test predictions")

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for role, name in FILES.items():
        if role in payloads:
            paths[role] = out_dir / name
            write_bytes_atomic(payloads[role], paths[role])
    return paths
