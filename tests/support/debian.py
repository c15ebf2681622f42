"""Debian packages that tests and benchmarks need on a clean machine (wrk, postgresql, ...).

:func:`ensure_installed` installs a package with ``apt-get`` when what it provides is missing,
only when running as root on a machine that has apt-get (CI runs a clean clone as root); else it
changes nothing and the caller says what is missing. Output of apt-get is not shown; the caller
checks for what it needs afterwards.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable

_updated = False


def ensure_installed(package: str, present: Callable[[], object]) -> object:
    """``present()`` (a path, or a falsy value when missing); when missing and allowed, install
    Debian's ``package`` (after one ``apt-get update`` if the first attempt fails) and ask again."""
    global _updated
    found = present()
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    print(f"installing Debian's {package} package (apt-get)", flush=True)
    quiet = dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                 env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
    if subprocess.call(["apt-get", "install", "-y", package], **quiet) != 0 and not _updated:
        _updated = True
        subprocess.call(["apt-get", "update"], **quiet)
        subprocess.call(["apt-get", "install", "-y", package], **quiet)
    return present()


def ensure_command(command: str, package: str | None = None) -> str | None:
    """Path of ``command`` on PATH, installing ``package`` (default: the command's name) when missing."""
    return ensure_installed(package or command, lambda: shutil.which(command))
