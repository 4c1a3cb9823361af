"""``ray job submit`` of jobs/prepare.py against a real Ray head started with the ``ray`` CLI.

The head is private to this test, so that it cannot disturb (or be disturbed by) other Ray
instances on the machine:

- every fixed default port (GCS 6379, dashboard 8265, dashboard agent 52365, Ray client 10001) is
  replaced by a free one, and ``--temp-dir`` is a fresh folder (``ray_current_cluster`` and the
  session live there, not in /tmp/ray);
- token auth (on by default in Ray 2.60) uses a token generated here and passed as
  ``RAY_AUTH_TOKEN`` to the head and the CLI, so ``~/.ray/auth_token`` is neither read nor
  written;
- ``ray stop`` is never called: it stops *every* Ray on the machine. The head runs as
  ``ray start --block`` in its own session; teardown signals that process and then kills, by pid,
  every process that descended from it (raylet, GCS, agents, workers, the job driver).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from ser_ray.synth import synthesize_corpus

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
RAY = BIN / "ray"


# --- process bookkeeping (Linux /proc; no psutil in the venv) ---------------------------------

def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])  # comm may hold spaces and parens
        kids.setdefault(ppid, []).append(int(d))
    return kids


def _start_time(pid: int) -> str | None:
    """Start time of a live process (None once it has exited, zombies included)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _descendants(pid: int) -> dict[int, str]:
    """pid -> start time of every live process below ``pid`` (start time guards pid reuse)."""
    kids, out, todo = _children_map(), {}, [pid]
    while todo:
        for child in kids.get(todo.pop(), []):
            st = _start_time(child)
            if st is not None and child not in out:
                out[child] = st
                todo.append(child)
    return out


def _alive(procs: dict[int, str]) -> dict[int, str]:
    return {p: st for p, st in procs.items() if _start_time(p) == st}


class Tracker:
    """Remembers every process ever seen below the head, so none escapes teardown."""

    def __init__(self, head: subprocess.Popen):
        self.head = head
        self.seen: dict[int, str] = {}

    def scan(self) -> None:
        if self.head.poll() is None:
            self.seen.update(_descendants(self.head.pid))

    def stop(self) -> dict[int, str]:
        """Stop the head and everything it started; returns what could not be killed."""
        self.scan()
        if self.head.poll() is None:
            self.head.send_signal(signal.SIGTERM)  # `ray start --block` tears its node down
            try:
                self.head.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.head.kill()
                self.head.wait(timeout=5)
        deadline = time.monotonic() + 10
        while _alive(self.seen) and time.monotonic() < deadline:
            time.sleep(0.25)
        for pid in _alive(self.seen):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.5)
        return _alive(self.seen)


# --- helpers ----------------------------------------------------------------------------------

def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _wait_for_dashboard(url: str, token: str, head: subprocess.Popen, timeout: float) -> None:
    req = urllib.request.Request(f"{url}/api/version",
                                 headers={"Authorization": f"Bearer {token}"})
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if head.poll() is not None:
            raise RuntimeError(f"ray start exited with {head.returncode}")
        try:
            with urllib.request.urlopen(req, timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.5)
    raise TimeoutError(f"dashboard at {url} not up after {timeout} s: {last}")


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return f"({path} unreadable)"


@pytest.fixture(scope="module")
def ray_head():
    """A private Ray head (2 CPUs, dashboard + job server) -> (dashboard URL, env for the CLI)."""
    if not RAY.exists():
        pytest.skip(f"{RAY} not found")
    if not Path("/proc/self/stat").exists():
        pytest.skip("needs Linux /proc to track and stop the head's processes")
    temp_dir = Path(tempfile.mkdtemp(prefix="serray-", dir="/tmp"))  # short: socket paths
    gcs, dash, agent, client = _free_ports(4)
    token = secrets.token_hex(32)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH_TOKEN"))}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=token, RAY_USAGE_STATS_ENABLED="0",
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM: stop now, no 30 s drain
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")  # `python` = this venv's, as
    # in an activated venv: the job's entry point is run by a shell with the raylet's PATH
    log = temp_dir / "ray-start.log"
    cmd = [str(RAY), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
           "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
           "--dashboard-agent-listen-port", str(agent), "--ray-client-server-port", str(client),
           "--include-dashboard", "true", "--num-cpus", "2",
           "--object-store-memory", str(256 * 2**20), "--temp-dir", str(temp_dir),
           "--disable-usage-stats"]
    with open(log, "wb") as out:
        head = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    tracker = Tracker(head)
    url = f"http://127.0.0.1:{dash}"
    try:
        try:
            _wait_for_dashboard(url, token, head, timeout=60)
        except Exception as exc:
            pytest.fail(f"Ray head did not start: {exc}\n{_tail(log)}")
        tracker.scan()
        yield {"url": url, "env": env, "tracker": tracker, "gcs_port": gcs}
    finally:
        left = tracker.stop()
        if not left:
            shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"processes of the test's Ray head survived teardown: {sorted(left)}"


def _submit(ray_head, args: list[str], submission_id: str, timeout: float = 120,
            job: str = "jobs/prepare.py"):
    cmd = [str(RAY), "job", "submit", "--address", ray_head["url"], "--working-dir", str(REPO),
           "--submission-id", submission_id, "--", "python", job, *args]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=ray_head["env"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL)
    try:
        # poll instead of communicate(timeout) so the tracker sees the job's driver and workers
        deadline = t0 + timeout
        while proc.poll() is None and time.monotonic() < deadline:
            ray_head["tracker"].scan()
            time.sleep(1)
        if proc.poll() is None:
            proc.kill()
            pytest.fail(f"ray job submit still running after {timeout} s:\n"
                        f"{proc.communicate()[0][-4000:]}")
        out = proc.communicate()[0]
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, out, time.monotonic() - t0


def test_prepare_job_via_ray_job_submit(ray_head, tmp_path):
    corpus, out = tmp_path / "emodb", tmp_path / "prepared"
    rows = synthesize_corpus("emodb", corpus, n_speakers=2, per_emotion=1)
    (corpus / "wav" / "16a01Wa.wav").write_bytes(b"")  # a valid EmoDB name with 0 bytes
    empty_uri = str(corpus / "wav" / "16a01Wa.wav")
    n_audio = len(rows) + 1
    assert len(rows) >= 7  # 2 speakers x 7 emotions

    sid = f"serray-test-{secrets.token_hex(4)}"
    rc, log, seconds = _submit(ray_head, ["--input", str(corpus), "--features", "mfcc",
                                          "--output", str(out), "--no-progress",
                                          "--set", "files_per_task=5"],  # 3 units, 2 actors
                               submission_id=sid)
    assert rc == 0, f"ray job submit exited {rc} after {seconds:.1f} s:\n{log[-6000:]}"
    assert f"Job '{sid}' succeeded" in log, log[-6000:]

    summary = json.loads((out / "summary.json").read_text())
    manifest = pq.read_table(out / "manifest")
    quarantine = pq.read_table(out / "quarantine")
    features = pq.read_table(out / "features" / "mfcc")

    assert summary["input_files"] == n_audio
    assert summary["ok"] == manifest.num_rows == len(rows)
    assert summary["quarantined"] == quarantine.num_rows == 1
    assert summary["ok"] + summary["quarantined"] == summary["input_files"]
    assert summary["quarantine_reasons"] == {"empty": 1}
    q = quarantine.to_pylist()[0]
    assert q["uri"] == empty_uri and q["reason"] == "empty"

    # what was written is the corpus: every synthetic file once, with its speaker and emotion
    written = {Path(u).relative_to(corpus).as_posix() for u in manifest.column("uri").to_pylist()}
    assert written == {r["path"] for r in rows}
    assert summary["speakers"] == 2 and summary["corpora"] == ["emodb"]
    assert sum(summary["labels"].values()) == len(rows)
    assert features.num_rows == len(rows)  # mfcc: one (time, coeffs) array per utterance
    assert set(features.column("utterance_id").to_pylist()) == set(
        manifest.column("utterance_id").to_pylist())
    assert summary["config"]["inputs"] == [str(corpus)]
    assert (out / "config.yaml").exists() and (out / "label_map.json").exists()
    assert summary["units"] == 3 and summary["config"]["files_per_task"] == 5
    assert len(list((out / "manifest").glob("part-*.parquet"))) == 3
    # the driver joined the cluster it was submitted to (RAY_ADDRESS), not a local Ray of its own
    # A quiet job: Ray's own lines are in the output folder's log, ser-ray's in the job's.
    ray_log = (out / "logs" / "prepare.log").read_text()
    assert "Connecting to existing Ray cluster" in ray_log, ray_log[-6000:]
    assert f":{ray_head['gcs_port']}" in ray_log, ray_log[-6000:]
    assert "Connecting to existing Ray cluster" not in log and "[ser-ray prepare] done" in log


def test_train_and_evaluate_jobs_via_ray_job_submit(ray_head, tmp_path):
    corpus, prepared = tmp_path / "emodb", tmp_path / "prepared"
    synthesize_corpus("emodb", corpus, n_speakers=3, per_emotion=1, seed=2)
    rc, log, _ = _submit(ray_head, ["--input", str(corpus), "--features", "handcrafted94",
                                    "--output", str(prepared), "--no-progress"],
                         submission_id=f"serray-prep-{secrets.token_hex(4)}")
    assert rc == 0, log[-4000:]
    model, report = tmp_path / "model", tmp_path / "report"
    rc, log, _ = _submit(ray_head, ["--features", str(prepared), "--feature-set",
                                    "handcrafted94", "--model", "logreg", "--output", str(model)],
                         submission_id=f"serray-train-{secrets.token_hex(4)}", job="jobs/train.py")
    assert rc == 0, log[-4000:]
    assert json.loads((model / "labels.json").read_text())  # the model's label map
    rc, log, _ = _submit(ray_head, ["--model", str(model), "--features", str(prepared),
                                    "--output", str(report)],
                         submission_id=f"serray-eval-{secrets.token_hex(4)}", job="jobs/evaluate.py")
    assert rc == 0, log[-4000:]
    metrics = json.loads((report / "metrics.json").read_text())
    assert metrics["protocol"] == "held-out" and metrics["folds"][0]["n_test"] == 21
    assert metrics["shares_speakers"] is True  # evaluated on its own training speakers: flagged


def test_score_backlog_job_via_ray_job_submit(ray_head, score_model, tmp_path):
    from ser_ray.score import read_calls
    from ser_ray.synth import synthesize_backlog

    folder, out = tmp_path / "incoming", tmp_path / "reports"
    truth = synthesize_backlog(folder, n_calls=2, seed=8, minutes=(0.5, 0.6), bad=True)
    rc, log, _ = _submit(ray_head, ["--model", str(score_model), "--input", str(folder), "--output", str(out),
                                    "--run-date", "2026-11-22", "--customer-channel", "right",
                                    "--metadata", str(tmp_path / "incoming-metadata.csv"), "--no-progress"],
                         submission_id=f"serray-score-{secrets.token_hex(4)}", job="jobs/score_backlog.py",
                         timeout=300)
    assert rc == 0, log[-4000:]
    ray_log = (out / "logs" / "score.log").read_text()
    assert "Connecting to existing Ray cluster" in ray_log, ray_log[-6000:]
    calls = read_calls(out)
    assert sorted(calls["call_id"]) == sorted(truth["call_id"])
    assert (calls.loc[calls["status"] == "scored", "call_id"].isin(truth.loc[truth["negative"].notna(), "call_id"])).all()
    assert calls["agent"].notna().all()  # metadata joined
    assert "most urgent calls:" in log
