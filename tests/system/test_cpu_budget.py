"""CPU budgets (tests/support/cpu_budget.py, the collectors scaling benchmark's
``--cpu-per-collector``): a process tree started through a budget's launcher runs, children and
all, inside a cgroup whose quota holds it; the cgroups are gone afterwards, on error too; where
no hierarchy can be used the error says why. Needs root and cgroups (CI runs as root)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.support.cpu_budget import CpuBudgetError, caller_priority, cpu_budgets, cpu_controller

# A parent that forks a child (as gunicorn forks its workers), both spinning for SPIN seconds.
SPIN = 1.5
SPINNERS = f"""
import os, time
child = os.fork()
end = time.monotonic() + {SPIN}
while time.monotonic() < end:
    pass
if child:
    os.waitpid(child, 0)
    print(sum(os.times()[:4]))
"""


def _usable() -> str | None:
    if os.geteuid() != 0:
        return "cgroups need root"
    try:
        cpu_controller()
    except CpuBudgetError as exc:
        return str(exc)
    return None


needs_cgroups = pytest.mark.skipif(_usable() is not None, reason=f"no CPU budget here: {_usable()}")


@needs_cgroups
def test_a_process_tree_started_through_a_budget_is_held_to_its_quota():
    with cpu_budgets(1, 0.2, "dlrlens-test") as (budget,):
        assert budget.path.is_dir()
        if budget.version == 1:
            assert (budget.path / "cpu.cfs_quota_us").read_text().strip() == "20000"
        periods_before, throttled_before = budget.throttling()
        started = time.monotonic()
        process = subprocess.Popen([*budget.launcher, sys.executable, "-c", SPINNERS], stdout=subprocess.PIPE,
                                   text=True)
        time.sleep(0.5)
        inside = budget.pids()
        out, _ = process.communicate(timeout=60)
        wall = time.monotonic() - started
        periods, throttled = budget.throttling()
        path = budget.path
    assert process.returncode == 0
    assert process.pid in inside and len(inside) == 2, f"the launcher's exec and the forked child: {inside}"
    cpu = float(out)  # the parent's and its reaped child's CPU seconds
    # Uncapped, two spinners would take up to 2 x SPIN; the cap allows 0.2 core-seconds per second.
    assert cpu <= 0.2 * wall + 0.15, (cpu, wall)
    assert throttled - throttled_before > 0 and periods > periods_before, "the quota made it wait"
    assert not path.exists(), "removed afterwards"


@needs_cgroups
def test_budgets_are_removed_when_the_block_fails_and_leftovers_are_killed():
    with pytest.raises(RuntimeError, match="boom"):
        with cpu_budgets(2, 0.5, "dlrlens-test", leftover_seconds=0.5) as budgets:
            paths = [budget.path for budget in budgets]
            sleeper = subprocess.Popen([*budgets[1].launcher, "sleep", "60"])
            time.sleep(0.3)
            assert budgets[1].pids() == [sleeper.pid]
            raise RuntimeError("boom")
    assert sleeper.wait(timeout=30) != 0, "still inside after the block: SIGKILLed"
    assert not any(path.exists() for path in paths)


@needs_cgroups
def test_the_caller_gets_priority_and_returns_to_its_own_cgroup():
    before = Path("/proc/self/cgroup").read_text()
    with caller_priority("dlrlens-test-rest") as group:
        assert os.getpid() in group.pids()
        path = group.path
    assert Path("/proc/self/cgroup").read_text() == before
    assert not path.exists()


def test_no_cpu_hierarchy_and_bad_budgets_are_named(tmp_path):
    mounts = tmp_path / "mounts"
    mounts.write_text("proc /proc proc rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n")
    with pytest.raises(CpuBudgetError, match="no cgroup hierarchy with the cpu controller"):
        with cpu_budgets(1, 0.5, mounts=mounts):
            pass
    with pytest.raises(CpuBudgetError, match="at least 0.01 cores"):
        with cpu_budgets(1, 0.0):
            pass


def test_the_benchmark_refuses_a_budget_beyond_the_machine(capsys):
    from tests.benchmarks import collectors_scaling

    with pytest.raises(SystemExit):
        collectors_scaling.parse_args(["--cpu-per-collector", str((os.cpu_count() or 1) + 1)])
    assert "--cpu-per-collector must be between" in capsys.readouterr().err
