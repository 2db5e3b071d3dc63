"""flockd: a peer-to-peer daemon for federated learning settled on an EVM chain."""

__version__ = "0.1.0"
