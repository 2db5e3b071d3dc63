"""libp2p's own logger does not propagate (it sets propagate=False); send it into ours."""

from __future__ import annotations

import logging


class _IntoFlockdLogs(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        logging.getLogger("flockd.p2p.libp2p").handle(record)


def route_libp2p_logs(level: int = logging.WARNING) -> None:
    """Idempotent: libp2p records at `level` and above reach `flockd.p2p.libp2p`."""
    libp2p_logger = logging.getLogger("libp2p")
    libp2p_logger.setLevel(level)
    if not any(isinstance(h, _IntoFlockdLogs) for h in libp2p_logger.handlers):
        # A handler level too: some libp2p modules set their own loggers to INFO or DEBUG.
        libp2p_logger.addHandler(_IntoFlockdLogs(level))
