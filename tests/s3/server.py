"""A real S3-compatible server on 127.0.0.1 for tests: OpenStack Swift + s3api.

No MinIO server is installable from the registries this project reaches; Debian's Swift with its
S3 API is (``tests/s3/install.sh``). :class:`S3Server` builds a single-replica Swift (proxy with
s3api + tempauth, object/container/account servers, memcached) in a temporary directory, on free
ports, and tears every process down on exit::

    with S3Server() as s3:
        s3.create_bucket("audio")
        s3.upload_dir("tests/data", "audio", "raw/")
        client = s3.boto3_client()
        os.environ.update(s3.env())   # for pyarrow / Ray workers started afterwards

Ports are never fixed (8080/11211 may belong to another copy or a developer's server). Set
``SER_RAY_S3_BASE_DIR`` to keep state elsewhere (the object server needs user xattrs; some tmpfs
mounts lack them) and ``SER_RAY_S3_KEEP=1`` to keep the directory and logs after the run.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["S3Server", "S3ServerError", "available", "missing_binaries"]

SWIFT_BINARIES = (
    "swift-ring-builder",
    "swift-proxy-server",
    "swift-object-server",
    "swift-container-server",
    "swift-account-server",
)
REQUIRED_BINARIES = (*SWIFT_BINARIES, "memcached")
INSTALL_SCRIPT = Path(__file__).with_name("install.sh")

# Backends in start order; the proxy last so that its first request finds them listening.
_BACKENDS = ("object", "container", "account")
# A foreign profile or session token in the caller's environment would override ours.
_CONFLICTING_ENV = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL_S3",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
)


class S3ServerError(RuntimeError):
    """The local S3 server could not be built or did not become healthy."""


def missing_binaries() -> list[str]:
    """Names of the executables (Swift, memcached) not found on PATH."""
    return [name for name in REQUIRED_BINARIES if shutil.which(name) is None]


def available() -> bool:
    """True when every Swift and memcached executable this server needs is on PATH."""
    return not missing_binaries()


def _free_ports(n: int) -> list[int]:
    # Hold all sockets open until every port is chosen, so the n ports are distinct.
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _die_with_parent() -> None:  # runs in the child between fork and exec
    # Linux: SIGTERM the server if the test process dies without running its cleanup.
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def _tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"    (unreadable: {e})"
    if not text:
        return "    (empty)"
    return "\n".join("    " + line for line in text[-lines:])


class S3Server:
    """Swift + s3api on free 127.0.0.1 ports; a context manager that owns every process it starts.

    Attributes (valid once started): ``endpoint_url`` (``http://127.0.0.1:<port>``, path-style),
    ``access_key`` / ``secret_key`` (tempauth ``test:tester`` / ``testing``), ``region``
    (``us-east-1``), ``root`` (state, config and ``log/*.log``) and ``ports``.
    """

    access_key = "test:tester"
    secret_key = "testing"
    region = "us-east-1"

    def __init__(
        self,
        base_dir: str | os.PathLike | None = None,
        *,
        startup_timeout: float = 30.0,
        keep: bool | None = None,
    ) -> None:
        self.base_dir = base_dir or os.environ.get("SER_RAY_S3_BASE_DIR") or None
        self.startup_timeout = startup_timeout
        self.keep = bool(os.environ.get("SER_RAY_S3_KEEP")) if keep is None else keep
        self.root: Path | None = None
        self.ports: dict[str, int] = {}
        self.endpoint_url: str | None = None
        self.startup_seconds: float | None = None
        self._procs: dict[str, subprocess.Popen] = {}
        self._logs: list = []

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "S3Server":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self, attempts: int = 3) -> "S3Server":
        """Build config and rings, start all processes and wait until each answers /healthcheck.

        Retries with fresh ports when a port was taken between choosing and binding it.
        """
        missing = missing_binaries()
        if missing:
            raise S3ServerError(
                f"missing executables: {', '.join(missing)}; install them with "
                f"`sudo {INSTALL_SCRIPT}` (Debian/Ubuntu)"
            )
        if self._procs:
            raise S3ServerError("S3Server already started")
        t0 = time.monotonic()
        atexit.register(self.stop)
        try:
            for attempt in range(1, attempts + 1):
                self.root = Path(tempfile.mkdtemp(prefix="ser-ray-s3-", dir=self.base_dir))
                self._check_xattrs(self.root)
                try:
                    self._build()
                    self._launch()
                    self._wait_healthy()
                    break
                except _PortTaken:
                    self._stop_processes()
                    self._remove_root()
                    if attempt == attempts:
                        raise S3ServerError(
                            f"could not bind free ports after {attempts} attempts"
                        ) from None
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - t0
        return self

    def stop(self) -> None:
        """Stop every process this server started (SIGTERM, then SIGKILL) and remove its state."""
        atexit.unregister(self.stop)
        self._stop_processes()
        if not self.keep:
            self._remove_root()

    def _stop_processes(self, grace: float = 5.0) -> None:
        procs, self._procs = self._procs, {}
        for p in procs.values():
            self._signal_group(p, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for p in procs.values():
            try:
                p.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self._signal_group(p, signal.SIGKILL)
                p.wait(timeout=5)
        for f in self._logs:
            f.close()
        self._logs = []

    @staticmethod
    def _signal_group(p: subprocess.Popen, sig: int) -> None:
        # Only while the leader is unreaped: afterwards its pid (= pgid) may belong to others.
        # Every server here runs as one process (workers = 0, memcached without -d).
        if p.poll() is not None:
            return
        try:
            os.killpg(p.pid, sig)  # start_new_session: pgid == pid
        except ProcessLookupError:
            pass
        except PermissionError:
            if p.poll() is None:
                p.send_signal(sig)

    def _remove_root(self) -> None:
        if self.root is not None and self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)

    # ------------------------------------------------------------------ build
    @staticmethod
    def _check_xattrs(path: Path) -> None:
        # Swift's object server stores metadata in user xattrs; fail here, not on the first PUT.
        probe = path / ".xattr-probe"
        probe.touch()
        try:
            os.setxattr(probe, "user.ser-ray", b"1")
        except OSError as e:
            if e.errno in (errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
                raise S3ServerError(
                    f"{path.parent} does not support user xattrs, which Swift needs; "
                    "set SER_RAY_S3_BASE_DIR to a directory on ext4/xfs/btrfs"
                ) from e
            raise
        finally:
            probe.unlink()

    def _build(self) -> None:
        root = self.root
        etc, srv, log = root / "etc", root / "srv", root / "log"
        for d in (etc, srv / "d1", log, root / "cache"):
            d.mkdir(parents=True, exist_ok=True)
        names = ("proxy", *_BACKENDS, "memcached")
        self.ports = dict(zip(names, _free_ports(len(names))))
        user = getpass.getuser()
        common = f"""\
            swift_dir = {etc}
            user = {user}
            bind_ip = 127.0.0.1
            bind_timeout = 3
            workers = 0
            log_level = WARNING
            """
        (etc / "swift.conf").write_text(
            textwrap.dedent(
                """\
                [swift-hash]
                swift_hash_path_suffix = ser-ray-tests
                swift_hash_path_prefix = ser-ray-tests
                [storage-policy:0]
                name = Policy-0
                default = yes
                """
            )
        )
        for name in _BACKENDS:
            (etc / f"{name}-server.conf").write_text(
                textwrap.dedent(
                    f"""\
                    [DEFAULT]
                    bind_port = {self.ports[name]}
                    devices = {srv}
                    mount_check = false
                    disable_fallocate = true
                    fallocate_reserve = 0
                    recon_cache_path = {root / "cache"}
                    """
                )
                + textwrap.dedent(common)
                + textwrap.dedent(
                    f"""\
                    [pipeline:main]
                    pipeline = healthcheck {name}-server
                    [app:{name}-server]
                    use = egg:swift#{name}
                    [filter:healthcheck]
                    use = egg:swift#healthcheck
                    [{name}-replicator]
                    [{name}-updater]
                    [{name}-auditor]
                    """
                )
            )
        self._build_rings(etc)
        (etc / "proxy-server.conf").write_text(
            textwrap.dedent(
                f"""\
                [DEFAULT]
                bind_port = {self.ports["proxy"]}
                """
            )
            + textwrap.dedent(common)
            + textwrap.dedent(
                f"""\
                [pipeline:main]
                pipeline = catch_errors gatekeeper healthcheck proxy-logging cache listing_formats s3api tempauth copy slo dlo proxy-logging proxy-server
                [app:proxy-server]
                use = egg:swift#proxy
                account_autocreate = true
                [filter:s3api]
                use = egg:swift#s3api
                location = {self.region}
                [filter:tempauth]
                use = egg:swift#tempauth
                user_test_tester = {self.secret_key} .admin
                [filter:cache]
                use = egg:swift#memcache
                memcache_servers = 127.0.0.1:{self.ports["memcached"]}
                [filter:catch_errors]
                use = egg:swift#catch_errors
                [filter:gatekeeper]
                use = egg:swift#gatekeeper
                [filter:healthcheck]
                use = egg:swift#healthcheck
                [filter:proxy-logging]
                use = egg:swift#proxy_logging
                [filter:listing_formats]
                use = egg:swift#listing_formats
                [filter:copy]
                use = egg:swift#copy
                [filter:slo]
                use = egg:swift#slo
                [filter:dlo]
                use = egg:swift#dlo
                """
            )
        )
        # botocore reads addressing style only from config, so clients built from env() alone
        # (not via boto3_client()) still use path-style requests against 127.0.0.1.
        (root / "aws-config").write_text(
            f"[default]\nregion = {self.region}\ns3 =\n    addressing_style = path\n"
        )
        self.endpoint_url = f"http://127.0.0.1:{self.ports['proxy']}"

    def _build_rings(self, etc: Path) -> None:
        # One interpreter for all three rings: nine swift-ring-builder calls cost ~5 s of startup.
        with open(shutil.which("swift-ring-builder"), "rb") as f:
            shebang = f.readline().decode().removeprefix("#!").split()
        script = textwrap.dedent(
            """\
            import sys
            from swift.common.ring import RingBuilder
            for name, port in zip(sys.argv[1::2], sys.argv[2::2]):
                b = RingBuilder(8, 1, 1)  # part power 8, 1 replica, min_part_hours 1
                b.add_dev({"id": 0, "region": 1, "zone": 1, "ip": "127.0.0.1",
                           "port": int(port), "device": "d1", "weight": 1})
                b.rebalance()
                b.save(name + ".builder")
                b.get_ring().save(name + ".ring.gz")
            """
        )
        args = [a for name in _BACKENDS for a in (name, str(self.ports[name]))]
        r = subprocess.run(
            [*shebang, "-c", script, *args],
            cwd=etc,
            env=self._child_env(),
            capture_output=True,
            text=True,
        )
        if r.returncode != 0:
            raise S3ServerError(
                f"building Swift rings failed ({r.returncode}):\n{r.stdout}{r.stderr}"
            )

    @staticmethod
    def _child_env() -> dict[str, str]:
        # Swift runs on the system python3; the test venv's variables must not leak into it.
        env = {
            k: v
            for k, v in os.environ.items()
            if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")
        }
        env["PATH"] = os.pathsep.join(
            p
            for p in env.get("PATH", os.defpath).split(os.pathsep)
            if not (os.environ.get("VIRTUAL_ENV") and p.startswith(os.environ["VIRTUAL_ENV"]))
        )
        return env

    def _spawn(self, name: str, argv: list[str]) -> None:
        logf = open(self.root / "log" / f"{name}.log", "wb")
        self._logs.append(logf)
        self._procs[name] = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            cwd=self.root,
            env=self._child_env(),
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
        )

    def _launch(self) -> None:
        mc = ["memcached", "-l", "127.0.0.1", "-p", str(self.ports["memcached"]), "-U", "0"]
        mc += ["-m", "64", "-c", "256"]
        if os.geteuid() == 0:
            mc += ["-u", "root"]  # memcached refuses to run as root without it
        self._spawn("memcached", mc)
        etc = self.root / "etc"
        for name in (*_BACKENDS, "proxy"):
            # -v: log to stderr (our log file) as well as syslog.
            conf = etc / f"{name}-server.conf"
            self._spawn(name, [shutil.which(f"swift-{name}-server"), str(conf), "-v"])

    # ------------------------------------------------------------------ health
    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_timeout
        pending = dict(self.ports)
        while pending:
            for name, proc in self._procs.items():
                if proc.poll() is not None:
                    logs = (self.root / "log" / f"{name}.log").read_text(errors="replace")
                    if "Address already in use" in logs or "Could not bind" in logs:
                        raise _PortTaken(name)
                    raise S3ServerError(
                        f"{name} exited with code {proc.returncode} during startup\n"
                        + self._log_tails()
                    )
            for name in list(pending):
                if self._healthy(name, pending[name]):
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise S3ServerError(
                    f"S3 server not healthy after {self.startup_timeout:.0f} s "
                    f"(waiting for: {', '.join(sorted(pending))})\n" + self._log_tails()
                )
            time.sleep(0.1)

    @staticmethod
    def _healthy(name: str, port: int) -> bool:
        if name == "memcached":
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"version\r\n")
                    return s.recv(64).startswith(b"VERSION")
            except OSError:
                return False
        try:
            with urllib.request.urlopen(
                f"http://127.0.0.1:{port}/healthcheck", timeout=2
            ) as r:
                return r.status == 200 and r.read().strip() == b"OK"
        except (OSError, urllib.error.URLError):
            return False

    def _log_tails(self) -> str:
        kept = "" if self.keep else " (removed on stop; set SER_RAY_S3_KEEP=1 to keep it)"
        parts = [f"state and logs under {self.root}{kept}"]
        for name in self._procs:
            path = self.root / "log" / f"{name}.log"
            parts.append(f"--- {path.name} (last lines)\n{_tail(path)}")
        return "\n".join(parts)

    # ------------------------------------------------------------------ clients
    def _require_started(self) -> None:
        if not self._procs or self.endpoint_url is None:
            raise S3ServerError(
                "S3Server is not running; use it as a context manager or call start()"
            )

    def env(self) -> dict[str, str]:
        """Environment variables that point boto3, pyarrow and child processes at this server."""
        self._require_started()
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": self.region,
            "AWS_DEFAULT_REGION": self.region,
            "AWS_ENDPOINT_URL": self.endpoint_url,
            "AWS_CONFIG_FILE": str(self.root / "aws-config"),
            # Swift's s3api answers 501 to aws-chunked uploads with trailing checksums.
            "AWS_REQUEST_CHECKSUM_CALCULATION": "when_required",
            "AWS_RESPONSE_CHECKSUM_VALIDATION": "when_required",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    #: Variables to remove from the environment while env() is applied (they would override it).
    conflicting_env = _CONFLICTING_ENV

    def boto3_client(self, **kwargs):
        """A boto3 S3 client for this server (path-style, SigV4, checksums only when required)."""
        import boto3
        from botocore.config import Config

        self._require_started()
        config = Config(
            s3={"addressing_style": "path"},
            signature_version="s3v4",
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            retries={"max_attempts": 3, "mode": "standard"},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=self.region,
            config=config,
            **kwargs,
        )

    def pyarrow_filesystem(self):
        """A ``pyarrow.fs.S3FileSystem`` for this server."""
        from pyarrow import fs

        self._require_started()
        return fs.S3FileSystem(
            access_key=self.access_key,
            secret_key=self.secret_key,
            region=self.region,
            endpoint_override=self.endpoint_url.removeprefix("http://"),
            scheme="http",
        )

    def create_bucket(self, name: str) -> str:
        """Create bucket ``name`` (no error if this account already owns it); returns the name."""
        client = self.boto3_client()
        try:
            client.create_bucket(Bucket=name)
        except client.exceptions.BucketAlreadyOwnedByYou:
            pass
        return name

    def upload_dir(self, local_dir: str | os.PathLike, bucket: str, prefix: str = "") -> list[str]:
        """Upload every file under ``local_dir`` to ``s3://bucket/prefix/<relative path>``.

        Creates the bucket if needed; returns the uploaded keys, sorted.
        """
        local_dir = Path(local_dir)
        if not local_dir.is_dir():
            raise NotADirectoryError(f"upload_dir: {local_dir} is not a directory")
        self.create_bucket(bucket)
        client = self.boto3_client()
        prefix = prefix.strip("/")
        keys = []
        for path in sorted(p for p in local_dir.rglob("*") if p.is_file()):
            rel = path.relative_to(local_dir).as_posix()
            key = f"{prefix}/{rel}" if prefix else rel
            client.upload_file(str(path), bucket, key)
            keys.append(key)
        return keys

    @staticmethod
    def uri(bucket: str, key: str = "") -> str:
        """``s3://bucket/key``."""
        return f"s3://{bucket}/{key.lstrip('/')}" if key else f"s3://{bucket}"


class _PortTaken(Exception):
    """A chosen port was bound by someone else before our server could bind it."""
