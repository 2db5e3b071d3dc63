"""`scripts/testnet`: a multi-node flockd network on 127.0.0.1."""

from flockd.testnet.main import main

__all__ = ["main"]
