"""Run ``ser-ray`` commands from tests.

``ser_ray_cli`` runs a command in the test's own process, on the Ray its module started (the
``ray_session`` fixture): the same ``ser_ray.cli.main`` a shell runs, without paying for a new
interpreter, its imports and a new local Ray on every command (about 12 s each on 2 cores).
Tests that need a process of their own (a kill, an exit status of the interpreter, a fresh
environment in every Ray worker) run ``python -m ser_ray.cli`` with subprocess instead.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import traceback


@contextlib.contextmanager
def patched_environ(update: dict[str, str], remove=()):
    """``os.environ`` with ``update`` set and ``remove`` unset for the block, then as it was."""
    saved = {k: os.environ.get(k) for k in (*update, *remove)}
    for k in remove:
        os.environ.pop(k, None)
    os.environ.update(update)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def start_test_ray(cpus: int = 1) -> None:
    """A local Ray on 127.0.0.1 for a test module, of ``cpus`` CPUs (default 1).

    One CPU means one scoring actor or prepare task at a time. Each actor imports and warms up
    the whole scoring stack (seconds of CPU), and on CI's 2 cores, with two xdist workers, the
    suite is CPU-bound, so a second actor per run costs time and covers nothing new. Staged runs
    give their model actors half a CPU beside the read pool's half."""
    import ray

    ray.init(address="local", _node_ip_address="127.0.0.1", num_cpus=cpus,
             include_dashboard=False, log_to_driver=False)


def ser_ray_cli(*args: str, env: dict[str, str] | None = None, check: bool = True,
                needs_ray: bool = True) -> subprocess.CompletedProcess:
    """``ser-ray ARGS`` in this process: its exit status, stdout and stderr, as subprocess
    gives them. ``env`` is set for the command's duration (the local trainer and the driver
    read it; Ray workers started earlier do not). ``check``: assert the status is 0.
    ``needs_ray=False`` for a command that starts no Ray (``synth``)."""
    import ray

    from ser_ray.cli import main

    assert ray.is_initialized() or not needs_ray, "start the module's Ray first (the ray_session fixture)"
    out, err = io.StringIO(), io.StringIO()
    with patched_environ(env or {}), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            rc = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            rc = e.code if isinstance(e.code, int) else 2
        except Exception:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            rc = 1
    r = subprocess.CompletedProcess(["ser-ray", *args], rc, out.getvalue(), err.getvalue())
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r
