"""Gossip topics over libp2p gossipsub, carrying signed envelopes (see envelope.py).

Inbound checks run in a libp2p topic validator, which is the one place that knows the
relaying peer (for per-peer rate limits) and whose verdict also stops libp2p from relaying
bad messages further. Accepted messages go into a bounded per-topic inbox that a dedicated
task feeds to the handlers, so a slow handler never makes libp2p's 32-slot subscription
channel overflow (it drops silently when full). The inbox is bounded in messages, bytes and
messages per relaying peer: a flood is dropped (and counted), it never crowds out the others.
Invalid envelopes earn their relayer misbehaviour points (see scoring.py).
"""

from __future__ import annotations

import logging
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from typing import TYPE_CHECKING

import trio
from eth_keys.datatypes import PrivateKey
from eth_utils import to_checksum_address
from libp2p.peer.id import ID
from libp2p.pubsub.pb import rpc_pb2
from libp2p.pubsub.pubsub import Pubsub

from flockd.p2p import envelope as env
from flockd.p2p.abc import GossipHandler, GossipMessage, P2PError
from flockd.p2p.envelope import EnvelopeError, EnvelopeGuard, seal
from flockd.p2p.limits import P2PLimits
from flockd.stats import Counters

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

logger = logging.getLogger("flockd.p2p")
_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,63}")
# Misbehaviour points for an envelope the relayer should never have passed on: an honest
# relayer runs these same checks. Stale, future and replayed envelopes cost nothing (clock
# skew and slow paths happen to honest peers); a rate overrun costs a little.
_OFFENCE_POINTS: dict[type[EnvelopeError], float] = {
    env.RateLimited: 1.0,
    env.EnvelopeTooLarge: 10.0,
    env.MalformedEnvelope: 10.0,
    env.UnsupportedVersion: 2.0,
    env.BadEnvelopeField: 10.0,
    env.UnsignedEnvelope: 10.0,
    env.ForgedEnvelope: 10.0,
}
# (relaying peer id, points, reason): the service scores it, and bans at its threshold.
OffenceReport = Callable[[str, float, str], None]


def topic_id(network_id: str, name: str) -> str:
    """`flock/<network-id>/<name>`: topics of different networks never mix."""
    if not _NAME.fullmatch(name):
        raise P2PError(f"invalid topic name {name!r} (use [a-z0-9_.-], at most 64)")
    return f"flock/{network_id}/{name}"


class Gossip:
    def __init__(
        self,
        key: PrivateKey,
        *,
        self_id: ID,
        network_id: str,
        limits: P2PLimits,
        counters: Counters,
        report: OffenceReport,
        banned_peer: Callable[[str], bool],  # by relaying peer id
        banned_sender: Callable[[str], bool],  # by the envelope's (checksummed) sender address
        clock: Callable[[], float] = time.time,  # wall clock: envelope times cross machines
    ) -> None:
        self._key = key
        self._self_id = self_id
        self._self_bytes = self_id.to_bytes()
        self._network_id = network_id
        self._limits = limits
        self._clock = clock
        self._guard = EnvelopeGuard(
            network_id,
            max_size=limits.max_envelope,
            freshness_past=limits.freshness_past,
            freshness_future=limits.freshness_future,
            relay_rate=limits.relay_rate,
            relay_burst=limits.relay_burst,
            relay_bytes_rate=limits.relay_bytes_rate,
            relay_bytes_burst=limits.relay_bytes_burst,
        )
        self._counters = counters
        self._report = report
        self._banned_peer = banned_peer
        self._banned_sender = banned_sender
        self._handlers: defaultdict[str, list[GossipHandler]] = defaultdict(list)
        self._inboxes: dict[str, _Inbox] = {}
        self._pubsub: Pubsub | None = None
        self._nursery: trio.Nursery | None = None
        self._publish_lock = trio.Lock()

    def subscribe(self, name: str, handler: GossipHandler) -> None:
        topic_id(self._network_id, name)  # validate now, not when the task starts
        first = name not in self._handlers
        self._handlers[name].append(handler)
        if first and self._nursery is not None:
            self._nursery.start_soon(self._serve_topic, name)

    async def start(self, pubsub: Pubsub, nursery: trio.Nursery) -> None:
        self._pubsub = pubsub
        self._nursery = nursery
        for name in list(self._handlers):
            await nursery.start(self._serve_topic, name)

    async def publish(self, name: str, kind: str, payload: object) -> None:
        if self._pubsub is None:
            raise P2PError("the p2p service is not running")
        sealed = seal(
            self._key,
            network_id=self._network_id,
            kind=kind,
            payload=payload,
            time=int(self._clock()),
            max_size=self._limits.max_envelope,
        )
        # Our own envelope echoed back by a peer is then a replay, not a new message.
        self._guard.remember(sealed.id, self._clock())
        async with self._publish_lock:
            await self._wait_for_queue_room(self._pubsub)
            await self._pubsub.publish(topic_id(self._network_id, name), sealed.data)

    async def _wait_for_queue_room(self, pubsub: Pubsub) -> None:
        # libp2p keeps 32 outbound RPCs per peer and silently drops the rest: pace instead.
        deadline = trio.current_time() + self._limits.publish_pace_max_wait
        high = self._limits.publish_queue_high
        while any(len(queue) >= high for queue in pubsub.peer_queues.values()):
            if trio.current_time() >= deadline:
                logger.warning("gossip outbound queue still full; publishing anyway")
                return
            await trio.sleep(0.005)

    async def _serve_topic(
        self, name: str, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        assert self._pubsub is not None
        topic = topic_id(self._network_id, name)
        inbox = self._inboxes[name] = _Inbox(self._limits)
        # The validator must be in place before the first message can arrive.
        self._pubsub.set_topic_validator(
            topic, lambda peer, msg: self._validate(name, peer, msg), False
        )
        subscription = await self._pubsub.subscribe(topic)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._drain, subscription)
            task_status.started()
            async for message, size in inbox.receive:
                inbox.taken(message.peer_id, size)
                for handler in list(self._handlers[name]):
                    try:
                        await handler(message)
                    except Exception:
                        logger.exception("gossip handler for %s/%s failed", name, message.kind)

    @staticmethod
    async def _drain(subscription: object) -> None:
        # Everything was already taken by the validator; libp2p's subscription channel
        # only has to be kept empty so libp2p never reports it full.
        async for _ in subscription:  # type: ignore[attr-defined]
            pass

    def _validate(self, name: str, forwarder: ID, msg: rpc_pb2.Message) -> bool:
        if msg.from_id == self._self_bytes:
            # Our own publish passes (so libp2p sends it); echoes from peers are dropped.
            return forwarder == self._self_id
        relayer = forwarder.to_base58()
        if self._banned_peer(relayer):
            self._counters.incr("gossip_dropped")
            return False
        try:
            envelope = self._guard.accept(msg.data, relayer=relayer, now=self._clock())
        except EnvelopeError as exc:
            self._counters.incr("gossip_dropped" if isinstance(exc, env.RateLimited) else "gossip_rejected")
            logger.debug("gossip from %s on %s rejected: %s", relayer, name, exc)
            points = _OFFENCE_POINTS.get(type(exc), 0.0)
            if points:
                self._report(relayer, points, f"{type(exc).__name__}: {exc}")
            return False
        sender = to_checksum_address(envelope.sender)
        if self._banned_sender(sender):
            self._counters.incr("gossip_dropped")
            return False
        message = GossipMessage(
            topic=name,
            kind=envelope.kind,
            sender=sender,
            peer_id=relayer,
            payload=envelope.payload,
            time=envelope.time,
        )
        if not self._inboxes[name].offer(message, len(msg.data)):
            # Neither delivered nor relayed: a peer that needs it hears it from another.
            self._counters.incr("gossip_dropped")
            logger.debug("gossip inbox for %s full: dropped a message relayed by %s", name, relayer)
            return False
        return True


class _Inbox:
    """Accepted messages of one topic waiting for its handlers, bounded in count, bytes and
    count per relaying peer."""

    def __init__(self, limits: P2PLimits) -> None:
        self._limits = limits
        self._send, self.receive = trio.open_memory_channel[tuple[GossipMessage, int]](
            limits.gossip_inbox
        )
        self._bytes = 0
        self._per_peer: Counter[str] = Counter()

    def offer(self, message: GossipMessage, size: int) -> bool:
        limits = self._limits
        if (
            self._bytes + size > limits.gossip_inbox_bytes
            or self._per_peer[message.peer_id] >= limits.gossip_inbox_per_peer
        ):
            return False
        try:
            self._send.send_nowait((message, size))
        except trio.WouldBlock:
            return False
        self._bytes += size
        self._per_peer[message.peer_id] += 1
        return True

    def taken(self, peer_id: str, size: int) -> None:
        self._bytes -= size
        self._per_peer[peer_id] -= 1
        if self._per_peer[peer_id] <= 0:
            del self._per_peer[peer_id]
