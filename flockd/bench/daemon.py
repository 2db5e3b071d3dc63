"""`scripts/bench daemon`: what an idle daemon with no task costs: resident memory, the
time from `flockd run` to an answering control socket, and to a running node.

Each tree is measured the same way: a fresh datadir (`flockd init --light-kdf`), then
`python -m flockd.cli run` with PYTHONPATH at that tree. "to socket" stops at the first
reply of any kind to `node_status` (a tree without that method answers "method not
found", which is an answer too); "to running" at the first `node_info` answered with a
result (a starting node refuses it with NODE_NOT_READY). The RSS (VmRSS of the process) is read after the daemon
has sat idle for `--idle` seconds, then it gets SIGTERM. `--baseline REV` also measures
that git revision of this repository (extracted with `git archive`), in the same run and
interleaved with the working tree, so both sides see the same machine load.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flockd.rpc.client import IPCClient

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "bench"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench daemon", description=__doc__)
    parser.add_argument("--baseline", metavar="REV", help="also measure this git revision (e.g. main)")
    parser.add_argument("--runs", type=int, default=3, help="daemon starts per tree")
    parser.add_argument("--idle", type=float, default=3.0, help="seconds idle before reading RSS")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="flockd-bench-") as scratch:
        trees = {"this tree": REPO}
        if args.baseline:
            trees[f"baseline {args.baseline}"] = extract(args.baseline, Path(scratch) / "baseline")
        samples: dict[str, list[Sample]] = {name: [] for name in trees}
        for run in range(args.runs):
            for name, tree in trees.items():
                datadir = Path(scratch) / f"d{run}-{len(samples[name])}-{abs(hash(name)) % 1000}"
                samples[name].append(measure(tree, datadir, args.idle))
    load = os.getloadavg()[0]
    print(f"load average at the end: {load:.1f} on {os.cpu_count()} cores")
    print("| tree | start to socket (s) | start to running (s) | CPU to running (s) | idle RSS (MB) | torch loaded | runs |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, runs in samples.items():
        socket, running, cpu, rss = (
            statistics.median(getattr(run, field) for run in runs) for field in ("to_socket", "to_running", "cpu", "rss_mb")
        )
        torch = "yes" if any(run.torch for run in runs) else "no"
        print(f"| {name} | {socket:.2f} | {running:.2f} | {cpu:.2f} | {rss:.0f} | {torch} | {len(runs)} |")
    print("(medians)")
    return 0


def extract(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "flockd", "contracts", "protocol"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


@dataclass(frozen=True)
class Sample:
    to_socket: float  # seconds from exec to the first reply on the control socket
    to_running: float  # seconds from exec to node_info answered with a result
    cpu: float  # CPU seconds the daemon used by then
    rss_mb: float  # VmRSS after the idle wait
    torch: bool  # torch mapped into the process


def measure(tree: Path, datadir: Path, idle: float) -> Sample:
    from flockd.rpc.client import IPCClient

    env = {**os.environ, "PYTHONPATH": str(tree), "FLOCKD_PASSWORD": PASSWORD}
    cli = [sys.executable, "-m", "flockd.cli"]
    # cwd = the tree: `python -m` puts the working directory first on sys.path
    subprocess.run([*cli, "init", "--datadir", str(datadir), "--light-kdf"], env=env, cwd=tree, check=True, capture_output=True)
    socket_path = datadir / "flockd.ipc"
    started = time.perf_counter()
    with open(datadir / "bench.log", "wb") as log:
        process = subprocess.Popen([*cli, "run", "--datadir", str(datadir)], env=env, cwd=tree, stdout=log, stderr=log)
    try:
        client = IPCClient(socket_path, timeout=5.0)
        wait_for_reply(process, client, "node_status", any_reply=True)  # "method not found" on an older tree
        to_socket = time.perf_counter() - started
        wait_for_reply(process, client, "node_info", any_reply=False)
        to_running = time.perf_counter() - started
        cpu = cpu_seconds(process.pid)
        time.sleep(idle)
        rss = vm_rss_mb(process.pid)
        torch = any("torch" in line for line in Path(f"/proc/{process.pid}/maps").read_text().splitlines())
        client.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return Sample(to_socket, to_running, cpu, rss, torch)


def wait_for_reply(process: subprocess.Popen[bytes], client: IPCClient, method: str, *, any_reply: bool) -> None:
    """Until `method` is answered with a result (or, with `any_reply`, with an error too)."""
    from flockd.rpc.errors import RPCError

    while True:
        if process.poll() is not None:
            raise RuntimeError(f"daemon exited with {process.returncode}")
        try:
            client.call(method)
            return
        except (ConnectionError, OSError):
            pass  # no socket yet
        except RPCError:
            if any_reply:
                return
        time.sleep(0.01)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of the process so far (less sensitive to a loaded machine
    than wall time)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
