"""The data directory: its files, and the lock that keeps a second daemon out."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flockd.chain.node.genesis import Genesis
    from flockd.identity.keystore import Identity

IPC_SOCKET = "flockd.ipc"
LOCK_FILE = "flockd.lock"


class DatadirLockedError(Exception):
    """Another flockd process already runs on this datadir."""


class DatadirLock:
    """An flock(2) on <datadir>/flockd.lock, held for the daemon's lifetime.

    The kernel drops it when the process dies, kill -9 included, so a crash never
    leaves a stale lock behind; the pid inside is only for the error message.
    """

    def __init__(self, datadir: Path) -> None:
        self.path = datadir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DatadirLockedError(
                f"another flockd (pid {holder}) is already running on {self.path.parent}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DatadirLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def initial_config(
    *, listen: list[str] | None = None, bootstrap: list[str] | None = None, network: str | None = None
) -> str:
    """The commented default config.toml with the values given as flags set in place;
    validated (ConfigError), so a bad flag fails before a password is even asked for."""
    import json
    import tomllib

    from flockd.config import DEFAULT_CONFIG_TOML, config_from_dict

    text = DEFAULT_CONFIG_TOML
    for default_line, key, value in (
        ('listen = ["/ip4/127.0.0.1/tcp/0"]', "listen", listen),
        ("bootstrap = []", "bootstrap", bootstrap),
        ('network = "flock-local"', "network", network),
    ):
        if value is not None:
            text = text.replace(default_line, f"{key} = {json.dumps(value)}")
    config_from_dict(tomllib.loads(text))
    return text


def init_datadir(
    datadir: Path, password: str, config_text: str, *, light_kdf: bool = False, genesis: Genesis | None = None
) -> Identity:
    """`flockd init`: keys, config.toml and genesis.json. Without a network's genesis the
    node gets a chain of its own, sealed by itself alone. An existing key is never
    overwritten (IdentityError)."""
    from flockd.chain.node.network import GENESIS_FILE, install_genesis, network_genesis
    from flockd.config import CONFIG_FILE
    from flockd.files import write_new_file
    from flockd.identity.keystore import create_identity

    datadir.mkdir(parents=True, exist_ok=True)
    os.chmod(datadir, 0o700)
    identity = create_identity(datadir, password, light_kdf=light_kdf)
    if not (datadir / CONFIG_FILE).exists():
        write_new_file(datadir / CONFIG_FILE, config_text.encode(), mode=0o644)
    if not (datadir / GENESIS_FILE).exists():
        install_genesis(datadir, genesis or network_genesis([identity.address]))
    return identity


def record_deployment(datadir: Path, rpc_url: str, registry: str, token: str, arena: str = "", market: str = "") -> None:
    """Point config.toml at contracts on an external chain, keeping its comments; the
    result is validated before it replaces the old file. A config written before the
    Arena and the Market has no lines for them: they are added under [chain]."""
    import tomllib

    from flockd.config import CONFIG_FILE, ConfigError, config_from_dict

    path = datadir / CONFIG_FILE
    lines = path.read_text().splitlines(keepends=True)
    values = {"rpc_url": rpc_url, "registry": registry, "token": token, "arena": arena, "market": market}
    section, seen, chain_header = "", set(), None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped
            chain_header = i if section == "[chain]" else chain_header
        key = stripped.split("=", 1)[0].strip()
        if section == "[chain]" and key in values and "=" in stripped:
            lines[i] = f'{key} = "{values[key]}"\n'
            seen.add(key)
    if chain_header is not None:
        lines[chain_header + 1:chain_header + 1] = [f'{k} = "{values[k]}"\n' for k in ("arena", "market") if k not in seen]
        seen |= {"arena", "market"}
    if seen != set(values):
        raise ConfigError(f"{path}: no [chain] {', '.join(sorted(set(values) - seen))} line to set; add them by hand")
    text = "".join(lines)
    config_from_dict(tomllib.loads(text))
    tmp = path.with_name(path.name + ".new")
    tmp.write_text(text)
    tmp.replace(path)
