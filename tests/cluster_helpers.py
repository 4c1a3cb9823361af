"""A real multi-node Ray cluster on this machine, for tests: a head with no CPUs for work and
worker nodes of one CPU each, every node a ``ray start --block`` process group of its own, so a
test can take one node away (SIGKILL to its group) in the middle of a job.

Everything is this run's own: a free port, the run's TMPDIR (tests/conftest.py) for Ray's
session folders, and no ``ray stop`` (which would stop every Ray on the machine).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))
# A dead node is noticed in about a second instead of the default ~30 s.
HEALTH = {"RAY_health_check_initial_delay_ms": "0", "RAY_health_check_period_ms": "300",
          "RAY_health_check_timeout_ms": "300", "RAY_health_check_failure_threshold": "3"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    def __init__(self, log_dir: Path):
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.log_dir = log_dir
        self.env = {**os.environ, **HEALTH, "RAY_AUTH_MODE": "token"}
        self.env.pop("RAY_ADDRESS", None)
        self.nodes: list[subprocess.Popen] = []

    def _start(self, name: str, *args: str) -> subprocess.Popen:
        log = open(self.log_dir / f"{name}.log", "w")
        p = subprocess.Popen([RAY, "start", "--node-ip-address=127.0.0.1", "--block", *args],
                             stdout=log, stderr=subprocess.STDOUT, env=self.env,
                             start_new_session=True)
        self.nodes.append(p)
        return p

    def start(self, workers: int = 2) -> "LocalCluster":
        self._start("head", "--head", f"--port={self.port}", "--num-cpus=0",
                    "--include-dashboard=false", "--disable-usage-stats")
        for _ in range(workers):
            self.add_worker()
        return self

    def add_worker(self) -> subprocess.Popen:
        live = self.cpus()
        p = self._start(f"worker-{len(self.nodes)}", f"--address={self.address}", "--num-cpus=1")
        self.wait_for_cpus(live + 1)
        return p

    def job_env(self, **extra: str) -> dict[str, str]:
        """Environment for a ``ser-ray`` process that joins this cluster."""
        return {**self.env, "RAY_ADDRESS": self.address, **extra}

    def cpus(self) -> int:
        """CPUs of the cluster's live nodes, asked by a process of its own (Ray reads its
        token auth mode when it is imported, so this process cannot join the cluster)."""
        code = ("import ray; ray.init(address='%s', _node_ip_address='127.0.0.1', "
                "logging_level='ERROR', log_to_driver=False); "
                "print(int(sum(n['Resources'].get('CPU', 0) for n in ray.nodes() if n['Alive'])))"
                % self.address)
        for _ in range(30):
            r = subprocess.run([sys.executable, "-c", code], env=self.env, capture_output=True,
                               text=True, timeout=120)
            if r.returncode == 0:
                return int(r.stdout.strip().splitlines()[-1])
            time.sleep(1)
        raise RuntimeError(f"cluster at {self.address} does not answer: {r.stderr[-2000:]}")

    def wait_for_cpus(self, n: int, timeout_s: float = 90) -> None:
        deadline = time.time() + timeout_s
        while self.cpus() != n:
            if time.time() > deadline:
                raise RuntimeError(f"cluster at {self.address} never had {n} CPUs")
            time.sleep(0.5)

    def kill_worker(self, p: subprocess.Popen) -> None:
        """Take a worker node away: SIGKILL to its whole process group (raylet, workers)."""
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)

    def stop(self) -> None:
        for p in reversed(self.nodes):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait(timeout=30)
