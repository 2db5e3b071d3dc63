"""scripts/testnet run again on the same workdir: with another node count, after a run
killed with -9, and while a --keep-running run's daemons are up. Each works or fails
with one line, and no daemon is ever left behind. Real daemons, kept cheap: one or two
nodes and `--rounds 0` (no task needed to form a network and tear it down)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flockd.testnet.workdir import running_daemons

pytestmark = pytest.mark.slow


def run_testnet(workdir: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flockd.testnet", "--workdir", str(workdir), "--rounds", "0", *args],
        capture_output=True, text=True, timeout=timeout,
    )


def daemon_pids(workdir: Path) -> list[int]:
    """Every live process whose command line names the workdir (daemons included)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (proc / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if str(workdir) in cmdline and "flockd.cli" in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


def wait_gone(workdir: Path, timeout: float = 30) -> list[int]:
    deadline = time.monotonic() + timeout
    while (left := daemon_pids(workdir)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def ok(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return done.stdout


@pytest.fixture
def workdir(short_tmp: Path):
    path = short_tmp / "tn"
    yield path
    for pid in daemon_pids(path):  # only if a test failed half-way
        os.kill(pid, signal.SIGKILL)


def test_rerun_with_more_then_fewer_nodes(workdir: Path) -> None:
    ok(run_testnet(workdir, "--nodes", "1"))
    out = ok(run_testnet(workdir, "--nodes", "2"))
    assert f"{workdir}: it holds a 1-node network (node0), --nodes asks for 2: starting afresh (deleting it)" in out
    assert wait_gone(workdir) == []
    out = ok(run_testnet(workdir, "--nodes", "1"))
    assert "it holds a 2-node network (node0-node1), --nodes asks for 1: starting afresh" in out
    assert sorted(p.name for p in workdir.iterdir()) == ["node0"]
    assert wait_gone(workdir) == []


def test_workdir_of_a_killed_run(workdir: Path) -> None:
    # --chain-blocks far ahead keeps the run waiting with its daemons up, until killed.
    run = subprocess.Popen(
        [sys.executable, "-m", "flockd.testnet", "--workdir", str(workdir), "--nodes", "2", "--rounds", "0",
         "--chain-blocks", "100000"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while len(running_daemons(workdir)) < 2:
            assert run.poll() is None and time.monotonic() < deadline, "the daemons never came up"
            time.sleep(0.5)
    finally:
        run.send_signal(signal.SIGKILL)
        run.wait()
    # Its daemons die with it (the kernel kills them), and the workdir is reused as it is.
    assert wait_gone(workdir) == []
    out = ok(run_testnet(workdir, "--nodes", "2"))
    assert "afresh" not in out and "full mesh of 2 nodes" in out
    assert wait_gone(workdir) == []


def test_rerun_while_keep_running_daemons_are_up(workdir: Path) -> None:
    ok(run_testnet(workdir, "--nodes", "1", "--keep-running"))
    up = daemon_pids(workdir)
    assert len(up) == 1
    # Same flags or not, the run refuses in one line and touches neither daemon nor workdir.
    for flags in (["--nodes", "1"], ["--nodes", "2"], ["--nodes", "1", "--fresh"]):
        done = run_testnet(workdir, *flags)
        lines = (done.stdout + done.stderr).splitlines()
        assert done.returncode == 1 and len(lines) == 1, lines
        assert f"daemons of an earlier run are still up in {workdir}: node0 (pid {up[0]})" in lines[0]
        assert f"scripts/testnet --stop --workdir {workdir}" in lines[0]
        assert daemon_pids(workdir) == up
    out = ok(run_testnet(workdir, "--stop"))
    assert f"stopped node0 (pid {up[0]})" in out
    assert daemon_pids(workdir) == []
    assert "no daemon is running" in ok(run_testnet(workdir, "--stop"))
    ok(run_testnet(workdir, "--nodes", "1"))  # and the workdir is usable again
    assert wait_gone(workdir) == []
