"""What a job shows on the terminal, and where everything else goes.

By default a job prints ser-ray's own lines and one progress bar per long stage. Ray's and the
libraries' logs (Ray's workers, Train and Tune, Ray Data, core-worker warnings, transformers,
Python warnings) go to a log file, ``<output>/logs/<command>.log`` (``train``:
``<output>.work/logs/``, beside the model folder; for an ``s3://`` output, a local
``ser-ray-logs/`` folder in the system's temp folder), whose path is printed once.
``--verbose`` leaves them all on the terminal, as Ray prints them.

:class:`Progress` is the one progress display: a tqdm bar (counts, rate, ETA) when stderr is a
terminal, else a plain line at most every ``every_s`` seconds, and a last line at the end.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

# Loggers whose records go to the log file in a quiet run.
LIBRARY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.air", "transformers",
                   "torch", "py.warnings", "urllib3", "botocore", "filelock", "numba",
                   "huggingface_hub", "optuna", "mlflow", "alembic")

# Commands whose --output is a model folder, replaced whole when it is written.
MODEL_FOLDER_COMMANDS = ("train", "fuse", "adapt")

_state: dict = {"log": None, "path": None, "verbose": True}


def log_path(output: str | None, command: str) -> Path:
    """Where a quiet run of ``command`` writing to ``output`` keeps its log."""
    if output and "://" not in str(output):
        if command in MODEL_FOLDER_COMMANDS:  # the folder is the model: logs go beside it
            return Path(f"{output}.work") / "logs" / f"{command}.log"
        return Path(output) / "logs" / f"{command}.log"
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / "ser-ray-logs" / f"{command}-{stamp}.log"


def log_file():
    """The open log file of a quiet run, or None."""
    return _state["log"]


def library_output():
    """A context in which what a library prints to stdout (Ray Tune's experiment tables) goes
    to the log file of a quiet run; on the terminal otherwise."""
    f = _state["log"]
    return contextlib.redirect_stdout(f) if f is not None else contextlib.nullcontext()


def say(msg: str, stage: str = "") -> None:
    """One of ser-ray's own lines: on stderr (stdout is for a command's result), and in the
    log file of a quiet run."""
    line = f"[ser-ray{' ' + stage if stage else ''}] {msg}"
    print(line, file=sys.stderr, flush=True)
    if _state["log"] is not None:
        _state["log"].write(line + "\n")


def logger(stage: str = "") -> Callable[[str], None]:
    """:func:`say` for one stage: ``log = logger("score")``, then ``log(msg)``."""
    return functools.partial(say, stage=stage)


@contextlib.contextmanager
def session(output: str | None, command: str, verbose: bool = False) -> Iterator[Path | None]:
    """Run a command quietly (the libraries' logs to :func:`log_path`) unless ``verbose``;
    everything is put back on exit. Yields the log file's path (None when verbose)."""
    if verbose or _state["log"] is not None:
        yield _state["path"]
        return
    path = log_path(output, command)
    path.parent.mkdir(parents=True, exist_ok=True)
    f = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    f.write(f"\n==== ser-ray {command} {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n")
    handler = logging.StreamHandler(f)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    import ray  # noqa: F401  (Ray sets up its loggers on import: replace them after it)

    saved = {name: (lg.handlers[:], lg.propagate)
             for name, lg in ((n, logging.getLogger(n)) for n in LIBRARY_LOGGERS)}
    _state.update(log=f, path=path, verbose=False, handler=handler)
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = [handler], False
    logging.captureWarnings(True)
    env = {"RAY_DATA_DISABLE_PROGRESS_BARS": "1", "TQDM_MININTERVAL": "30",
           "TRANSFORMERS_VERBOSITY": "error"}
    old_env = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    fd = _redirect_fd2(f) if sys.stderr is sys.__stderr__ else None
    print(f"[ser-ray] logs of Ray and the libraries: {path} (--verbose to see them here)",
          file=sys.stderr, flush=True)
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        hook_ray()
    try:
        yield path
    finally:
        unhook_ray()
        if fd is not None:
            _restore_fd2(*fd)
        for name, (handlers, propagate) in saved.items():
            lg = logging.getLogger(name)
            lg.handlers, lg.propagate = handlers, propagate
        logging.captureWarnings(False)
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _state.update(log=None, path=None, verbose=True, handler=None)
        f.close()


def _redirect_fd2(f):
    """Point fd 2 at the log file (C++ warnings of Ray's core worker, the local Ray processes
    this driver starts) and keep Python's ``sys.stderr`` on the terminal."""
    sys.stderr.flush()
    terminal = os.dup(2)
    os.dup2(f.fileno(), 2)
    old = sys.stderr
    sys.stderr = os.fdopen(os.dup(terminal), "w", buffering=1, encoding=old.encoding,
                           errors="backslashreplace")
    return terminal, old


def _restore_fd2(terminal: int, old) -> None:
    sys.stderr.flush()
    os.dup2(terminal, 2)
    os.close(terminal)
    sys.stderr.close()
    sys.stderr = old


def hook_ray() -> None:
    """After ``ray.init`` in a quiet run: what Ray's workers print goes to the log file, and
    the loggers Ray configured at start-up write there too."""
    f = _state["log"]
    if f is None:
        return
    for name in LIBRARY_LOGGERS:
        lg = logging.getLogger(name)
        lg.handlers, lg.propagate = [_state["handler"]], False
    try:
        from ray._private import worker as ray_worker
    except ImportError:  # pragma: no cover - Ray's private layout changed
        return
    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    printer = [h for name, h in getattr(dispatcher, "handlers", []) if name == "ray_print_logs"]
    if not printer:
        return  # log_to_driver=False: nothing is forwarded

    def to_file(data) -> None:
        ray_worker.print_worker_logs(data, f, True)

    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", to_file)
    _state["printer"] = printer[0]  # Ray's own, put back by unhook_ray


def unhook_ray() -> None:
    printer = _state.pop("printer", None)
    if printer is None:
        return
    from ray._private import worker as ray_worker

    dispatcher = ray_worker.global_worker_stdstream_dispatcher
    dispatcher.remove_handler("ray_print_logs")
    dispatcher.add_handler("ray_print_logs", printer)


def _eta(seconds: float) -> str:
    seconds = int(seconds)
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s" if seconds >= 60 else f"{seconds}s"


class Progress:
    """One long stage's progress: ``update(done, total, detail)`` with absolute counts.

    ``total`` may grow while the work is still being listed (shown as ``N+``, no ETA).
    Disabled (``enabled=False``), it shows nothing.
    """

    def __init__(self, label: str, total: int | None = None, unit: str = "units",
                 enabled: bool = True, every_s: float = 10.0, open_total: bool = False):
        self.label, self.total, self.unit, self.enabled = label, total, unit, enabled
        self.every_s, self.open = every_s, open_total
        self.done, self.detail, self.t0 = 0, "", time.time()
        self.last = self.t0
        self.bar = None
        if enabled and _isatty(sys.stderr):
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=f"[ser-ray] {label}", unit=f" {unit}",
                            file=sys.stderr, dynamic_ncols=True, leave=True)

    def update(self, done: int, total: int | None = None, detail: str = "",
               open_total: bool | None = None) -> None:
        if not self.enabled:
            return
        if total is not None:
            self.total = total
        if open_total is not None:
            self.open = open_total
        if done < self.done:  # a new pass over the same units
            self.t0 = time.time()
            if self.bar is not None:
                self.bar.reset(total=self.total)
            self.done = 0
        step, self.done, self.detail = done - self.done, done, detail
        if self.bar is not None:
            if self.total is not None and self.bar.total != self.total:
                self.bar.total = self.total
            if detail:
                self.bar.set_postfix_str(detail, refresh=False)
            self.bar.update(step)
        elif time.time() - self.last >= self.every_s:
            self.last = time.time()
            self._line()

    def _line(self, final: bool = False) -> None:
        secs = max(time.time() - self.t0, 1e-3)
        rate = self.done / secs
        total = "?" if self.total is None else f"{self.total}{'+' if self.open else ''}"
        eta = ""
        if not final and self.total and not self.open and rate > 0 and self.done < self.total:
            eta = f", ETA {_eta((self.total - self.done) / rate)}"
        detail = f"; {self.detail}" if self.detail else ""
        say(f"{self.label}: {self.done}/{total} {self.unit} ({rate:.2f}/s, "
            f"{_eta(secs)}{eta}){detail}")
        self.shown = (self.done, self.total, self.detail)

    def close(self, detail: str | None = None) -> None:
        if not self.enabled:
            return
        if detail is not None:
            self.detail = detail
        self.open = False
        if self.bar is not None:
            if self.detail:
                self.bar.set_postfix_str(self.detail, refresh=False)
            self.bar.close()
            if _state["log"] is not None:
                _state["log"].write(f"[ser-ray] {self.label}: {self.done} {self.unit}; "
                                    f"{self.detail}\n")
        elif getattr(self, "shown", None) != (self.done, self.total, self.detail):
            self._line(final=True)
        self.enabled = False


def _isatty(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
