"""Named crash points, so tests can kill a writer between any two steps of a flush or compaction.

Off unless ``DLRLENS_CRASH_AT`` is set to ``<point>@<marker file>``: the first process to reach
``<point>`` creates the marker and exits at once (``os._exit``: no cleanup, no flush, as a
power cut would). Later processes find the marker and go on, so a restarted worker recovers
instead of crashing again. Production never sets the variable.
"""

from __future__ import annotations

import os

CRASH_ENV = "DLRLENS_CRASH_AT"
CRASH_EXIT_CODE = 137


def crash_point(name: str) -> None:
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    point, _, marker = spec.partition("@")
    if point != name or not marker:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return
    os.write(fd, name.encode())
    os.fsync(fd)
    os.close(fd)
    os._exit(CRASH_EXIT_CODE)
