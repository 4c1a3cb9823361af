"""The README's commands, run as written: the tour in order, then the configuration example.

The cluster block's `ray job submit` of jobs/score_backlog.py is run for real by
tests/test_jobs.py; here its arguments are checked against `ser-ray score`'s parser.
"""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PREFIX = ".venv/bin/ser-ray "


def bash_blocks(text: str) -> list[list[str]]:
    """The README's ```bash blocks as lists of commands (continuation lines joined)."""
    blocks = []
    for body in re.findall(r"```bash\n(.*?)```", text, re.S):
        body = body.replace("\\\n", " ")
        blocks.append([" ".join(line.split()) for line in body.splitlines()
                       if line.strip() and not line.lstrip().startswith("#")])
    return blocks


def serray_commands(text: str) -> list[str]:
    return [c for block in bash_blocks(text) for c in block if c.startswith(PREFIX)]


def test_the_readme_is_a_user_guide_of_at_most_300_lines():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_screen = "\n".join(text.splitlines()[:20])
    assert "make demo" in first_screen and "make test" in first_screen
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (ROOT / link).exists(), link


@pytest.mark.slow
def test_every_ser_ray_command_in_the_readme_runs_as_written(tmp_path, monkeypatch, ray_session):
    from ser_ray.cli import main

    text = (ROOT / "README.md").read_text()
    tour = next(b for b in bash_blocks(text) if b and b[0].startswith(PREFIX + "synth"))
    rest = [c for c in serray_commands(text) if c not in tour]
    assert len(tour) >= 8 and rest  # the tour, and the configuration example
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    monkeypatch.chdir(tmp_path)
    for command in tour + rest:
        assert main(shlex.split(command[len(PREFIX):])) == 0, command
    runs = tmp_path / "runs"
    summary = json.loads((runs / "prepared" / "summary.json").read_text())
    assert summary["ok"] == summary["input_files"] > 0
    cv = json.loads((runs / "cv" / "metrics.json").read_text())
    assert cv["protocol"] == "loso" and cv["n_folds"] == 6
    assert (runs / "tune" / "results.csv").read_text().count("\n") == 1 + 3
    assert (runs / "tune" / "best_model" / "model.json").exists()
    assert json.loads((runs / "eval" / "metrics.json").read_text())["shares_speakers"] is True
    from ser_ray.score import read_calls

    calls = read_calls(runs / "scored", "2026-11-22")
    listed = [p for p in (runs / "calls").rglob("*") if p.is_file()
              and p.suffix in (".wav", ".flac", ".mp3", ".ogg")]
    assert len(calls) == len(listed) and calls["urgency_rank"].notna().any()
    assert (calls["status"] == "scored").sum() == 8  # the backlog's 8 good calls
    assert len((runs / "label" / "sheet.csv").read_text().splitlines()) == 1 + 12
    assert (runs / "scored" / "logs" / "score.log").exists()  # quiet: Ray's lines went there
    assert json.loads((runs / "cv-cnn" / "metrics.json").read_text())["trainer"] == "local"
    assert (tmp_path / "mlruns").is_dir() and (runs / "cv-tracked" / "tensorboard").is_dir()


def test_the_cluster_commands_name_jobs_with_arguments_they_accept():
    from ser_ray.cli import build_parser

    text = (ROOT / "README.md").read_text()
    submits = [c for block in bash_blocks(text) for c in block if "ray job submit" in c]
    assert submits
    for command in submits:
        job_args = shlex.split(command.split(" -- ", 1)[1])
        assert job_args[0] == "python" and (ROOT / job_args[1]).exists(), command
        sub = {"score_backlog.py": "score"}.get(Path(job_args[1]).name,
                                                 Path(job_args[1]).stem)
        assert f'main(["{sub}"' in (ROOT / job_args[1]).read_text()
        build_parser().parse_args([sub, *job_args[2:]])  # exits non-zero when it does not
