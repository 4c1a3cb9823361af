"""write_report: four files that exist, parse, explain the protocol, and are written atomically."""

from __future__ import annotations

import csv
import json
import math
import os
import struct

import numpy as np
import pytest

from ser_ray.learn import report
from ser_ray.learn.metrics import aggregate, compute_metrics
from ser_ray.learn.report import PROTOCOL_MEANINGS, describe_protocol, write_report

LABELS = ["angry", "happy", "neutral", "sad"]
FILES = {"metrics.json", "per_class.csv", "confusion.png", "summary.md"}
CONFIG = {"model": {"name": "cnn2d", "channels": 16}, "features": ["logmel"], "epochs": 2}


def _metrics(protocol: str = "speaker-kfold", **extra) -> dict:
    rng = np.random.default_rng(0)
    folds = []
    for i, (train, test) in enumerate([(["03", "08"], ["09"]), (["03", "09"], ["08"])]):
        y_true = rng.integers(0, 3, size=20)  # "sad" never true
        y_pred = np.where(rng.random(20) < 0.7, y_true, rng.integers(0, 4, size=20))
        m = compute_metrics(y_true, y_pred, LABELS)
        folds.append({"name": f"fold{i}", "train_speakers": tuple(train),
                      "test_speakers": tuple(test), **m})
    return {"protocol": protocol, "folds": folds, **aggregate(folds), **extra}


def _read_png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def _strict_json(path):
    def reject(const):
        raise ValueError(f"non-standard JSON constant {const}")
    return json.loads(path.read_text(), parse_constant=reject)


def test_writes_all_files_that_parse(tmp_path):
    metrics = _metrics()
    paths = write_report(tmp_path / "report", metrics, labels=LABELS, seed=7, config=CONFIG)
    out = tmp_path / "report"
    assert {p.name for p in out.iterdir()} == FILES  # and no temporary files left behind
    assert {p.name for p in paths.values()} == FILES

    record = _strict_json(out / "metrics.json")
    assert record["protocol"] == "speaker-kfold"
    assert record["ua_mean"] == pytest.approx(metrics["ua_mean"])
    assert record["folds"][1]["test_speakers"] == ["08"]
    assert record["confusion"] == metrics["confusion"]
    assert record["seed"] == 7 and record["labels"] == LABELS
    assert list(record) == sorted(record)  # stable key order

    with open(out / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["label"] for r in rows] == LABELS
    assert list(rows[0]) == ["label", "precision", "recall", "f1", "support"]
    assert [int(r["support"]) for r in rows] == [r["support"] for r in metrics["per_class"]]
    assert float(rows[0]["recall"]) == pytest.approx(metrics["per_class"][0]["recall"], abs=1e-6)

    width, height = _read_png_size(out / "confusion.png")
    assert width > 100 and height > 100

    summary = (out / "summary.md").read_text()
    assert "speaker-kfold" in summary
    assert "no speaker in both train and test" in summary
    assert "Seed: 7" in summary
    assert "cnn2d" in summary and "logmel" in summary
    ua = f"{100 * metrics['ua_mean']:.1f} ± {100 * metrics['ua_std']:.1f}"
    assert f"UA {ua} %" in summary
    assert "| fold1 |" in summary and "| 09 |" in summary  # per-fold table with test speaker
    assert "| sad |" in summary  # per-class table lists every label
    assert "(confusion.png)" in summary
    assert "Noisy" not in summary


def test_random_kfold_is_flagged_optimistic(tmp_path):
    write_report(tmp_path, _metrics("random-kfold"), labels=LABELS, seed=0, config={})
    summary = (tmp_path / "summary.md").read_text()
    assert "random-kfold" in summary and "optimistic" in summary


def test_every_protocol_has_a_meaning():
    # the cv protocols, plus "held-out" for `ser-ray evaluate` of a saved model and "labelled"
    # for `ser-ray evaluate --labels`
    from ser_ray.learn.splits import PROTOCOLS

    assert set(PROTOCOL_MEANINGS) == {*PROTOCOLS, "held-out", "labelled"}
    assert "optimistic" in describe_protocol("random-kfold")
    with pytest.warns(UserWarning, match="no description"):
        assert "no description" in describe_protocol("made-up")


def test_noisy_section_rendered_when_present(tmp_path):
    noisy = {40: {"ua": 0.61, "wa": 0.63}, 15: {"ua": 0.402, "wa": 0.45},
             20: {"ua_mean": 0.5, "ua_std": 0.02, "wa_mean": 0.55, "wa_std": 0.01}}
    write_report(tmp_path, _metrics(noisy=noisy), labels=LABELS, seed=0, config={})
    summary = (tmp_path / "summary.md").read_text()
    assert "## Noisy test sets" in summary
    lines = [line for line in summary.splitlines() if line.startswith(("| 15 ", "| 20 ", "| 40 "))]
    assert lines == ["| 15 | 40.2 | 45.0 |", "| 20 | 50.0 ± 2.0 | 55.0 ± 1.0 |",
                     "| 40 | 61.0 | 63.0 |"]  # ascending SNR
    assert _strict_json(tmp_path / "metrics.json")["noisy"]["15"]["ua"] == pytest.approx(0.402)


def test_nan_and_numpy_values_become_strict_json(tmp_path):
    metrics = _metrics(extra_score=float("nan"), counts=np.arange(3), best=np.float32(0.5))
    with pytest.warns(UserWarning, match="non-finite"):
        write_report(tmp_path, metrics, labels=LABELS, seed=np.int64(3), config={})
    record = _strict_json(tmp_path / "metrics.json")
    assert record["extra_score"] is None
    assert record["counts"] == [0, 1, 2] and record["best"] == 0.5 and record["seed"] == 3


def test_per_class_derived_from_confusion_when_absent(tmp_path):
    metrics = _metrics()
    expected = metrics.pop("per_class")
    write_report(tmp_path, metrics, labels=LABELS, seed=0, config={})
    with open(tmp_path / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["support"]) for r in rows] == [r["support"] for r in expected]
    assert all(math.isclose(float(r["f1"]), e["f1"], abs_tol=1e-6) for r, e in zip(rows, expected))


@pytest.mark.parametrize("change, match", [
    (lambda m: m.pop("protocol"), r"lacks \['protocol'\]"),
    (lambda m: m.pop("ua_mean"), "aggregate"),
    (lambda m: m.update(confusion=[[1]]), r"labels has 4 entries"),
    (lambda m: m["per_class"].reverse(), "differ from labels"),
])
def test_bad_metrics_rejected_before_writing(tmp_path, change, match):
    metrics = _metrics()
    change(metrics)
    with pytest.raises(ValueError, match=match):
        write_report(tmp_path / "out", metrics, labels=LABELS, seed=0, config={})
    assert not (tmp_path / "out").exists()


def test_failed_rewrite_keeps_previous_report_and_leaves_no_temp_files(tmp_path, monkeypatch):
    write_report(tmp_path, _metrics(), labels=LABELS, seed=1, config={})
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def broken_plot(*args, **kwargs):
        raise RuntimeError("plot failed")

    monkeypatch.setattr(report, "plot_confusion", broken_plot)
    with pytest.raises(RuntimeError, match="plot failed"):
        write_report(tmp_path, _metrics("loso"), labels=LABELS, seed=2, config={})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before

    calls = []
    real_replace = os.replace

    def failing_replace(src, dst):  # the disk "fills up" at the second file
        calls.append(dst)
        if len(calls) == 2:
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.undo()
    monkeypatch.setattr(os, "replace", failing_replace)  # what every atomic writer renames with
    with pytest.raises(OSError, match="disk full"):
        write_report(tmp_path, _metrics("loso"), labels=LABELS, seed=2, config={})
    assert {p.name for p in tmp_path.iterdir()} == FILES  # no .tmp left over
    # metrics.json is written last, so it still describes the previous, complete report
    assert (tmp_path / "metrics.json").read_bytes() == before["metrics.json"]


def test_meanings_agree_with_split_registry():
    from ser_ray.learn.splits import PROTOCOLS

    assert PROTOCOLS
    for name, spec in PROTOCOLS.items():
        meaning = describe_protocol(name)
        assert ("optimistic" in meaning) == bool(spec.shares_speakers), name
