"""Files in the data directory: the one way to publish a file and the one way to take a lock.

Publishing (:func:`publishing`, :func:`publish_bytes`, :func:`publish_table`)
    A file appears under its name only whole and durable: it is written under a temporary
    dot-name next to it (``.<name>.<pid>.tmp``), fsynced, renamed into place (``os.replace``,
    so an existing file is replaced atomically) and its directory is fsynced. A reader listing
    the directory sees the old file (or none) or the whole new one, never a partial file; one
    that skips dot-names (:func:`visible_files`) never sees a temporary file. When the writing
    fails, the temporary file is removed and the target is left as it was; when the writing
    process dies, the temporary file stays until :func:`remove_orphan_temp_files` finds its
    process gone.

Locking (:func:`lock`, :func:`locked`)
    An ``flock`` on a lock file (created when missing), held until released or until the
    process dies (the kernel drops it), so a crashed holder never leaves a stale lock.

A second backend (object storage) replaces these with its own conditional put and lease.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

from dlrlens.store.faults import crash_point

TEMP_SUFFIX = ".tmp"

# The steps of a publication, for crash points (see :func:`publishing`).
WRITTEN = "written"  # the temporary file is complete, not fsynced
FSYNCED = "fsynced"  # ... fsynced, not renamed
RENAMED = "renamed"  # renamed into place, its directory not fsynced
PUBLISHED = "published"  # durable under its name


def fsync_path(path: Path, flags: int = 0) -> None:
    """fsync a file (or, with ``os.O_DIRECTORY``, a directory) by path."""
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a rename, creation or unlink inside ``path`` durable."""
    fsync_path(path, os.O_DIRECTORY)


def temp_path(path: Path) -> Path:
    """The temporary name this process writes ``path`` under: ``.<name>.<pid>.tmp``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}{TEMP_SUFFIX}")


class Publication:
    """The file being written inside :func:`publishing`: write it at :attr:`temp`."""

    def __init__(self, target: Path):
        self.target = target
        self.temp = temp_path(target)
        self.discarded = False

    def discard(self) -> None:
        """Publish nothing: the temporary file is removed when the block ends."""
        self.discarded = True


@contextmanager
def publishing(path: Path, *, crash_points: Mapping[str, str] | None = None) -> Iterator[Publication]:
    """Publish the file written inside the block at ``path`` (see the module docstring).

    Yields a :class:`Publication`; the block writes the whole file at its ``temp`` path (and
    may set its times). When the block ends normally the file is fsynced, renamed to ``path``
    and the directory fsynced; when it raises, or called :meth:`Publication.discard`, the
    temporary file is removed and ``path`` left alone. Creates the directory if needed.

    ``crash_points`` maps steps (:data:`WRITTEN`, :data:`FSYNCED`, :data:`RENAMED`,
    :data:`PUBLISHED`) to the name of the :func:`~dlrlens.store.faults.crash_point` to pass
    right after that step.
    """
    path = Path(path)
    points = crash_points or {}
    path.parent.mkdir(parents=True, exist_ok=True)
    publication = Publication(path)
    try:
        yield publication
        if publication.discarded:
            publication.temp.unlink(missing_ok=True)
            return
        _crash(points, WRITTEN)
        fsync_path(publication.temp)
        _crash(points, FSYNCED)
        os.replace(publication.temp, path)
    except BaseException:
        publication.temp.unlink(missing_ok=True)
        raise
    _crash(points, RENAMED)
    fsync_dir(path.parent)
    _crash(points, PUBLISHED)


def _crash(points: Mapping[str, str], step: str) -> None:
    name = points.get(step)
    if name:
        crash_point(name)


def publish_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Returns only after the file and its directory entry are fsynced.
    """
    with publishing(path) as publication:
        publication.temp.write_bytes(data)


def publish_table(table, path: Path, *, crash_points: Mapping[str, str] | None = None, **parquet_options) -> None:
    """Write the Arrow ``table`` as the Parquet file ``path`` (``pyarrow.parquet.write_table``
    with ``parquet_options``), published like :func:`publishing`."""
    import pyarrow.parquet as pq

    with publishing(path, crash_points=crash_points) as publication:
        pq.write_table(table, publication.temp, **parquet_options)


def visible_files(directory: Path, suffix: str = ".parquet") -> dict[str, tuple[Path, int, int]]:
    """The published files a reader may see in ``directory`` whose name ends with ``suffix``,
    by name: ``(path, size, mtime_ns)``. Temporary (dot-named) files are left out; a file
    removed while listing is skipped; a missing directory gives an empty dict."""
    found: dict[str, tuple[Path, int, int]] = {}
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return found
    for entry in entries:
        if entry.name.startswith(".") or not entry.name.endswith(suffix):
            continue
        try:
            st = entry.stat()
        except FileNotFoundError:
            continue
        found[entry.name] = (Path(entry.path), st.st_size, st.st_mtime_ns)
    return found


def remove_orphan_temp_files(root: Path) -> int:
    """Delete the temporary files (``<root>/*/.<name>.<pid>.tmp``) whose writing process no
    longer exists. Returns how many were removed."""
    removed = 0
    for tmp in Path(root).glob(f"*/.*{TEMP_SUFFIX}") if Path(root).is_dir() else ():
        try:
            pid = int(tmp.name.rsplit(".", 2)[-2])
            os.kill(pid, 0)
            continue  # its writer is alive and may still rename it
        except ProcessLookupError:
            pass
        except (ValueError, PermissionError):
            continue
        tmp.unlink(missing_ok=True)
        removed += 1
    return removed


# -- locks -----------------------------------------------------------------------------------


class FileLock:
    """An ``flock`` held on :attr:`path` until :meth:`release` (or until the process dies)."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Drop the lock (idempotent)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def lock(path: Path, *, wait: bool, shared: bool = False) -> FileLock | None:
    """Take an exclusive (or ``shared``) ``flock`` on ``path``, creating the file and its
    directory when missing. With ``wait`` False, returns ``None`` at once when another holder
    is in the way; with ``wait`` True it blocks until the lock is free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | (0 if wait else fcntl.LOCK_NB))
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return FileLock(path, fd)


@contextmanager
def locked(path: Path, *, wait: bool, shared: bool = False) -> Iterator[bool]:
    """Hold :func:`lock` on ``path`` for the block. Yields whether it is held: always True
    with ``wait``; False (at once, without waiting) when busy and ``wait`` is False."""
    held = lock(path, wait=wait, shared=shared)
    try:
        yield held is not None
    finally:
        if held is not None:
            held.release()


# -- health ----------------------------------------------------------------------------------

PROBE_PREFIX = ".healthz-"


def probe_writable(data_dir: Path) -> None:
    """Make one real durable write in ``data_dir`` (a small file, written, fsynced, removed).
    Raises ``OSError`` when storage cannot take it (full, read-only, gone). The file is the
    calling thread's own: two health checks at once in one worker (the load balancer's and a
    monitor's) each removed the other's probe and answered 503 (seen in the load-balanced soak)."""
    probe = Path(data_dir) / f"{PROBE_PREFIX}{os.getpid()}-{threading.get_ident()}"
    with open(probe, "wb") as fh:
        fh.write(b"ok")
        fh.flush()
        os.fsync(fh.fileno())
    probe.unlink()
