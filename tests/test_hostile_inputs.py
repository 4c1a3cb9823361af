"""prepare against inputs made to hang, explode or mislead it (docs/guide.md, "Guarantees"):
every entry of an input gets exactly one row, with an honest reason, and the job finishes."""

from __future__ import annotations

import io as _io
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from cli_helpers import ser_ray_cli
from prepare_helpers import config
from ser_ray.prepare import run_prepare
from ser_ray.synth import synthesize_corpus

pytestmark = pytest.mark.usefixtures("ray_session")


def _rows(out: Path) -> dict[str, tuple[str, str]]:
    """relative uri -> (table, reason) over manifest, quarantine and skipped."""
    got = {}
    for table in ("manifest", "quarantine", "skipped"):
        for r in pq.read_table(out / table).to_pylist():
            got.setdefault(r["uri"], []).append((table, r.get("reason")))
    return got


def _bomb() -> bytes:
    buf = _io.BytesIO()  # 8 channels x 96 kHz x 10 s of silence: ~10 KB, 29 MB decoded
    sf.write(buf, np.zeros((960_000, 8), np.int16), 96000, format="FLAC")
    return buf.getvalue()


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    corpus = root / "corpus"
    rows = synthesize_corpus("ravdess", corpus, n_speakers=1, per_emotion=1, seed=2,
                             emotions=["neutral", "angry"])
    a = corpus / "Actor_01"
    os.mkfifo(a / "03-01-05-01-01-02-01.wav")               # blocks a plain open() forever
    os.symlink("..", a / "loop")                             # lists the corpus again, and again
    os.symlink("/", a / "host")                              # walks the host
    os.symlink(root / "outside.wav", a / "03-01-05-01-02-02-01.wav")
    (root / "outside.wav").write_bytes((corpus / rows[0]["path"]).read_bytes())
    (a / "03-01-04-01-01-01-01.wav").write_bytes(_bomb())   # FLAC bytes under a .wav name
    expect = {str(corpus / r["path"]): ("manifest", None) for r in rows}
    expect.update({str(a / "03-01-05-01-01-02-01.wav"): ("quarantine", "not_a_file"),
                   str(a / "loop"): ("quarantine", "not_a_file"),
                   str(a / "host"): ("quarantine", "outside_root"),
                   str(a / "03-01-05-01-02-02-01.wav"): ("quarantine", "outside_root"),
                   str(a / "03-01-04-01-01-01-01.wav"): ("quarantine", "too_large")})
    return {"root": root, "corpus": corpus, "rows": rows, "expect": expect}


def test_a_hostile_folder_finishes_with_one_honest_row_per_entry(hostile, tmp_path):
    out = tmp_path / "out"
    s = run_prepare(config(inputs=[str(hostile["corpus"])], output=str(out), features=["mfcc"],
                           audio={"sample_rate": 16000, "max_decoded_mb": 8}), progress=False)
    got = _rows(out)
    assert {u: v[0] for u, v in got.items()} == hostile["expect"]  # each entry once: no loop
    assert s["input_files"] + s["skipped"] == len(hostile["expect"])
    detail = {r["uri"]: r["detail"] for r in pq.read_table(out / "quarantine").to_pylist()}
    assert "FIFO" in detail[str(hostile["corpus"] / "Actor_01" / "03-01-05-01-01-02-01.wav")]
    assert all(" at 0x" not in d for d in detail.values())


def test_hostile_tar_members_and_manifest_rows_get_their_reasons(hostile, tmp_path):
    corpus, rows = hostile["corpus"], hostile["rows"]
    good = [r["path"] for r in rows]
    shard = tmp_path / "shard.tar"
    with tarfile.open(shard, "w") as tf:
        for rel in good:
            tf.add(corpus / rel, arcname=rel)
        for name, kind, target in (("Actor_01/03-01-03-01-01-01-01.wav", tarfile.SYMTYPE, good[0]),
                                   ("Actor_01/03-01-03-01-02-01-01.wav", tarfile.LNKTYPE, good[0]),
                                   ("../03-01-05-02-01-01-01.wav", tarfile.REGTYPE, "")):
            ti = tarfile.TarInfo(name)
            ti.type, ti.linkname = kind, target
            data = (corpus / good[0]).read_bytes() if kind == tarfile.REGTYPE else b""
            ti.size = len(data)
            tf.addfile(ti, _io.BytesIO(data) if data else None)
        tf.add(corpus / good[1], arcname=good[1])  # the same name twice
    out = tmp_path / "tar"
    run_prepare(config(inputs=[str(shard)], output=str(out), features=["mfcc"]), progress=False)
    reasons = sorted(r for v in _rows(out).values() for t, r in v if t == "quarantine")
    assert reasons == ["duplicate", "link", "link", "outside_root"]
    assert len(pq.read_table(out / "manifest")) == len(good)

    manifest = tmp_path / "labels.csv"
    lines = (["path,label,speaker"] + [f"{corpus / good[0]},angry,1"] * 2
             + [f"{corpus / good[1]},sad,1"])
    manifest.write_text("\n".join(lines) + "\n")
    out = tmp_path / "manifest"
    run_prepare(config(inputs=[str(manifest)], output=str(out), corpus="auto", features=["mfcc"]),
                progress=False)
    q = pq.read_table(out / "quarantine").to_pylist()
    assert [r["reason"] for r in q] == ["duplicate"] and "data row 1" in q[0]["detail"]
    assert len(pq.read_table(out / "manifest")) == 2


def test_a_typo_in_input_does_not_stamp_the_output(hostile, tmp_path):
    out = tmp_path / "out"
    args = ["prepare", "--corpus", "ravdess", "--features", "mfcc", "--output", str(out),
            "--no-progress"]
    r = ser_ray_cli(*args, "--input", str(hostile["root"] / "corpus-typo"), check=False)
    assert r.returncode == 2 and "no such file" in r.stderr
    assert not (out / "_units").exists()
    r = ser_ray_cli(*args, "--input", str(hostile["corpus"]), check=False)
    assert "different config" not in r.stderr and (out / "summary.json").exists()


@pytest.mark.parametrize("setting, message", [
    ("audio.sample_rate=0", "sample_rate=0"), ("audio.block_s=-1", "block_s=-1"),
    ("cpus_per_worker=0", "cpus_per_worker=0"), ("files_per_task=0", "files_per_task=0"),
    ("feature_options.mfcc.n_mfcc=0", "n_mfcc=0")])
def test_out_of_range_settings_fail_before_any_work(hostile, tmp_path, setting, message):
    r = ser_ray_cli("prepare", "--input", str(hostile["corpus"]), "--corpus", "ravdess",
                    "--features", "mfcc", "--output", str(tmp_path / "o"), "--set", setting,
                    check=False)
    assert r.returncode == 2 and message in r.stderr and "must be" in r.stderr, r.stderr[-800:]
    assert not (tmp_path / "o" / "_units").exists()
