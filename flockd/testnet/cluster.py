"""N real daemons on 127.0.0.1, one process each: the testnet's and the integration tests' engine."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flockd.datadir import IPC_SOCKET
from flockd.rpc.client import IPCClient

PASSWORD = "flockd-testnet"  # testnet keys guard nothing of value
START_WAVE = 8  # daemons started at once after node 0 (Cluster.start)

# configure_attacks appends this section last, so it can cut it off again on a re-run.
_ATTACK_HEADER = "\n# set by the testnet (--malicious): this node is MALICIOUS\n[attack]\n"


def backup_after_periods(nodes: int) -> int:
    """The genesis's K (slots an in-turn authority has before the next may seal): 2, and
    nodes/8 above 16 nodes. 32 daemons on 2 cores stall for 2-5 s at a time, so with K = 2
    a late in-turn block raced its backup's: 643 reorganisations in the first 14 minutes,
    each re-executing blocks on a machine already short of CPU, and 15 s a block."""
    return max(2, nodes // 8)


def mesh_shortfall(seen: Mapping[int, Sequence[str] | None], ids: Mapping[str, int]) -> str:
    """Which nodes lack which peers, from each node's peer ids (None: it did not answer), so
    a mesh that did not form says where it broke: a node nobody reaches, or one that
    reaches nobody."""
    parts: list[str] = []
    for index, peers in sorted(seen.items()):
        if peers is None:
            parts.append(f"node{index} did not answer")
            continue
        lacks = sorted(i for peer, i in ids.items() if i != index and peer not in peers)
        if lacks:
            parts.append(f"node{index} lacks " + ", ".join(f"node{i}" for i in lacks))
    return "; ".join(parts) if parts else "every node now sees every peer"


def vote_section(scoring: str) -> str:
    return f"[vote]\nscoring = {json.dumps(scoring)}\n"


def with_setting(text: str, section: str, key: str, value: str | int) -> str:
    """A config file's text with ``key`` of ``[section]`` set to ``value`` (the section
    added, before any testnet [attack] section, when there is none); every other line kept."""
    lines = text.splitlines(keepends=True)
    headers = [i for i, line in enumerate(lines) if line.strip().startswith("[")]
    start = next((i for i in headers if lines[i].strip() == f"[{section}]"), None)
    setting = f"{key} = {json.dumps(value)}\n"
    if start is None:
        cut = text.index(_ATTACK_HEADER) if _ATTACK_HEADER in text else len(text)
        return text[:cut] + f"\n[{section}]\n" + setting + text[cut:]
    end = next((i for i in headers if i > start), len(lines))
    at = next((i for i in range(start + 1, end) if lines[i].split("=")[0].strip() == key), None)
    if at is None:
        return "".join([*lines[: start + 1], setting, *lines[start + 1 :]])
    return "".join([*lines[:at], setting, *lines[at + 1 :]])


def with_vote_scoring(text: str, scoring: str) -> str:
    """A config file's text with its [vote] section's ``scoring`` set."""
    return with_setting(text, "vote", "scoring", scoring)


class ClusterError(Exception):
    """A daemon failed to start, died, or did not reach the expected state in time."""


# Daemons stopped at once. Each stop closes its peers' connections and flushes its chain
# database; 32 at once on 2 cores starved one another past the daemon's 10 s grace, so
# six ended by their watchdog (docs/benchmarks.md, "32 daemons", run 11).
STOP_BATCH = 8


@dataclass
class Daemon:
    index: int
    datadir: Path
    address: str = ""
    peer_id: str = ""
    process: subprocess.Popen[bytes] | None = None
    log_path: Path = field(default_factory=Path)

    @property
    def ipc(self) -> Path:
        return self.datadir / IPC_SOCKET

    def client(self, timeout: float = 10.0) -> IPCClient:
        return IPCClient(self.ipc, timeout=timeout)

    def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Any:
        return self.client(timeout).call(method, params)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Cluster:
    def __init__(
        self, workdir: Path, size: int, *, extra_run_args: list[str] | None = None, port_base: int | None = None
    ) -> None:
        """`port_base`: node i listens on 127.0.0.1:port_base+i (default: a free port each)."""
        self.workdir = workdir
        self.daemons = [Daemon(i, workdir / f"node{i}") for i in range(size)]
        self.extra_run_args = extra_run_args or []
        self.port_base = port_base
        self.node_args: dict[int, tuple[str, ...]] = {}  # `flockd run` flags of one node, at every start
        self.env = {**os.environ, "FLOCKD_PASSWORD": PASSWORD}

    # -- set-up ---------------------------------------------------------------
    def init(self) -> None:
        """Keys and config for every datadir that has none yet (in this process: a
        `flockd init` subprocess per node would pay the imports N times over)."""
        from flockd.chain.node.network import install_genesis, network_genesis
        from flockd.datadir import init_datadir, initial_config
        from flockd.identity.keystore import NODE_KEYSTORE

        self.workdir.mkdir(parents=True, exist_ok=True)
        fresh = [d for d in self.daemons if not (d.datadir / NODE_KEYSTORE).exists()]
        for d in self.daemons:
            if d in fresh:
                init_datadir(d.datadir, PASSWORD, initial_config(), light_kdf=True)
            self._read_identity(d)
        if fresh:
            # One network: every node an authority, funded, all holding the same genesis.
            genesis = network_genesis([d.address for d in self.daemons],
                                      backup_after_periods=backup_after_periods(len(self.daemons)))
            for d in self.daemons:
                install_genesis(d.datadir, genesis, replace=True)

    def configure_votes(self, scoring: str) -> None:
        """Every node scores proposals with ``scoring`` (its [vote] section; the testnet
        gives all of them the same). Checked by loading each config."""
        from flockd.config import CONFIG_FILE, load_config

        for d in self.daemons:
            path = d.datadir / CONFIG_FILE
            path.write_text(with_vote_scoring(path.read_text(), scoring))
            load_config(d.datadir)

    def configure_confirmations(self, confirmations: int) -> None:
        """Every node's rounds act on logs ``confirmations`` blocks deep ([chain]
        round_confirmations): more blocks a round, against acting on blocks a
        reorganisation may replace."""
        from flockd.config import CONFIG_FILE, load_config

        for d in self.daemons:
            path = d.datadir / CONFIG_FILE
            path.write_text(with_setting(path.read_text(), "chain", "round_confirmations", confirmations))
            load_config(d.datadir)

    def configure_attacks(self, behaviours: Mapping[int, str]) -> None:
        """Make the nodes in ``behaviours`` (index -> spec) malicious, acting together: each
        gets an [attack] section naming every malicious node as a colluder. Every other
        node loses any such section a previous run in this workdir left behind."""
        from flockd.config import CONFIG_FILE, load_config

        colluders = [self.daemons[i].address for i in sorted(behaviours)]
        for d in self.daemons:
            path = d.datadir / CONFIG_FILE
            text = path.read_text()
            text = text[: text.index(_ATTACK_HEADER)] if _ATTACK_HEADER in text else text
            if d.index in behaviours:
                text += (
                    f"{_ATTACK_HEADER}behaviour = {json.dumps(behaviours[d.index])}\n"
                    f"colluders = {json.dumps(colluders)}\n"
                )
            path.write_text(text)
            load_config(d.datadir)  # a bad spec fails here, not in a daemon's log

    def _read_identity(self, d: Daemon) -> None:
        from flockd.identity.keystore import load_identity

        identity = load_identity(d.datadir, PASSWORD)
        d.address, d.peer_id = identity.address, identity.peer_id

    # -- processes ------------------------------------------------------------
    def start(self, *, timeout: float = 60.0, detach: bool = False) -> None:
        """Start node 0, then every other node bootstrapped to it, in waves of START_WAVE:
        each wave meshes with the nodes before it before the next one starts. Started all at
        once, 31 daemons import at once and dial node 0 at once, and on 2 cores its stream
        negotiations time out faster than the mesh forms (docs/benchmarks.md, "32 daemons")."""
        self.start_daemon(self.daemons[0], bootstrap=None, detach=detach)
        self.wait_ready(self.daemons[0], timeout)
        seed = self.bootstrap_addr()
        for first in range(1, len(self.daemons), START_WAVE):
            wave = self.daemons[first : first + START_WAVE]
            for d in wave:
                self.start_daemon(d, bootstrap=seed, detach=detach)
            for d in wave:
                self.wait_ready(d, timeout)
            if first + START_WAVE < len(self.daemons):  # more waves to come
                self.wait_full_mesh(timeout, among=self.daemons[: first + START_WAVE])

    def bootstrap_addr(self) -> str:
        seed = self.daemons[0]
        addr: str = seed.call("node_info")["listen_addrs"][0]
        return addr if "/p2p/" in addr else f"{addr}/p2p/{seed.peer_id}"

    def start_daemon(self, d: Daemon, *, bootstrap: str | None, detach: bool = False, extra_args: tuple[str, ...] = ()) -> None:
        """`detach`: the daemon outlives us (its own session); otherwise it is killed when
        this process dies, however it dies, so a killed testnet leaves no daemon behind."""
        args = [
            sys.executable, "-m", "flockd.cli", "run", "--datadir", str(d.datadir),
            *self.extra_run_args, *self.node_args.get(d.index, ()), *extra_args,
        ]
        if bootstrap:
            args += ["--bootstrap", bootstrap]
        if self.port_base is not None:
            args += ["--listen", f"/ip4/127.0.0.1/tcp/{self.port_base + d.index}"]
        d.log_path = d.datadir / "flockd.log"
        with open(d.log_path, "ab") as log:
            d.process = subprocess.Popen(
                args, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=detach,
                preexec_fn=None if detach else _die_with_parent(os.getpid()),
            )

    def wait_ready(self, d: Daemon, timeout: float) -> None:
        self.wait_for(lambda: d.call("node_info") is not None, timeout, f"node{d.index} control socket", d)

    def wait_for(self, check: Callable[[], bool], timeout: float, what: str, d: Daemon | None = None) -> None:
        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while time.monotonic() < deadline:
            for dd in [d] if d else self.daemons:
                if dd.process is not None and not dd.alive():
                    raise ClusterError(f"node{dd.index} exited with code {dd.process.returncode}: {self.last_words(dd)}")
            try:
                if check():
                    return
            except Exception as exc:  # not up yet: the socket may not exist
                last_error = exc
            time.sleep(0.2)
        raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what} (last error: {last_error})")

    def wait_full_mesh(self, timeout: float = 60.0, among: list[Daemon] | None = None) -> None:
        """Until every daemon (of `among`) sees every other one."""
        daemons = self.daemons if among is None else among
        want = len(daemons) - 1

        def full() -> bool:
            return all(len(d.call("net_peers")) >= want for d in daemons)

        try:
            self.wait_for(full, timeout, f"every node to see {want} peers")
        except ClusterError as exc:
            seen: dict[int, list[str] | None] = {}
            for d in daemons:
                try:
                    seen[d.index] = [p["peer_id"] for p in d.call("net_peers")]
                except Exception:
                    seen[d.index] = None
            ids = {d.peer_id: d.index for d in daemons}
            raise ClusterError(f"{exc}; {mesh_shortfall(seen, ids)}") from None

    def stop(self, timeout: float = 30.0, batch: int = STOP_BATCH) -> list[int | None]:
        """node_stop the daemons ``batch`` at a time, each batch given ``timeout`` seconds,
        then SIGTERM, then SIGKILL; returns exit codes."""
        codes: list[int | None] = []
        for start in range(0, len(self.daemons), batch):
            codes += self._stop_some(self.daemons[start : start + batch], timeout)
        return codes

    @staticmethod
    def _stop_some(daemons: list[Daemon], timeout: float) -> list[int | None]:
        for d in daemons:
            if d.alive():
                try:
                    d.call("node_stop")
                except Exception:
                    assert d.process is not None
                    d.process.send_signal(signal.SIGTERM)
        codes: list[int | None] = []
        deadline = time.monotonic() + timeout
        for d in daemons:
            if d.process is None:
                codes.append(None)
                continue
            try:
                codes.append(d.process.wait(timeout=max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                d.process.kill()
                codes.append(d.process.wait())
        return codes

    def kill(self, d: Daemon) -> None:
        assert d.process is not None
        d.process.send_signal(signal.SIGKILL)
        d.process.wait()
        d.process = None  # deliberately dead: not a failure for wait_for to report

    @staticmethod
    def last_words(d: Daemon) -> str:
        """The last line of a daemon's log, and where the rest is: one line for an error."""
        try:
            lines = [line.strip() for line in d.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            return "it left no log"
        return f"{lines[-1][:300] if lines else '(empty log)'} (log: {d.log_path})"


_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> Callable[[], None]:
    """A preexec_fn: the kernel sends the child SIGKILL when its parent dies (Linux)."""

    def arm() -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
            os._exit(70)  # could not arm it: better no daemon than an orphan
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(70)

    return arm


def heads(daemons: list[Daemon]) -> list[tuple[int, str]]:
    """(number, hash) of each daemon's chain head."""
    out = []
    for d in daemons:
        head = d.call("chain_head")
        out.append((head["number"], head["hash"]))
    return out


def agree_at_least(daemons: list[Daemon], height: int) -> bool:
    """Every daemon's head is the same block, at `height` or above."""
    seen = heads(daemons)
    return len(set(seen)) == 1 and seen[0][0] >= height
