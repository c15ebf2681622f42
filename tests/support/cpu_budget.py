"""CPU budgets: a process tree held to a share of the machine's cores, as if it ran on a small
machine of its own (Linux cgroups; the collectors scaling benchmark's ``--cpu-per-collector``).

:func:`cpu_budgets` creates ``count`` cgroups with the ``cpu`` controller, each with a quota of
``cores`` CPU seconds per second (cgroup v1: ``cpu.cfs_period_us`` 100,000 and
``cpu.cfs_quota_us`` ``cores`` x 100,000; cgroup v2: ``cpu.max``), and removes them when the
block ends, on error too (a process still inside after its server stopped is SIGKILLed by pid
first: it can only be one of the caller's own). A :class:`CpuBudget`'s :attr:`~CpuBudget.launcher`
is a command prefix (``sh``, writing its own pid into the cgroup's ``cgroup.procs``, then
``exec`` of the real command): the process enters the cgroup before it runs, so everything it
forks or spawns later (gunicorn's workers, the maintenance and alerts processes, even those
started with ``setsid``) inherits the budget.

Each cgroup also gets a high weight (``cpu.shares`` / ``cpu.weight``): on a shared machine a
cgroup competes for the cores as one entity against every runnable process outside it, so under
a neighbour's load it would get well below its quota; with the weight it gets its budget first,
and the quota still caps it. :func:`caller_priority` gives the caller (and what it starts
afterwards: the load client, the load balancer, the object store) the same weight without a
quota, so the neighbours' load does not starve the rest of the set-up either; the caller moves
back to its own cgroup when the block ends.

Needs root and a writable hierarchy: v1's ``cpu`` controller (what this machine mounts at
``/sys/fs/cgroup/cpu``) or a v2 hierarchy offering ``cpu``; otherwise :class:`CpuBudgetError`
names what is missing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

PERIOD_US = 100_000          # the kernel's default CFS period: 100 ms
MIN_CORES = 0.01             # the kernel refuses a quota under 1 ms per period
V1_SHARES = 8 * 1024         # default 1024, one runnable process's weight
V2_WEIGHT = 800              # default 100
MOUNTS = Path("/proc/self/mounts")
# The launcher: sh puts itself ($$) into the cgroup whose cgroup.procs is $0, then becomes the command.
_ENTER_AND_EXEC = 'echo $$ > "$0" && exec "$@"'


class CpuBudgetError(RuntimeError):
    """No CPU budget can be set up here; the message says why."""


@dataclass
class CpuBudget:
    """One cgroup: ``path`` (its directory), ``cores`` per second (None: no quota, only the
    weight), ``version`` 1 or 2."""

    path: Path
    cores: float | None
    version: int

    @property
    def launcher(self) -> list[str]:
        """Prefix a command with this to run it, and all it starts, inside the budget."""
        return ["sh", "-c", _ENTER_AND_EXEC, str(self.path / "cgroup.procs")]

    def pids(self) -> list[int]:
        return [int(line) for line in (self.path / "cgroup.procs").read_text().split()]

    def throttling(self) -> tuple[int, int]:
        """``(periods, throttled periods)`` so far: periods in which the cgroup ran, and those in
        which it used its whole quota and waited for the next period."""
        stat = dict(line.split() for line in (self.path / "cpu.stat").read_text().splitlines() if line.strip())
        return int(stat.get("nr_periods", 0)), int(stat.get("nr_throttled", 0))


def cpu_controller(mounts: Path = MOUNTS) -> tuple[int, Path]:
    """``(version, directory)`` of the hierarchy to create budgets in: v1's ``cpu`` controller
    first, else a v2 hierarchy whose root offers ``cpu``."""
    entries = [line.split() for line in mounts.read_text().splitlines()]
    for _device, mount_point, kind, options, *_ in entries:
        if kind == "cgroup" and "cpu" in options.split(","):
            return 1, Path(mount_point)
    for _device, mount_point, kind, *_ in entries:
        if kind == "cgroup2" and "cpu" in _read(Path(mount_point) / "cgroup.controllers").split():
            return 2, Path(mount_point)
    raise CpuBudgetError(f"no cgroup hierarchy with the cpu controller is mounted ({mounts}: neither a cgroup v1 "
                         "'cpu' mount nor a cgroup2 mount whose cgroup.controllers lists cpu)")


@contextlib.contextmanager
def cpu_budgets(count: int, cores: float, name: str = "dlrlens-budget", mounts: Path = MOUNTS,
                leftover_seconds: float = 10):
    """``count`` :class:`CpuBudget` of ``cores`` each, named ``<name>-<pid>-<n>``; removed on exit
    (processes still inside ``leftover_seconds`` after the block are SIGKILLed)."""
    if not cores >= MIN_CORES:
        raise CpuBudgetError(f"a CPU budget must be at least {MIN_CORES} cores, not {cores!r}")
    version, root = cpu_controller(mounts)
    enabled_cpu = _enable_v2_cpu(root) if version == 2 else False
    budgets: list[CpuBudget] = []
    try:
        for number in range(count):
            budget = CpuBudget(root / f"{name}-{os.getpid()}-{number}", cores, version)
            _create(budget)
            budgets.append(budget)
        if budgets:
            _check_launcher(budgets[0])
        yield budgets
    finally:
        problems = [problem for budget in budgets if (problem := _remove(budget, leftover_seconds))]
        if enabled_cpu:
            with contextlib.suppress(OSError):  # refused while another child uses cpu: harmless
                (root / "cgroup.subtree_control").write_text("-cpu")
        if problems:
            print("cpu_budget: " + "; ".join(problems), flush=True)


@contextlib.contextmanager
def caller_priority(name: str = "dlrlens-priority", mounts: Path = MOUNTS):
    """Run this process (and what it starts meanwhile) in a cgroup of high weight and no quota."""
    version, root = cpu_controller(mounts)
    enabled_cpu = _enable_v2_cpu(root) if version == 2 else False
    budget = CpuBudget(root / f"{name}-{os.getpid()}", None, version)
    own = _own_cgroup(version, root)
    _create(budget)
    try:
        try:
            (budget.path / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as exc:
            raise CpuBudgetError(f"this process cannot enter the cgroup {budget.path}: {exc}") from exc
        yield budget
    finally:
        with contextlib.suppress(OSError):
            (own / "cgroup.procs").write_text(str(os.getpid()))
        problem = _remove(budget)
        if enabled_cpu:
            with contextlib.suppress(OSError):
                (root / "cgroup.subtree_control").write_text("-cpu")
        if problem:
            print(f"cpu_budget: {problem}", flush=True)


def _own_cgroup(version: int, root: Path) -> Path:
    """This process's cgroup directory in the hierarchy mounted at ``root`` (/proc/self/cgroup)."""
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _number, controllers, path = line.split(":", 2)
        if (version == 1 and "cpu" in controllers.split(",")) or (version == 2 and controllers == ""):
            return root / path.lstrip("/")
    return root


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _enable_v2_cpu(root: Path) -> bool:
    """Let the root's children have a cpu controller; True when this call enabled it."""
    control = root / "cgroup.subtree_control"
    if "cpu" in _read(control).split():
        return False
    try:
        control.write_text("+cpu")
    except OSError as exc:
        raise CpuBudgetError(f"cannot enable the cpu controller in {control}: {exc} (needs root)") from exc
    return True


def _create(budget: CpuBudget) -> None:
    quota = max(1000, round(budget.cores * PERIOD_US)) if budget.cores else None
    settings = ({"cpu.cfs_period_us": str(PERIOD_US), "cpu.cfs_quota_us": str(quota or -1), "cpu.shares": str(V1_SHARES)}
                if budget.version == 1 else {"cpu.max": f"{quota or 'max'} {PERIOD_US}", "cpu.weight": str(V2_WEIGHT)})
    try:
        budget.path.mkdir()
    except OSError as exc:
        raise CpuBudgetError(f"cannot create the cgroup {budget.path}: {exc} (cgroups need root and a writable "
                             f"cgroup v{budget.version} hierarchy)") from exc
    try:
        for setting, value in settings.items():
            (budget.path / setting).write_text(value)
    except OSError as exc:
        _remove(budget)
        raise CpuBudgetError(f"cannot set the CPU quota of {budget.path}: {exc}") from exc


def _check_launcher(budget: CpuBudget) -> None:
    """A process must be able to enter the cgroup (a container may allow mkdir but not this)."""
    done = subprocess.run([*budget.launcher, "true"], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        raise CpuBudgetError(f"a process cannot enter the cgroup {budget.path}: {done.stderr.strip()}")


def _remove(budget: CpuBudget, timeout: float = 10) -> str:
    """Remove the cgroup; after ``timeout`` s SIGKILL what is still inside. A problem, or ''."""
    if not budget.path.exists():
        return ""
    deadline = time.monotonic() + timeout
    while budget.pids() and time.monotonic() < deadline:
        time.sleep(0.1)
    left = budget.pids()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for _attempt in range(50):
        try:
            budget.path.rmdir()
            break
        except OSError:
            time.sleep(0.1)
    else:
        return f"could not remove the cgroup {budget.path}"
    return f"killed {len(left)} process(es) still in {budget.path.name} after {timeout:g}s" if left else ""
