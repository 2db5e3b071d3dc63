"""What a testnet workdir holds, checked before a run touches it.

A rerun continues the network in the workdir only when it is the one the flags ask for:
nodes node0..node{N-1}, each fully set up, all holding one genesis whose authorities are
exactly those nodes. Anything else (another node count, a run killed during set-up, a
genesis that differs) is said in one line and the run starts afresh: the workdir is
deleted, but only one that is recognisably a testnet's, never a directory of anything
else. Daemons still running in it (left by `--keep-running`) are never stopped behind
the user's back: the run refuses and names `--stop`.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path

from flockd.chain.node.genesis import Genesis, GenesisError
from flockd.chain.node.network import GENESIS_FILE
from flockd.config import CONFIG_FILE
from flockd.datadir import IPC_SOCKET, LOCK_FILE
from flockd.identity.keystore import NODE_KEYSTORE, VRF_KEYFILE
from flockd.rpc.client import IPCClient

_NODE_DIR = re.compile(r"node(0|[1-9][0-9]*)")
# What a run writes besides the node datadirs.
REPORT_DIR = "report"
TRACEBACK_FILE = "traceback.txt"
KNOWLEDGE_DIR = "knowledge"  # --pipeline: the serving node's documents
_OURS = frozenset({REPORT_DIR, TRACEBACK_FILE, KNOWLEDGE_DIR})
_NODE_FILES = (NODE_KEYSTORE, VRF_KEYFILE, CONFIG_FILE, GENESIS_FILE)


class WorkdirError(Exception):
    """The workdir cannot be used as it is; the message says what to do, in one line."""


@dataclass(frozen=True)
class RunningDaemon:
    node: str  # node0, node1, ...
    datadir: Path
    pid: int | None  # from the datadir lock, None when unreadable


def node_dirs(workdir: Path) -> dict[int, Path]:
    """The workdir's node datadirs by index."""
    if not workdir.is_dir():
        return {}
    found = {}
    for entry in workdir.iterdir():
        match = _NODE_DIR.fullmatch(entry.name)
        if match and entry.is_dir():
            found[int(match.group(1))] = entry
    return dict(sorted(found.items()))


def running_daemons(workdir: Path) -> list[RunningDaemon]:
    """Daemons running on the workdir's datadirs: each holds its datadir's flock, which
    the kernel drops when the daemon dies (kill -9 included), so a stale lock file is no
    false alarm."""
    running = []
    for index, datadir in node_dirs(workdir).items():
        lock = datadir / LOCK_FILE
        if not lock.exists():
            continue
        fd = os.open(lock, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode(errors="replace").strip()
            running.append(RunningDaemon(f"node{index}", datadir, int(text) if text.isdigit() else None))
        finally:
            os.close(fd)
    return running


def describe_running(running: list[RunningDaemon]) -> str:
    return ", ".join(f"{d.node} (pid {d.pid or '?'})" for d in running)


def stop_running(running: list[RunningDaemon], timeout: float = 30.0) -> list[RunningDaemon]:
    """Stop daemons this process did not start: node_stop, then SIGTERM, then SIGKILL,
    each until its datadir lock is free. Returns those still running (none, normally)."""
    for d in running:
        try:
            IPCClient(d.datadir / IPC_SOCKET, timeout=5.0).call("node_stop")
        except Exception:  # not answering: the signals below
            _signal(d, signal.SIGTERM)
    for sig in (signal.SIGTERM, signal.SIGKILL, None):
        deadline = time.monotonic() + timeout / 2
        while time.monotonic() < deadline and _still_running(running):
            time.sleep(0.2)
        left = _still_running(running)
        if not left or sig is None:
            return left
        for d in left:
            _signal(d, sig)
    return _still_running(running)


def _still_running(daemons: list[RunningDaemon]) -> list[RunningDaemon]:
    # The lock goes a moment before the process: wait for both.
    locked = {r.datadir for d in daemons for r in running_daemons(d.datadir.parent)}
    return [d for d in daemons if d.datadir in locked or (d.pid is not None and _alive(d.pid))]


def _alive(pid: int) -> bool:
    """Running, and not a zombie waiting for a parent that may never reap it (Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _signal(d: RunningDaemon, sig: signal.Signals) -> None:
    if d.pid is not None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(d.pid, sig)


def check_reusable(workdir: Path, nodes: int) -> str | None:
    """Why the workdir's network is not the one asked for (a phrase), or None when it is,
    or when there is none. Raises WorkdirError for a workdir that is not a testnet's."""
    if not workdir.exists():
        return None
    if not workdir.is_dir():
        raise WorkdirError(f"{workdir} is not a directory: pick another --workdir")
    foreign = sorted(e.name for e in workdir.iterdir() if e.name not in _OURS and not _NODE_DIR.fullmatch(e.name))
    if foreign:
        raise WorkdirError(
            f"{workdir} holds files no testnet wrote ({', '.join(foreign[:3])}): pick another --workdir"
        )
    found = node_dirs(workdir)
    if not found:
        return None
    if list(found) != list(range(nodes)):
        return f"it holds a {len(found)}-node network ({_names(found)}), --nodes asks for {nodes}"
    for index, datadir in found.items():
        missing = [name for name in _NODE_FILES if not (datadir / name).is_file()]
        if missing:
            return f"node{index} has no {missing[0]} (a run stopped during set-up)"
    genesis_bytes = (found[0] / GENESIS_FILE).read_bytes()
    for index, datadir in found.items():
        if (datadir / GENESIS_FILE).read_bytes() != genesis_bytes:
            return f"node{index}'s genesis differs from node0's"
    try:
        authorities = [a.hex() for a in Genesis.from_json(genesis_bytes).authorities]
    except GenesisError as exc:
        return f"node0's genesis is unreadable ({exc})"
    addresses = [_keystore_address(datadir) for datadir in found.values()]
    if authorities != addresses:
        return "its genesis names other authorities than its nodes"
    return None


def _names(found: dict[int, Path]) -> str:
    indexes = list(found)
    if indexes == list(range(len(indexes))):
        return f"node0-node{indexes[-1]}" if len(indexes) > 1 else "node0"
    return ", ".join(f"node{i}" for i in indexes[:6]) + (", ..." if len(indexes) > 6 else "")


def _keystore_address(datadir: Path) -> str | None:
    try:
        address = json.loads((datadir / NODE_KEYSTORE).read_text()).get("address")
    except (OSError, ValueError, AttributeError):
        return None
    return address.lower().removeprefix("0x") if isinstance(address, str) else None


def busy_port(ports: range) -> int | None:
    """The first of `ports` that 127.0.0.1 cannot listen on, or None."""
    for port in ports:
        with socket.socket() as s:
            # As the daemons' listeners bind: a port whose only sockets are an earlier run's
            # connections in TIME_WAIT is free to them.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return port
    return None


def free_port() -> int:
    """A port nothing listens on right now (for a daemon's extra listener)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
