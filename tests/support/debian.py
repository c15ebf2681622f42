"""Debian packages that tests and benchmarks need on a clean machine (``wrk``, ``haproxy``,
``postgresql``, ...).

:func:`ensure_installed` installs a package with ``apt-get`` when what it provides is missing,
only when this process runs as root on a machine with ``apt-get`` (CI runs a clean clone as
root); a first failed install is retried after ``apt-get update`` (a fresh machine's package
lists may be empty or stale). :func:`debian_binary` is that for one binary, found on PATH or in
``/usr/sbin`` (where Debian puts daemons such as haproxy, and which a non-login root shell may
not have on PATH). Neither raises: a falsy answer means "not available", and the caller skips or
falls back with its own reason.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

SYSTEM_BIN_DIRS = ("/usr/sbin", "/sbin")


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
    print(f"{who}: installing Debian's {package} package", flush=True)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=600,
                 env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    try:
        if subprocess.call(["apt-get", "install", "-y", "--no-install-recommends", package], **quiet) != 0:
            subprocess.call(["apt-get", "update"], **quiet)
            subprocess.call(["apt-get", "install", "-y", "--no-install-recommends", package], **quiet)
    except (OSError, subprocess.SubprocessError):
        return None
    return present()


def debian_binary(binary: str, package: str | None = None, *, who: str = "tests") -> str | None:
    """Path of ``binary``; installs Debian's ``package`` (default: the binary's name) when it is
    missing and running as root."""
    return ensure_installed(package or binary, lambda: find_binary(binary), who=who)
