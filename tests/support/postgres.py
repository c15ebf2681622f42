"""A real PostgreSQL server of our own on loopback, for benchmarks and tests.

:func:`postgres_bin_dir` finds Debian's server binaries (``/usr/lib/postgresql/<version>/bin``,
the newest version), installing the ``postgresql`` package when missing and running as root.
:class:`PostgresCluster` makes a fresh cluster with ``initdb`` in a directory of its own and runs
``postgres`` on a free port of 127.0.0.1 (its Unix socket in that directory, so it never meets a
system cluster), with PostgreSQL's durable defaults (``fsync``, ``synchronous_commit = on``,
``full_page_writes``): a ``COMMIT`` returns once the transaction is flushed to disk.

PostgreSQL refuses to run as root; as root the cluster's directory is given to the ``postgres``
system user (Debian's package creates it) and the server runs as that user. ``stop()`` is a fast
shutdown (SIGINT: clients are disconnected, the server checkpoints), then SIGKILL after 30 s.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.debian import ensure_installed
from tests.support.servers import free_port, wait_until

POSTGRES_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"


def _newest_bin_dir() -> Path | None:
    versions = [p for p in POSTGRES_ROOT.glob("*/bin") if (p / "postgres").exists() and (p / "initdb").exists()]
    versions.sort(key=lambda p: [int(part) for part in re.findall(r"\d+", p.parent.name)] or [0])
    return versions[-1] if versions else None


def postgres_bin_dir() -> Path | None:
    """Directory of ``initdb`` and ``postgres`` (Debian's layout), installing ``postgresql`` if
    missing and allowed; ``None`` when PostgreSQL cannot be had."""
    return ensure_installed("postgresql", _newest_bin_dir)


def _server_user() -> pwd.struct_passwd | None:
    """The account the server runs as: ours, unless we are root (then Debian's ``postgres``)."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_USER)
    except KeyError as exc:
        raise RuntimeError(f"running as root and there is no '{SERVER_USER}' user to run PostgreSQL as "
                           "(install Debian's postgresql package, which creates it)") from exc


@dataclass
class PostgresCluster:
    """One PostgreSQL cluster in ``directory`` (created empty if missing), on ``port``."""

    bin_dir: Path
    directory: Path
    port: int = field(default_factory=free_port)
    max_connections: int = 100
    process: subprocess.Popen | None = None

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user={SERVER_USER} dbname=postgres connect_timeout=10"

    @property
    def log_path(self) -> Path:
        return self.directory / "postgres.log"

    def _as_server_user(self) -> dict:
        user = _server_user()
        if user is None:
            return {}
        return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
                "env": dict(os.environ, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)}

    def start(self) -> "PostgresCluster":
        """initdb (first time) and start the server; returns once it accepts connections."""
        self.directory.mkdir(parents=True, exist_ok=True)
        user = _server_user()
        if user is not None:
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        data = self.directory / "data"
        if not data.exists():
            made = subprocess.run([str(self.bin_dir / "initdb"), "-D", str(data), "-U", SERVER_USER, "--auth=trust",
                                   "--encoding=UTF8", "--no-instructions"],
                                  capture_output=True, text=True, timeout=120, cwd=self.directory,
                                  **self._as_server_user())
            if made.returncode != 0:  # e.g. a parent directory the server's user cannot enter
                raise RuntimeError(f"initdb failed in {self.directory}: {made.stderr.strip()[-1000:]}")
        command = [str(self.bin_dir / "postgres"), "-D", str(data), "-p", str(self.port),
                   "-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={self.directory}",
                   "-c", f"max_connections={self.max_connections}", "-c", "synchronous_commit=on", "-c", "fsync=on"]
        with open(self.log_path, "ab") as log:
            if user is not None:
                os.chown(self.log_path, user.pw_uid, user.pw_gid)
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=self.directory,
                                            start_new_session=True, **self._as_server_user())
        ready = [str(self.bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(self.port), "-t", "1"]

        def accepting() -> bool:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited ({self.process.returncode}):\n{self.log()[-2000:]}")
            return subprocess.run(ready, capture_output=True, timeout=10).returncode == 0

        wait_until(accepting, timeout=60, interval=0.2, what="PostgreSQL accepting connections")
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        """Fast shutdown, then SIGKILL of the whole group after 30 s."""
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGINT)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=30)
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=30)


@contextlib.contextmanager
def running_postgres(parent: Path | None = None, max_connections: int = 100):
    """A started :class:`PostgresCluster` in a fresh directory under ``parent`` (default: the
    system temp directory; as root, the ``postgres`` user must be able to enter every directory
    above it), stopped and removed afterwards. Raises RuntimeError when PostgreSQL cannot be had
    or will not start."""
    bin_dir = postgres_bin_dir()
    if bin_dir is None:
        raise RuntimeError("PostgreSQL is not installed (Debian's postgresql package) and cannot be installed here")
    directory = Path(tempfile.mkdtemp(prefix="dlrlens-postgres-", dir=parent))
    os.chmod(directory, 0o755)
    cluster = PostgresCluster(bin_dir, directory / "cluster", max_connections=max_connections)
    try:
        yield cluster.start()
    finally:
        cluster.stop()
        shutil.rmtree(directory, ignore_errors=True)
