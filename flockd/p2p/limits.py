"""Every bound the p2p layer enforces, in one place so an operator can see (and tune) them."""

from __future__ import annotations

from dataclasses import dataclass

KiB = 1024
MiB = 1024 * KiB


@dataclass(frozen=True)
class P2PLimits:
    # Peers.
    max_peers: int = 32  # we stop dialing exchanged peers, and refuse inbound ones, at this many
    dial_timeout: float = 10.0
    peer_exchange_interval: float = 5.0  # seconds between peer-list exchanges with each peer
    bootstrap_backoff_max: float = 30.0  # cap of the exponential retry delay for seeds

    # Gossip. libp2p silently drops messages over ~1 MiB, so we stay far below it.
    max_envelope: int = 256 * KiB
    freshness_past: float = 120.0  # envelopes older than this (seconds) are stale
    freshness_future: float = 30.0  # tolerated clock skew into the future
    relay_rate: float = 100.0  # envelopes per second accepted from one relaying peer...
    relay_burst: float = 400.0  # ...with this much burst
    relay_bytes_rate: float = 2 * MiB  # envelope bytes per second from one relaying peer...
    relay_bytes_burst: float = 8 * MiB  # ...with this much burst
    gossip_inbox: int = 256  # accepted messages waiting for a topic's handlers; more are dropped
    gossip_inbox_bytes: int = 16 * MiB  # ...and their bytes
    gossip_inbox_per_peer: int = 64  # of those, relayed by any one peer (a flood crowds out no one)
    publish_queue_high: int = 8  # pace publishing while a peer's outbound RPC queue is this full
    publish_pace_max_wait: float = 2.0

    # Misbehaviour: invalid data earns points (decaying); at the threshold the peer is
    # disconnected, and its connections, streams and envelopes are refused for ban_seconds.
    ban_threshold: float = 100.0
    score_decay: float = 0.5  # points forgiven per second
    ban_seconds: float = 600.0

    # Blob streams.
    blob_read_timeout: float = 15.0  # a read that makes no progress for this long fails
    # A whole transfer may take blob_read_timeout + size / blob_min_rate seconds: a peer
    # trickling bytes (each read making progress) cannot hold a slot for longer.
    blob_min_rate: float = 1 * MiB
    blob_reply_timeout: float = 120.0  # after our upload: the peer's handler time + its reply
    blob_chunk: int = 1 * MiB  # largest single read/write
    max_inbound_blobs: int = 8  # concurrent inbound transfers (each may hold max_size bytes)
    max_inbound_blobs_per_peer: int = 2  # one peer's share of them
    max_reply: int = 64 * MiB  # largest reply send_blob accepts
    # Blobs of bulk_min bytes or more go over bulk sessions (p2p/bulk.py): long-lived plain
    # TCP connections, keyed over the blob stream, carrying AES-GCM records of bulk_chunk.
    bulk_min: int = 1 * MiB
    bulk_chunk: int = 1 * MiB
    bulk_sessions: int = 64  # sessions open at once, all peers together (each peer: max_inbound_blobs_per_peer)
    bulk_idle: float = 60.0  # a session with no blob for this long is closed (dialers drop theirs at half)
