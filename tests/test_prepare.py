"""End to end: the prepare job on a real local Ray over corpora seeded with real-world faults."""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from prepare_helpers import REPO, assert_same, config, make_corpus, make_shards, tables
from ser_ray.cli import main as cli_main
from ser_ray.features.arrays import column_to_numpy
from ser_ray.storage import Storage
from ser_ray.prepare import CONFIG_STAMP, iter_units, plan_inputs, run_prepare

EMODB = REPO.parent / "shared" / "data" / "emodb"


def unit_markers(out: Path) -> list[Path]:
    return sorted(p for p in (out / "_units").glob("*.json") if p.stem != CONFIG_STAMP)


pytestmark = pytest.mark.usefixtures("ray_session")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("ravdess")
    return root, make_corpus(root)


@pytest.fixture(scope="module")
def clean_run(corpus, tmp_path_factory):
    root, _ = corpus
    out = tmp_path_factory.mktemp("clean")
    summary = run_prepare(config(inputs=[str(root)], output=str(out)), progress=False)
    return out, summary


def test_every_file_is_accounted_for_with_its_reason(corpus, clean_run):
    root, expect = corpus
    out, summary = clean_run
    assert summary["ok"] == len(expect["good"])
    assert summary["quarantined"] == len(expect["bad"])
    assert summary["ok"] + summary["quarantined"] == summary["input_files"]
    quarantine = {Path(r["uri"]).relative_to(root).as_posix(): r["reason"]
                  for r in pq.read_table(out / "quarantine").to_pylist()}
    assert quarantine == expect["bad"]
    skipped = {Path(r["uri"]).relative_to(root).as_posix(): r["reason"]
               for r in pq.read_table(out / "skipped").to_pylist()}
    assert skipped == expect["skipped"]
    from collections import Counter
    assert summary["quarantine_reasons"] == dict(Counter(expect["bad"].values()))


def test_manifest_rows_carry_speaker_label_and_quirks(corpus, clean_run):
    root, expect = corpus
    out, summary = clean_run
    rows = {Path(r["uri"]).relative_to(root).as_posix(): r
            for r in pq.read_table(out / "manifest").to_pylist()}
    assert set(rows) == set(expect["good"])
    for rel, want in expect["good"].items():
        row = rows[rel]
        for key in ("speaker", "sex", "label", "channels", "format", "sample_rate"):
            if key in want:
                assert row[key] == want[key], (rel, key)
        assert row["utterance_id"] == "ravdess/" + rel[:-4]
        assert row["duration_s"] > 0.5
    assert rows["Actor_01/03-02-05-02-02-02-01.wav"]["extra"].count("song") == 1
    assert summary["speakers"] == 2
    assert summary["labels"] == dict(sorted({l: sum(w["label"] == l for w in expect["good"].values())
                                             for l in {w["label"] for w in expect["good"].values()}
                                             }.items()))
    for name in ("config.yaml", "label_map.json", "summary.json"):
        assert (out / name).exists()
    assert summary["versions"]["ray"].startswith("2.")
    assert summary["config"]["inputs"] == [str(root)]


def test_duplicates_are_reported(clean_run):
    out, summary = clean_run
    dups = pq.read_table(out / "duplicates.parquet").to_pylist()
    assert summary["duplicates"]["groups"] == 1 and len(dups) == 2
    assert any(d["uri"].endswith("03-01-01-02-02-02-01.wav") for d in dups)


def test_feature_tables_hold_exact_arrays_of_the_right_shape(clean_run):
    out, summary = clean_run
    mfcc = pq.read_table(out / "features" / "mfcc")
    assert mfcc.num_rows == summary["ok"]  # one block per utterance without audio.block_s
    arrays = column_to_numpy(mfcc)
    assert all(a.ndim == 2 and a.shape[1] == 120 and a.dtype == np.float32 for a in arrays)
    stft = pq.read_table(out / "features" / "stft")
    shapes = {tuple(a.shape) for a in column_to_numpy(stft)}
    assert shapes == {(257, 251)}  # 1 s blocks, 16 ms Hamming, 4 ms hop
    assert stft.num_rows > summary["ok"]  # several 1 s blocks per utterance
    blocks = stft.to_pydict()
    assert all(e - s == pytest.approx(1.0) for s, e in zip(blocks["start_s"], blocks["end_s"]))
    # Recompute one array from the audio: the table returns exactly what the extractor gave.
    from ser_ray import audio
    from ser_ray.config import AudioConfig
    from ser_ray.features import get_extractor
    row = pq.read_table(out / "manifest").to_pylist()[0]
    y = audio.condition(audio.decode(Path(row["uri"]).read_bytes()), AudioConfig())
    idx = mfcc.column("utterance_id").to_pylist().index(row["utterance_id"])
    # One BLAS thread, as in a Ray worker: float32 products summed by more threads round differently.
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        expected = get_extractor("mfcc")(y, 16000)
    np.testing.assert_array_equal(arrays[idx], expected)


def test_label_set_drops_are_counted_never_silent(corpus, tmp_path):
    root, expect = corpus
    s = run_prepare(config(inputs=[str(root)], output=str(tmp_path), label_set="ekman7",
                           features=["mfcc"]), progress=False)
    n_neutral = sum(w["label"] == "neutral" for w in expect["good"].values())
    assert s["dropped_labels"] == {"neutral": n_neutral}
    assert s["quarantine_reasons"]["label_outside_set"] == n_neutral
    assert "neutral" not in s["labels"] and s["ok"] == len(expect["good"]) - n_neutral
    assert s["ok"] + s["quarantined"] == s["input_files"]


def test_tar_shards_give_the_same_tables_as_the_folder(corpus, clean_run, tmp_path):
    root, _ = corpus
    shards = make_shards(root, tmp_path / "shards", n=2)
    out = tmp_path / "out"
    s = run_prepare(config(inputs=[str(tmp_path / "shards" / "shard-{000..001}.tar")],
                           output=str(out)), progress=False)
    a, b = tables(clean_run[0]), tables(out)
    # the dangling symlink cannot be packed into a tar: it is the one file missing there
    a["quarantine"] = [q for q in a["quarantine"] if q[1] != "unreadable"]
    assert_same(a, b)
    assert all("#" in r["uri"] for r in pq.read_table(out / "manifest").to_pylist())
    assert len(shards) == 2 and s["units"] == 2


def test_tar_sidecars_supply_labels(corpus, tmp_path):
    root, expect = corpus
    make_shards(root, tmp_path / "shards", n=1, sidecars=True)
    s = run_prepare(config(inputs=[str(tmp_path / "shards" / "shard-000.tar")],
                           output=str(tmp_path / "out"), corpus="auto", features=["mfcc"]),
                    progress=False)
    # auto-detection still recognises the RAVDESS names; sidecars are kept as extra fields
    assert s["corpora"] == ["ravdess"] and s["skip_reasons"]["sidecar"] > 0
    s2 = run_prepare(config(inputs=[str(tmp_path / "shards" / "shard-000.tar")],
                            output=str(tmp_path / "out2"), corpus="sidecar", features=["mfcc"]),
                     progress=False)
    assert set(s2["labels"]) == {"angry"} and s2["speakers"] == 1


def test_manifest_input(corpus, tmp_path):
    root, expect = corpus
    good = sorted(expect["good"])[:6]
    lines = ["path,label,speaker,session"] + [
        f"{root / rel},{expect['good'][rel]['label'].upper()},{i % 2:02d},s{i}"
        for i, rel in enumerate(good)]
    (tmp_path / "labels.csv").write_text("\n".join(lines) + "\n")
    s = run_prepare(config(inputs=[str(tmp_path / "labels.csv")], output=str(tmp_path / "o"),
                           corpus="auto", features=["mfcc"]), progress=False)
    assert s["ok"] == 6 and s["corpora"] == ["manifest"]
    rows = pq.read_table(tmp_path / "o" / "manifest").to_pylist()
    assert {r["speaker"] for r in rows} == {"manifest:00", "manifest:01"}
    assert all(json.loads(r["extra"])["session"].startswith("s") for r in rows)


def test_rerun_resumes_without_redoing_work(corpus, clean_run, tmp_path):
    root, _ = corpus
    cfg = config(inputs=[str(root)], output=str(tmp_path))
    first = run_prepare(cfg, progress=False)
    markers = unit_markers(tmp_path)
    for m in markers[: len(markers) // 2]:  # as if the run died before these units finished
        m.unlink()
        (tmp_path / "manifest" / f"part-{m.stem}.parquet").unlink()
    second = run_prepare(cfg, progress=False)
    assert second["resumed_units"] == first["units"] - len(markers) // 2
    assert_same(tables(clean_run[0]), tables(tmp_path))
    third = run_prepare(cfg, progress=False)
    assert third["resumed_units"] == third["units"]
    # a different config must not be mixed into this output
    with pytest.raises(ValueError, match="different config"):
        run_prepare(config(inputs=[str(root)], output=str(tmp_path), features=["logmel"]),
                    progress=False)


def test_killed_run_resumes_to_the_same_result(corpus, clean_run, tmp_path):
    """SIGKILL a real `ser-ray prepare` process group mid-run, rerun, compare with a clean run."""
    root, _ = corpus
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "ser_ray.cli", "prepare", "--input", str(root), "--corpus",
           "ravdess", "--features", "mfcc,stft", "--output", str(out), "--no-progress",
           "--set", "files_per_task=1", "--num-workers", "1"]  # one file per unit: many units
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ, "RAY_ADDRESS": ""})
    deadline = time.time() + 120
    while time.time() < deadline and len(unit_markers(out)) < 3:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = len(unit_markers(out))
    assert 3 <= done_before, "the run should have finished a few units before the kill"
    s = run_prepare(config(inputs=[str(root)], output=str(out), files_per_task=1),
                    progress=False)
    assert s["resumed_units"] >= done_before and s["resumed_units"] < s["units"]
    assert_same(tables(clean_run[0]), tables(out))


class _EndlessPrefix(Storage):
    """A prefix too large to list: a few top-level files, then sub-folders without end."""

    def walk(self, uri):
        yield from (f"{uri}/top-{i}.wav" for i in range(3))
        for d in itertools.count():
            yield from (f"{uri}/d{d:09d}/f{i}.wav" for i in range(5))


def test_units_are_cut_lazily_per_top_level_folder():
    source = {"kind": "walk", "root": "s3://b/p", "uri": "s3://b/p", "corpus": "ravdess"}
    units = list(itertools.islice(iter_units(source, _EndlessPrefix(), 2), 12))
    assert units[0]["relpaths"] == ["top-0.wav", "top-1.wav"]  # top-2 waits for a partner
    assert [u["relpaths"] for u in units[1:4]] == [  # a chunk never spans two folders
        ["d000000000/f0.wav", "d000000000/f1.wav"], ["d000000000/f2.wav", "d000000000/f3.wav"],
        ["d000000000/f4.wav"]]
    assert len({u["unit_id"] for u in units}) == 12
    again = list(itertools.islice(iter_units(source, _EndlessPrefix(), 2), 12))
    assert [u["unit_id"] for u in again] == [u["unit_id"] for u in units]  # resumable ids


def test_a_folder_unit_holds_one_top_level_folder_or_top_level_files(corpus):
    root, _ = corpus
    cfg = config(inputs=[str(root)], output="unused")
    st = Storage()
    units = [u for s in plan_inputs(cfg, st) for u in iter_units(s, st, cfg.files_per_task)]
    groups = [{r.split("/")[0] if "/" in r else "" for r in u["relpaths"]} for u in units]
    assert all(len(g) == 1 for g in groups)
    assert {g.pop() for g in groups} == {"", "Actor_01", "Actor_02"}


def test_progress_lines_on_stderr(corpus, tmp_path, capfd):
    root, _ = corpus
    s = run_prepare(config(inputs=[str(root / "Actor_02")], output=str(tmp_path),
                           features=["mfcc"], files_per_task=2), progress=True)
    err = capfd.readouterr().err
    last = [ln for ln in err.splitlines() if ln.startswith("[ser-ray] prepare: ")][-1]
    assert last.startswith(f"[ser-ray] prepare: {s['units']}/{s['units']} units (")
    assert f"; {s['input_files'] + s['skipped']} files (" in last and "audio s/s" in last


def test_cli_exit_codes(corpus, tmp_path):
    root, _ = corpus
    args = ["prepare", "--input", str(root / "Actor_02"), "--corpus", "ravdess", "--features",
            "mfcc", "--no-progress"]
    assert cli_main(args + ["--output", str(tmp_path / "a")]) == 0
    assert cli_main(args + ["--output", str(tmp_path / "b"), "--strict"]) == 3
    only_bad = tmp_path / "bad"
    only_bad.mkdir()
    (only_bad / "03-01-01-01-01-01-01.wav").write_bytes(b"")
    assert cli_main(["prepare", "--input", str(only_bad), "--corpus", "ravdess", "--output",
                     str(tmp_path / "c"), "--no-progress"]) == 1
    assert cli_main(["prepare", "--input", str(tmp_path / "nowhere"), "--output",
                     str(tmp_path / "d")]) == 2
    assert cli_main(["prepare", "--input", str(root), "--features", "mfcc,nope", "--output",
                     str(tmp_path / "e")]) == 2


@pytest.mark.skipif(not EMODB.exists(), reason="../shared/data/emodb not present")
def test_real_emodb(tmp_path):
    s = run_prepare(config(inputs=[str(EMODB)], output=str(tmp_path), corpus="auto",
                           features=["mfcc"], files_per_task=64), progress=False)
    assert s["corpora"] == ["emodb"]
    assert s["ok"] == 535 and s["quarantined"] == 0 and s["speakers"] == 10
    assert s["labels"] == {"angry": 127, "boredom": 81, "disgust": 46, "fearful": 69,
                           "happy": 71, "neutral": 79, "sad": 62}
    rows = pq.read_table(tmp_path / "manifest").to_pylist()
    sexes = {r["speaker"]: r["sex"] for r in rows}
    assert sexes["emodb:03"] == "male" and sexes["emodb:08"] == "female"


@pytest.mark.parametrize("layout", ["tess", "iemocap", "cremad", "savee", "emodb"])
def test_every_corpus_layout_is_detected_and_labelled(layout, tmp_path):
    """Each layout as distributed (TESS nested as a Kaggle re-upload) -> right speakers/labels."""
    from collections import Counter

    from ser_ray.cli import main as cli
    root = tmp_path / "corpus"
    if layout == "tess":
        root = root / "TESS Toronto emotional speech set data"
    assert cli(["synth", "--layout", layout, "--output", str(root), "--per-emotion", "1",
                "--seed", "1"]) == 0
    from ser_ray.synth import synthesize_corpus
    rows = synthesize_corpus(layout, tmp_path / "again", per_emotion=1, seed=1)
    if layout == "tess":  # the real corpus has one OA_ file among the OAF_ ones
        first = root / rows[0]["path"]
        first.rename(first.with_name(first.name.replace("OAF_", "OA_", 1)))
    s = run_prepare(config(inputs=[str(tmp_path / "corpus")], output=str(tmp_path / "out"),
                           corpus="auto", features=["mfcc"]), progress=False)
    assert s["corpora"] == [layout]
    assert s["ok"] == len(rows) and s["quarantined"] == 0
    assert s["speakers"] == len({r["speaker"] for r in rows})
    assert s["labels"] == dict(sorted(Counter(r["emotion"] for r in rows).items()))
    manifest = pq.read_table(tmp_path / "out" / "manifest").to_pylist()
    by_speaker = {r["speaker"]: r["sex"] for r in manifest}
    assert by_speaker == {r["speaker"]: r["sex"] for r in rows}
    if layout in ("iemocap", "cremad"):  # label files / demographics are not inputs
        assert s["skip_reasons"].get("corpus_metadata", 0) > 0
