"""The packages a testnet run needs, checked before anything imports them, so a broken
environment is one line naming what is missing rather than a traceback mid-run."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable

# Import names: the testnet process (rich, matplotlib) and the daemons it starts.
REQUIRED = ("rich", "matplotlib", "trio", "libp2p", "eth", "eth_account", "torch", "sklearn", "msgpack")


def missing_modules(names: Iterable[str] = REQUIRED) -> list[str]:
    missing = []
    for name in names:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(name)
    return missing
