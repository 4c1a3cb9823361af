"""What a job shows: its own lines and progress on the terminal, Ray's logs in a file."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest


def test_progress_without_a_terminal_prints_plain_lines_with_counts_rate_and_eta(capsys):
    from ser_ray.console import Progress

    bar = Progress("cv", total=4, unit="folds", every_s=0)
    bar.update(1, detail="fold0: UA 0.500")
    time.sleep(0.01)
    bar.update(2, detail="fold1: UA 0.700")
    bar.close()
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # close() does not repeat the last line
    assert lines[0].startswith("[ser-ray] cv: 1/4 folds (") and "ETA" in lines[0]
    assert lines[0].endswith("; fold0: UA 0.500")
    assert lines[1].startswith("[ser-ray] cv: 2/4 folds")
    listing = Progress("prepare", unit="units", every_s=3600, open_total=True)
    listing.update(3, 5, "3 files")  # within every_s: nothing yet
    listing.close()
    out = capsys.readouterr().err
    assert out.count("\n") == 1 and "3/5 units" in out and "ETA" not in out
    Progress("off", total=2, enabled=False).update(1)
    assert capsys.readouterr().err == ""


def test_log_paths_keep_model_folders_clean(tmp_path):
    from ser_ray.console import log_path

    assert log_path(str(tmp_path / "cv"), "cv") == tmp_path / "cv" / "logs" / "cv.log"
    assert log_path(str(tmp_path / "m"), "train") == tmp_path / "m.work" / "logs" / "train.log"
    assert "ser-ray-logs" in str(log_path("s3://bucket/reports", "score"))


@pytest.mark.slow
def test_a_job_is_quiet_unless_verbose(learn_corpus, tmp_path):
    def run(out, *extra):
        cmd = [sys.executable, "-m", "ser_ray.cli", "cv", "--features",
               str(learn_corpus["prepared"]), "--feature-set", "handcrafted94",
               "--model", "logreg", "--folds", "2", "--output", str(out), *extra]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=600)

    quiet = run(tmp_path / "quiet")
    assert quiet.returncode == 0, quiet.stderr
    lines = [line for line in quiet.stderr.splitlines() if line.strip()]
    assert lines and all(line.startswith("[ser-ray") for line in lines), quiet.stderr
    assert len(lines) <= 8
    log = (tmp_path / "quiet" / "logs" / "cv.log").read_text()
    assert "Started a local Ray instance" in log  # Ray's own line went to the file
    assert '"ua_mean"' in quiet.stdout  # the result stays on stdout
    loud = run(tmp_path / "loud", "--verbose")
    assert loud.returncode == 0 and "Started a local Ray instance" in loud.stderr
    assert not (tmp_path / "loud" / "logs").exists()
