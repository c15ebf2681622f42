"""The ``dlrlens`` command: what each subcommand prints and exits with, that its processes
behave (the dashboard stops on SIGTERM and frees its port, the collector never loads the
dashboard), and that every command the product prints works as printed: the dashboard's
empty-data notice and the README's commands."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from dashboard import state
from dashboard.queries import Store
from dlrlens import cli
from dlrlens.store import layout
from dlrlens.store.compaction import bytes_per_receipt
from tests.support.factory import demo_rows, write_demo_flushes, write_receipts
from tests.support.servers import REPO, free_port, stop_process_group, wait_until
from tests.support.store_files import synthetic_receipts, visible_files, write_flush_files

README = (REPO / "README.md").read_text()
SUBCOMMANDS = [name for name, *_ in cli.SUBCOMMANDS]


def clean_env(**extra: str) -> dict:
    """The environment without the caller's DLRLENS_* settings (a token would refuse posts)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DLRLENS_")}
    return env | extra


def dlrlens(*args: str, env: dict | None = None, cwd: Path = REPO, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run ``dlrlens ARGS`` as its own process, as a shell would (``python -m dlrlens``)."""
    return subprocess.run([sys.executable, "-m", "dlrlens", *args], cwd=cwd, env=env or clean_env(),
                          capture_output=True, text=True, timeout=timeout)


def as_argv(command: str) -> list[str]:
    """A printed ``dlrlens ...`` command line as this interpreter's argv (shell quoting honoured)."""
    words = shlex.split(command)
    assert words[0] == "dlrlens", command
    return [sys.executable, "-m", "dlrlens", *words[1:]]


def port_free(port: int) -> bool:
    """Nothing listens on 127.0.0.1:``port`` (a connection is refused and the port can be bound)."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", port)) == 0:
            return False
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT of the probes is fine
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


@contextlib.contextmanager
def process_group(argv: list[str], log_path: Path, **kwargs):
    """``argv`` in its own process group, output to ``log_path``; the whole group is always stopped."""
    with open(log_path, "ab") as log:
        process = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, **kwargs)
    try:
        yield process
    finally:
        stop_process_group(process, 30)


# --------------------------------------------------------------------------- output and exit codes


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_demo_flushes(tmp_path_factory.mktemp("cli") / "data")


def test_report_prints_what_it_wrote(data_dir, tmp_path, capsys):
    out = tmp_path / "november.json"
    assert cli.main(["report", "--data", str(data_dir), "--from", "2026-11-01", "--to", "2026-11-04",
                     "--tz", "Europe/Berlin", "--campaign", "welcome", "--campaign", "reminder",
                     "--output", str(out)]) == 0
    messages = sum(row["messages"] for row in json.loads(out.read_text())["Campaigns"])
    assert capsys.readouterr().out == f"wrote {out} (json): {messages} messages, 2 campaigns\n"

    assert cli.main(["report", "--data", str(data_dir), "--output", str(tmp_path)]) == 0  # a directory
    assert capsys.readouterr().out.startswith(f"wrote {tmp_path / 'dlrlens-campaign-report_all-time.xlsx'} (xlsx): "
                                              "250 messages")


@pytest.mark.parametrize("argv, message_part", [
    (["--from", "2026-13-01"], "--from '2026-13-01' is not a date"),
    (["--to", "yesterday"], "--to 'yesterday' is not a date"),
    (["--from", "2026-11-05", "--to", "2026-11-01"], "is before --from"),
    (["--tz", "Mars/Olympus"], "unknown time zone 'Mars/Olympus'"),
])
def test_report_refuses_bad_input_with_status_2(data_dir, tmp_path, capsys, argv, message_part):
    out = tmp_path / "r.xlsx"
    assert cli.main(["report", "--data", str(data_dir), *argv, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dlrlens report: error: ") and message_part in err
    assert not out.exists()


def test_report_fails_without_data_or_a_writable_file(data_dir, tmp_path, capsys):
    assert cli.main(["report", "--data", str(tmp_path / "nothing"), "--output", str(tmp_path / "r.csv")]) == 1
    assert f"dlrlens report: error: no receipt files under {(tmp_path / 'nothing').resolve()}" in capsys.readouterr().err
    unwritable = tmp_path / "missing-folder" / "r.csv"
    assert cli.main(["report", "--data", str(data_dir), "--output", str(unwritable)]) == 1
    assert f"dlrlens report: error: cannot write {unwritable}: " in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["report", "--format", "pdf", "--output", "x"])


def test_compact_prints_what_it_did(tmp_path, capsys):
    data = tmp_path / "data"
    write_flush_files(data, synthetic_receipts(2000, seed=13), 5)

    assert cli.main(["compact", "--data", str(data), "--min-age", "0", "--settle", "0", "--grace", "0.2"]) == 0

    out = capsys.readouterr().out
    size, receipts = bytes_per_receipt(data)
    assert len(visible_files(data)) == 1
    assert "partitions: 1 examined, 1 compacted" in out
    assert "merged 5 files into 1 (2,000 rows)" in out and "removed 5 merged files" in out
    assert "waiting 0 s for running queries before deleting the merged files" in out
    assert f"stored: 2,000 receipts in {size / 1e6:.1f} MB, {size / receipts:.1f} bytes per receipt" in out
    defaults = cli.build_parser("compact").parse_args(["compact"])
    assert (defaults.min_age, defaults.settle, defaults.grace) == (60.0, 600.0, 30.0)


def test_rebuild_prints_what_it_did(tmp_path, capsys):
    data = tmp_path / "data"
    write_receipts(data, demo_rows(40, seed=2))
    assert cli.main(["rebuild", "--data", str(data), "--memory-limit", "256MB", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert re.fullmatch(r"rebuilt the per-message state: 40 messages from [\d,]+ receipt rows in \d+ files -> "
                        r"\d+ derived files \(version 1\) in [\d.]+ s\n", out), out


# --------------------------------------------------------------------------- processes


def test_every_subcommand_answers_help():
    top = dlrlens("--help")
    assert top.returncode == 0 and all(name in top.stdout for name in SUBCOMMANDS)
    for name in SUBCOMMANDS:
        shown = dlrlens(name, "--help")
        assert shown.returncode == 0, shown.stderr
        assert shown.stdout.startswith(f"usage: dlrlens {name} ")
        assert ("--data DIR" in shown.stdout) == (name != "simulate")  # simulate posts to a URL


def test_the_collector_command_never_loads_the_dashboard(tmp_path):
    code = "\n".join([
        "import sys",
        "import collector.server",
        "collector.server.serve = lambda *args, **kwargs: None  # everything but the server itself",
        "from dlrlens import cli",
        "assert cli.main(['collector', '--data', sys.argv[1]]) == 0",
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'dashboard', 'streamlit', 'plotly'}))",
    ])
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "data")], cwd=REPO, env=clean_env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "[]"


@pytest.mark.slow
def test_the_dashboard_stops_on_sigterm_and_frees_its_port(tmp_path):
    """``dlrlens dashboard`` becomes Streamlit (exec), so a service manager's SIGTERM to the pid
    it started reaches the server itself: it exits and the port is free again."""
    port = free_port()
    argv = [sys.executable, "-m", "dlrlens", "dashboard", "--port", str(port), "--data", str(tmp_path / "data")]
    with process_group(argv, tmp_path / "dashboard.log", cwd=REPO, env=clean_env()) as process:
        wait_until(lambda: process.poll() is not None or not port_free(port), 90, interval=0.2,
                   what="the dashboard's port")
        assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
        assert requests.get(f"http://127.0.0.1:{port}/_stcore/health", timeout=10).text == "ok"
        os.kill(process.pid, signal.SIGTERM)  # the pid alone, as systemd's KillMode=process would
        began = time.monotonic()
        process.wait(timeout=10)
        wait_until(lambda: port_free(port), 5, interval=0.1, what="the port to be free")
        assert time.monotonic() - began < 10


# --------------------------------------------------------------------------- commands as printed


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """Run the empty-data notice's commands as printed (the collector's port made a free one):
    the collector on a data folder whose name needs quoting, then the simulator against it.
    Returns (data folder, the commands, the simulator's run)."""
    root = tmp_path_factory.mktemp("notice")
    directory = root / "my receipts"
    commands = re.findall(r"`(dlrlens [^`]+)`", state.collecting_hint(directory))
    assert [shlex.split(c)[1] for c in commands] == ["collector", "simulate"], commands
    port = free_port()
    printed = str(state.NOTICE_COLLECTOR_PORT)
    collector_argv, simulate_argv = (
        [w.replace(f":{printed}/", f":{port}/") if w != printed else str(port) for w in as_argv(c)]
        for c in commands)
    assert collector_argv != as_argv(commands[0]) and simulate_argv != as_argv(commands[1])  # the port was named
    with process_group(collector_argv, root / "collector.log", cwd=root, env=clean_env()) as collector:
        def healthy():
            assert collector.poll() is None, (root / "collector.log").read_text()[-3000:]
            with contextlib.suppress(requests.RequestException):
                return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        wait_until(healthy, 60, interval=0.2, what="the collector")
        simulated = subprocess.run(simulate_argv, cwd=root, env=clean_env(), capture_output=True, text=True,
                                   timeout=300)
    return directory, commands, simulated


@pytest.mark.slow
def test_the_empty_data_notice_commands_work_as_printed(demo_data):
    directory, commands, simulated = demo_data
    assert simulated.returncode == 0, simulated.stdout + simulated.stderr
    summary = simulated.stdout.strip().splitlines()[-1]
    posts = int(re.search(r"simulate: (\d+) posts", summary).group(1))
    assert f"{posts} acked, 0 non-2xx, 0 errors" in summary
    assert layout.has_receipts(directory)
    with Store(directory) as store:
        assert store.has_data()  # the notice is gone


def readme_commands(inline: bool = True) -> list[str]:
    """Every ``dlrlens ...`` command the README shows: in inline code (unless not ``inline``)
    and on lines of code blocks (continuation lines joined)."""
    commands = re.findall(r"`(dlrlens [^`]+)`", README) if inline else []
    block, pending = False, ""
    for line in README.splitlines():
        if line.startswith("```"):
            block = not block
            continue
        if block:
            line, pending = pending + line.strip(), ""
            if line.endswith("\\"):
                pending = line[:-1]
                continue
            found = re.search(r"(?:^|\s)(dlrlens\s.*?)(?:\s+#.*)?$", line)
            if found and not line.startswith("#"):
                commands.append(found.group(1))
    return commands


def test_readme_commands_use_real_subcommands_and_options():
    commands = readme_commands()
    table = {c.split()[1] for c in re.findall(r"^\| `(dlrlens [^`]+)` \|", README, re.MULTILINE)}
    assert table == set(SUBCOMMANDS), "the README's Commands table lists every subcommand"
    options: dict[str, set[str]] = {}
    for command in commands:
        words = command.split()
        assert words[1] in SUBCOMMANDS or words[1].startswith("-"), command
        options.setdefault(words[1], set()).update(re.findall(r"(?<![\w-])--?[a-z][a-z-]*", command))
    for subcommand, used in options.items():
        shown = dlrlens(*([subcommand] if not subcommand.startswith("-") else []), "--help")
        assert shown.returncode == 0, shown.stderr
        missing = {o for o in used if not re.search(rf"(?<![\w-]){re.escape(o)}\b", shown.stdout)}
        assert not missing, f"dlrlens {subcommand}: the README shows {sorted(missing)}"


@pytest.mark.slow
def test_readme_examples_run_as_printed(demo_data, tmp_path):
    """The README's concrete examples that work on data (not the servers: they run above)."""
    directory, _, _ = demo_data
    runnable = [c for c in readme_commands(inline=False) if c.split()[1] in ("report", "compact", "rebuild")]
    runnable += [c for c in ("dlrlens compact", "dlrlens rebuild") if f"`{c}`" in README]  # bare, as mentioned
    assert [c.split()[1] for c in runnable] == ["report", "compact", "rebuild"], runnable
    for command in runnable:
        done = subprocess.run(as_argv(command), cwd=tmp_path, env=clean_env(DLRLENS_DATA=str(directory)),
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"{command}\n{done.stdout}{done.stderr}"
    assert (tmp_path / "november.xlsx").exists()


def test_quick_start_scripts_parse():
    for script in ("scripts/start.sh", "scripts/test.sh", "scripts/venv.sh"):
        checked = subprocess.run(["bash", "-n", str(REPO / script)], capture_output=True, text=True)
        assert checked.returncode == 0, checked.stderr
    assert 'exec python -m dlrlens up "$@"' in (REPO / "scripts" / "start.sh").read_text()
