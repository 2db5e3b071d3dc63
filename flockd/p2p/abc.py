"""The p2p layer's face towards the rest of the daemon (node, RPC, chain, rounds)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal

Direction = Literal["inbound", "outbound"]


@dataclass(frozen=True)
class PeerInfo:
    peer_id: str  # libp2p peer id (secp256k1, 16Uiu2...)
    address: str  # the same participant's Ethereum address (checksummed)
    addrs: list[str]  # multiaddrs we know for it
    direction: Direction
    latency_ms: float | None  # last measured round trip, None until measured


@dataclass(frozen=True)
class GossipMessage:
    """A gossip envelope that passed signature, freshness, replay and rate checks."""

    topic: str
    kind: str
    sender: str  # Ethereum address recovered from the envelope signature
    peer_id: str  # the libp2p peer that relayed it to us
    payload: object  # msgpack-decoded payload
    time: int  # sender's unix time (seconds)


GossipHandler = Callable[[GossipMessage], Awaitable[None]]
# A blob handler gets (remote peer id, kind, data) and returns a reply blob or None.
BlobHandler = Callable[[str, str, bytes], Awaitable[bytes | None]]
# The same, handed the buffer the blob arrived in: the handler owns it (the network keeps no
# reference), so a large blob reaches it without a copy.
BlobBufferHandler = Callable[[str, str, bytearray], Awaitable[bytes | None]]


class P2PNetwork(ABC):
    """What the daemon needs of the network: peers, gossip, and direct blob streams."""

    @property
    @abstractmethod
    def peer_id(self) -> str: ...

    @abstractmethod
    def listen_addrs(self) -> list[str]: ...

    @abstractmethod
    def peers(self) -> list[PeerInfo]: ...

    @abstractmethod
    async def connect(self, multiaddr: str) -> str:
        """Dial a peer; returns its peer id. Raises P2PError with a clear message."""

    @abstractmethod
    async def publish(self, topic: str, kind: str, payload: object) -> None:
        """Sign and gossip `payload` (any msgpack value) under `kind` on `topic`.

        `topic` is a short name ([a-z0-9_.-]); the network id is added to it. Raises
        EnvelopeTooLarge (a P2PError) above the gossip cap: send large data as a blob."""

    @abstractmethod
    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        """Best before run() (also works after). Handlers for a topic run one message at a
        time in the service's nursery; our own messages are not delivered back to us."""

    @abstractmethod
    def handle_blobs(self, kind: str, handler: BlobHandler, *, max_size: int) -> None:
        """Accept inbound blobs of `kind` ([a-z0-9_.-]) up to `max_size` bytes."""

    def handle_blob_buffers(self, kind: str, handler: BlobBufferHandler, *, max_size: int) -> None:
        """As handle_blobs, the handler taking the blob's own buffer. This default copies
        each blob into one; a network that receives into a buffer hands it over instead."""

        async def copied(peer_id: str, blob_kind: str, data: bytes) -> bytes | None:
            return await handler(peer_id, blob_kind, bytearray(data))

        self.handle_blobs(kind, copied, max_size=max_size)

    @abstractmethod
    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        """Open a stream to peer_id, send one blob, return the peer's reply blob (if any).

        Raises BlobRejected (with the peer's reason) when refused, other BlobError
        subclasses when the transfer fails, P2PError when the peer cannot be reached."""


    @abstractmethod
    def penalize_peer(self, peer_id: str, points: float, reason: str) -> None:
        """Report invalid data from a directly connected peer (a bad reply to our request).
        Enough points ban it for a while."""

    @abstractmethod
    def penalize_sender(self, address: str, points: float, reason: str) -> None:
        """Report invalid data authored by a participant (the signer of a gossip envelope),
        whichever peer relayed it: honest relays cannot judge a payload, its author can."""


class P2PError(Exception):
    """A network operation failed (unreachable peer, refused stream, bad address)."""
