"""Builders shared by the prepare tests: a synthetic corpus seeded with real-world breakage."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import soundfile as sf

from ser_ray.config import PrepareConfig, from_dict
from ser_ray.features.arrays import column_to_numpy
from ser_ray.synth import synthesize_corpus

REPO = Path(__file__).resolve().parent.parent


def make_corpus(root: Path) -> dict:
    """A small RAVDESS-layout corpus with every quirk and fault prepare must survive.

    Returns ``{"good": {relpath: expectations}, "bad": {relpath: reason}, "skipped": {...}}``.
    """
    rows = synthesize_corpus("ravdess", root, n_speakers=2, per_emotion=1, seed=3,
                             emotions=["neutral", "happy", "sad", "angry"])
    good = {r["path"]: {"speaker": r["speaker"], "sex": r["sex"], "label": r["emotion"]}
            for r in rows}
    a1 = root / "Actor_01"
    y, sr = sf.read(root / rows[0]["path"], dtype="float32")
    # Quirks of real distributions: stereo, AIFF under .wav, a 96 kHz file, a song, a duplicate.
    sf.write(a1 / "03-01-03-02-01-02-01.wav", np.stack([y, 0.5 * y], 1), sr)
    sf.write(a1 / "03-01-04-02-01-02-01.wav", y, sr, format="AIFF")
    import soxr
    sf.write(a1 / "03-01-05-02-01-02-01.wav", soxr.resample(y, sr, 96000), 96000)
    sf.write(a1 / "03-02-05-02-02-02-01.wav", 0.9 * y, sr)  # vocal channel 02 = song
    shutil.copy(root / rows[0]["path"], a1 / "03-01-01-02-02-02-01.wav")  # exact duplicate
    base = dict(speaker="ravdess:01", sex="male")
    good.update({
        "Actor_01/03-01-03-02-01-02-01.wav": {**base, "label": "happy", "channels": 2},
        "Actor_01/03-01-04-02-01-02-01.wav": {**base, "label": "sad", "format": "aiff"},
        "Actor_01/03-01-05-02-01-02-01.wav": {**base, "label": "angry", "sample_rate": 96000},
        "Actor_01/03-02-05-02-02-02-01.wav": {**base, "label": "angry"},
        "Actor_01/03-01-01-02-02-02-01.wav": {**base, "label": "neutral"},
    })
    # Faults: each must land in quarantine with its reason.
    wav = (root / rows[0]["path"]).read_bytes()
    a2 = root / "Actor_02"
    bad = {
        "Actor_02/03-01-01-01-02-02-02.wav": ("empty", b""),
        "Actor_02/03-01-03-01-02-02-02.wav": ("decode_error", wav[: len(wav) // 2]),
        "Actor_02/03-01-04-01-02-02-02.wav": ("not_audio", b"<html>not audio</html>" * 10),
        "Actor_02/notes-from-the-lab.wav": ("unrecognised_name", wav),
    }
    for rel, (_, data) in bad.items():
        (root / rel).write_bytes(data)
    sf.write(a2 / "03-01-05-01-02-02-02.wav", np.full(8000, np.nan, np.float32), 16000,
             subtype="FLOAT")
    sf.write(a2 / "03-01-05-01-02-01-02.wav", np.zeros(400, np.float32), 16000)
    os.symlink(a2 / "does-not-exist.wav", a2 / "03-01-05-01-01-02-02.wav")  # unreadable
    bad = {rel: reason for rel, (reason, _) in bad.items()}
    bad.update({"Actor_02/03-01-05-01-02-02-02.wav": "bad_samples",
                "Actor_02/03-01-05-01-02-01-02.wav": "too_short",
                "Actor_02/03-01-05-01-01-02-02.wav": "unreadable"})
    (root / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (root / "README.txt").write_text("RAVDESS, synthetic copy\n")
    skipped = {".DS_Store": "hidden", "README.txt": "corpus_metadata"}
    return {"good": good, "bad": bad, "skipped": skipped}


def make_shards(root: Path, out: Path, n: int = 2, sidecars: bool = False) -> list[Path]:
    """Pack a folder into ``n`` tar shards whose member names are paths relative to ``root``."""
    files = sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())
    out.mkdir(parents=True, exist_ok=True)
    shards = [out / f"shard-{i:03d}.tar" for i in range(n)]
    for i, shard in enumerate(shards):
        with tarfile.open(shard, "w") as tf:
            for p in files[i::n]:
                rel = p.relative_to(root).as_posix()
                if p.is_symlink() and not p.exists():
                    continue  # tar cannot hold a dangling link as a file
                tf.add(p, arcname=rel)
                if sidecars and p.suffix == ".wav":
                    meta = json.dumps({"label": "angry", "speaker": "s1"}).encode()
                    info = tarfile.TarInfo(rel[:-4] + ".json")
                    info.size = len(meta)
                    import io
                    tf.addfile(info, io.BytesIO(meta))
    return shards


def config(**values) -> PrepareConfig:
    base = {"features": ["mfcc", "stft"], "files_per_task": 4, "corpus": "ravdess",
            "audio": {"sample_rate": 16000}}
    base.update(values)
    return from_dict(PrepareConfig, base)


def tables(out: Path, features=("mfcc", "stft")) -> dict:
    """Output tables in a canonical order, with the source-specific ``uri`` dropped."""
    man = pq.read_table(out / "manifest").sort_by("utterance_id")
    got = {"manifest": man.drop_columns(["uri"]).to_pylist(),
           "quarantine": sorted((r["utterance_id"], r["reason"]) for r in
                                pq.read_table(out / "quarantine").to_pylist())}
    for f in features:
        t = pq.read_table(out / "features" / f).sort_by([("utterance_id", "ascending"),
                                                         ("block_index", "ascending")])
        got[f] = (t.drop_columns(["values", "shape"]).to_pylist(), column_to_numpy(t))
    return got


def assert_same(a: dict, b: dict) -> None:
    assert a["manifest"] == b["manifest"]
    assert a["quarantine"] == b["quarantine"]
    for f in a:
        if f in ("manifest", "quarantine"):
            continue
        assert a[f][0] == b[f][0]
        assert len(a[f][1]) == len(b[f][1])
        for x, y in zip(a[f][1], b[f][1]):
            np.testing.assert_array_equal(x, y)


def fake_prepared(root: Path, tables: list[str]) -> str:
    """A folder shaped like a `ser-ray prepare` output holding empty feature tables ``tables``
    (enough for the feature-set defaults, which only list them)."""
    for t in tables:
        (root / "features" / t).mkdir(parents=True)
    (root / "config.yaml").write_text("audio: {}\n")
    return str(root)


def kill_cli_once_staged(args: list[str], staged: Path, marker: str, n: int, timeout_s: float = 300) -> int:
    """Run ``ser-ray ARGS`` in its own process group, SIGKILL the whole group (driver and its
    Ray) once ``n`` files named ``marker`` are under ``staged``; return how many there were."""
    import signal
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "ser_ray.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + timeout_s
    while time.time() < deadline and len(list(staged.rglob(marker))) < n and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return len(list(staged.rglob(marker)))
