"""Debian packages that tests and benchmarks need on a clean machine (``wrk``, ``haproxy``,
``postgresql``, ...).

:func:`ensure_installed` installs a package with ``apt-get`` when what it provides is missing,
only when this process runs as root on a machine with ``apt-get`` (CI runs a clean clone as
root); a first failed install is retried after ``apt-get update`` (a fresh machine's package
lists may be empty or stale). Installs take a lock file first (:data:`APT_LOCK`), so that two
test processes (``scripts/test.sh`` runs the suite in two pytest-xdist workers) never run apt-get
at once: the second would fail on dpkg's own lock instead of waiting; after the wait it finds the
package the first one installed. apt-get itself also waits (up to 10 minutes) for dpkg's lock
held by anything else on the machine. :func:`debian_binary` is that for one binary, found on PATH or in
``/usr/sbin`` (where Debian puts daemons such as haproxy, and which a non-login root shell may
not have on PATH). Neither raises: a falsy answer means "not available", and the caller skips or
falls back with its own reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

SYSTEM_BIN_DIRS = ("/usr/sbin", "/sbin")
APT_LOCK = Path(tempfile.gettempdir()) / "dlrlens-apt-get.lock"
APT_GET = ["apt-get", "-o", "DPkg::Lock::Timeout=600"]


@contextlib.contextmanager
def apt_lock():
    """Held by one process of this machine at a time (an exclusive ``flock``, released when the
    process dies, so never left stale)."""
    with open(APT_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def find_binary(binary: str) -> str | None:
    return shutil.which(binary) or next((str(path) for path in (os.path.join(d, binary) for d in SYSTEM_BIN_DIRS)
                                         if os.access(path, os.X_OK)), None)


def ensure_installed(package: str, present: Callable[[], object], *, who: str = "tests") -> object:
    """``present()`` (a path, or a falsy value when missing); when missing and allowed, install
    Debian's ``package`` and ask again. ``who`` names the caller in the one line printed before
    installing."""
    found = present()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    with apt_lock():
        found = present()  # another process may have installed it while this one waited
        if found:
            return found
        print(f"{who}: installing Debian's {package} package", flush=True)
        quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900,
                     env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        install = [*APT_GET, "install", "-y", "--no-install-recommends", package]
        try:
            if subprocess.call(install, **quiet) != 0:
                subprocess.call([*APT_GET, "update"], **quiet)
                subprocess.call(install, **quiet)
        except (OSError, subprocess.SubprocessError):
            return None
        return present()


def debian_binary(binary: str, package: str | None = None, *, who: str = "tests") -> str | None:
    """Path of ``binary``; installs Debian's ``package`` (default: the binary's name) when it is
    missing and running as root."""
    return ensure_installed(package or binary, lambda: find_binary(binary), who=who)
