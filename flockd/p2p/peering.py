"""Keeping connected: seeds with backoff, dialing, and peer exchange (`/flock/peers/1`).

Each node asks every peer for the peers it knows right after connecting, then a few
random peers every `peer_exchange_interval`, and dials the unknown ones until `max_peers` are connected. So N
nodes bootstrapped to one seed end up in one mesh. The exchange's round trip on an open
stream is the latency reported for the peer. Inbound connections beyond `max_peers`, and
any connection of a banned peer, are closed as soon as they are reported.
"""

from __future__ import annotations

import contextlib
import logging
import random
from collections.abc import Callable

import trio
from libp2p.abc import IHost, INetConn, INetStream, INetwork, INotifee
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from multiaddr import Multiaddr

from flockd.p2p import peerx
from flockd.p2p.abc import P2PError
from flockd.p2p.limits import P2PLimits
from flockd.p2p.streams import close_stream, read_frame, write_frame
from flockd.stats import Counters

logger = logging.getLogger("flockd.p2p")

EXCHANGE_FANOUT = 3  # connected peers asked for their peers each peer_exchange_interval
# Exchanges spread news of a peer to both ends of a pair at about the same moment; if both
# dialed, each pair would hold two connections (two handshakes, and one of them is closed
# later, resetting its streams). So of two peers only the one with the smaller peer id
# dials an exchanged peer at once; the other gives it DIAL_DEFERRAL seconds (far more than
# a handshake), then dials if they are still apart.
DIAL_DEFERRAL = 1.0


class Peering:
    def __init__(
        self,
        host: IHost,
        limits: P2PLimits,
        *,
        seeds: list[Libp2pPeerInfo],
        own_addrs: Callable[[], list[str]],
        banned: Callable[[str], bool],
        counters: Counters,
    ) -> None:
        self._host = host
        self._banned = banned
        self._counters = counters
        self._me = host.get_id().to_base58()
        self._limits = limits
        self._seeds = seeds
        self._own_addrs = own_addrs
        self._addrs: dict[str, list[str]] = {}  # dialable addrs per peer (dialed or self-announced)
        self._latency_ms: dict[str, float] = {}
        self._failures: dict[str, tuple[int, float]] = {}  # peer -> (failed dials, retry after)
        self._deferred: dict[str, float] = {}  # exchanged peer left to dial us -> until when
        self._nursery: trio.Nursery | None = None
        self._busy: set[str] = set()  # peers with an exchange or dial in flight
        self._connects, self._connect_events = trio.open_memory_channel[tuple[str, bool]](256)
        host.get_network().register_notifee(_ConnectNotifee(self._connects))
        host.set_stream_handler(peerx.PROTOCOL, self._serve)  # type: ignore[arg-type]

    # --- what the service reports ---

    def connected(self) -> list[str]:
        return [p.to_base58() for p in self._host.get_network().get_connections_map()]

    def is_connected(self, peer_id: str) -> bool:
        return bool(self._host.get_network().get_connections(ID.from_base58(peer_id)))

    def addrs_of(self, peer_id: str) -> list[str]:
        return list(self._addrs.get(peer_id, []))

    def latency_of(self, peer_id: str) -> float | None:
        return self._latency_ms.get(peer_id)

    # --- dialing ---

    async def disconnect(self, peer_id: str) -> None:
        with contextlib.suppress(Exception):  # already gone: what we wanted
            await self._host.disconnect(ID.from_base58(peer_id))

    async def dial(self, peer_id: ID, addrs: list[Multiaddr]) -> None:
        try:
            with trio.fail_after(self._limits.dial_timeout):
                await self._host.connect(Libp2pPeerInfo(peer_id, addrs))
        except trio.TooSlowError as exc:
            raise P2PError(
                f"dialing {peer_id} timed out after {self._limits.dial_timeout}s"
            ) from exc
        except Exception as exc:  # libp2p raises assorted types (SwarmException, OSError, ...)
            raise P2PError(f"cannot reach {peer_id} at {[str(a) for a in addrs]}: {exc}") from exc
        self._addrs[peer_id.to_base58()] = [str(a) for a in addrs]

    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for seed in self._seeds:
                nursery.start_soon(self._keep_seed, seed)
            nursery.start_soon(self._exchange_on_connect, nursery)
            while True:
                self._forget_disconnected()
                allowed = []
                for peer_id in self.connected():
                    if self._banned(peer_id):
                        nursery.start_soon(self.disconnect, peer_id)
                    else:
                        allowed.append(peer_id)
                # A few peers an interval, not all (every peer is asked once on connect):
                # all of them is N^2 exchanges across a mesh of N, ~10 ms of CPU each;
                # 32 daemons on 2 cores spent both cores on it and never held a mesh.
                for peer_id in random.sample(allowed, min(len(allowed), EXCHANGE_FANOUT)):
                    nursery.start_soon(self._exchange, peer_id)
                await trio.sleep(self._limits.peer_exchange_interval)

    async def _keep_seed(self, seed: Libp2pPeerInfo) -> None:
        # Retry with exponential backoff; an unreachable seed is logged, never fatal.
        # Once connected, look again now and then, so a dropped seed is redialed.
        delay = 0.25
        while True:
            seed_id = seed.peer_id.to_base58()
            if not self.is_connected(seed_id) and not self._banned(seed_id):
                try:
                    await self.dial(seed.peer_id, list(seed.addrs))
                    logger.info("connected to bootstrap peer %s", seed.peer_id)
                except P2PError as exc:
                    # Loud on the first failure and at the slowest retry pace, quiet between.
                    quiet = 0.25 < delay < self._limits.bootstrap_backoff_max
                    log = logger.debug if quiet else logger.warning
                    log("bootstrap peer unreachable, retrying in %.1fs: %s", delay, exc)
                    await trio.sleep(delay)
                    delay = min(delay * 2, self._limits.bootstrap_backoff_max)
                    continue
            delay = 0.25
            await trio.sleep(self._limits.peer_exchange_interval)

    async def _exchange_on_connect(self, nursery: trio.Nursery) -> None:
        async for peer_id, inbound in self._connect_events:
            if self._banned(peer_id):
                await self.disconnect(peer_id)
            elif inbound and len(self.connected()) > self._limits.max_peers:
                self._counters.incr("inbound_refused")
                logger.info("refusing inbound peer %s: %d peers already", peer_id, self._limits.max_peers)
                await self.disconnect(peer_id)
            else:
                nursery.start_soon(self._exchange, peer_id)

    async def _exchange(self, peer_id: str) -> None:
        if peer_id in self._busy:
            return
        self._busy.add(peer_id)
        try:
            peers = await self._ask(peer_id)
        except P2PError as exc:
            logger.debug("peer exchange with %s failed: %s", peer_id, exc)
            return
        finally:
            self._busy.discard(peer_id)
        for candidate, addrs in peers:
            await self._consider(candidate, addrs)

    async def _ask(self, peer_id: str) -> peerx.PeerList:
        limits = self._limits
        try:
            with trio.fail_after(limits.dial_timeout):
                stream = await self._host.new_stream(ID.from_base58(peer_id), [peerx.PROTOCOL])  # type: ignore[list-item]
        except Exception as exc:  # timeouts and libp2p's assorted stream/dial errors
            raise P2PError(f"cannot open a peers stream: {exc!r}") from exc
        try:
            started = trio.current_time()
            request = peerx.encode_request(self._own_addrs())
            await write_frame(
                stream,
                peerx.REQUEST,
                request,
                chunk=limits.blob_chunk,
                timeout=limits.blob_read_timeout,
            )
            reply = await read_frame(
                stream, peerx.size_cap, chunk=limits.blob_chunk, timeout=limits.blob_read_timeout
            )
            self._latency_ms[peer_id] = (trio.current_time() - started) * 1000
            if reply.kind != peerx.REPLY:
                raise peerx.MalformedPeerList(
                    f"expected a {peerx.REPLY!r} frame, got {reply.kind!r}"
                )
            return peerx.decode_reply(reply.data)
        finally:
            await close_stream(stream)

    async def _consider(self, peer_id: str, addrs: list[str]) -> None:
        now = trio.current_time()
        failures, retry_at = self._failures.get(peer_id, (0, 0.0))
        if (
            peer_id == self._me
            or not addrs
            or now < retry_at
            or peer_id in self._busy
            or self._banned(peer_id)
            or self.is_connected(peer_id)
            or len(self.connected()) >= self._limits.max_peers
            or self._defers_to(peer_id, addrs, now)
        ):
            return
        self._busy.add(peer_id)
        try:
            await self.dial(ID.from_base58(peer_id), [Multiaddr(a) for a in addrs])
            self._failures.pop(peer_id, None)
            logger.info("connected to exchanged peer %s", peer_id)
        except P2PError as exc:
            backoff = min(2.0**failures, self._limits.bootstrap_backoff_max)
            self._failures[peer_id] = (failures + 1, now + backoff)
            logger.debug("exchanged peer %s unreachable: %s", peer_id, exc)
        finally:
            self._busy.discard(peer_id)

    def _defers_to(self, peer_id: str, addrs: list[str], now: float) -> bool:
        """Whether to leave dialing `peer_id` to it for now (see DIAL_DEFERRAL); the first
        time, we come back to it when the deferral ends."""
        if self._me < peer_id:
            return False
        if peer_id not in self._deferred and self._nursery is not None:
            until = now + min(DIAL_DEFERRAL, self._limits.peer_exchange_interval)
            self._deferred[peer_id] = until
            self._nursery.start_soon(self._consider_later, peer_id, addrs, until)
        return now < self._deferred.get(peer_id, now)

    async def _consider_later(self, peer_id: str, addrs: list[str], until: float) -> None:
        await trio.sleep_until(until)
        await self._consider(peer_id, addrs)

    async def _serve(self, stream: INetStream) -> None:
        limits = self._limits
        asker = stream.muxed_conn.peer_id.to_base58()
        try:
            request = await read_frame(
                stream, peerx.size_cap, chunk=limits.blob_chunk, timeout=limits.blob_read_timeout
            )
            if request.kind != peerx.REQUEST:
                raise peerx.MalformedPeerList(
                    f"expected a {peerx.REQUEST!r} frame, got {request.kind!r}"
                )
            announced = peerx.decode_request(request.data)
            if announced:
                self._addrs[asker] = announced
            reply = peerx.encode_reply(self._shareable(exclude=asker))
            await write_frame(
                stream,
                peerx.REPLY,
                reply,
                chunk=limits.blob_chunk,
                timeout=limits.blob_read_timeout,
            )
        except P2PError as exc:
            logger.debug("bad peer exchange request from %s: %s", asker, exc)
            await close_stream(stream, reset=True)
            return
        await close_stream(stream)

    def _shareable(self, *, exclude: str) -> peerx.PeerList:
        # Only peers we are connected to right now: stale addresses are not passed around.
        shared = [
            (peer_id, self._addrs[peer_id])
            for peer_id in self.connected()
            if peer_id != exclude and peer_id in self._addrs
        ]
        return shared[: peerx.MAX_PEERS]

    def _forget_disconnected(self) -> None:
        live = set(self.connected())
        for table in (self._addrs, self._latency_ms):
            for peer_id in [p for p in table if p not in live]:
                del table[peer_id]
        for peer_id in [p for p in self._deferred if p in live]:
            del self._deferred[peer_id]
        if len(self._failures) > 4 * peerx.MAX_PEERS:
            self._failures.clear()
        if len(self._deferred) > 4 * peerx.MAX_PEERS:
            self._deferred.clear()


class _ConnectNotifee(INotifee):
    """Tells Peering about every new connection (inbound or outbound), without blocking."""

    def __init__(self, events: trio.MemorySendChannel[tuple[str, bool]]) -> None:
        self._events = events

    async def connected(self, network: INetwork, conn: INetConn) -> None:
        inbound = str(getattr(conn, "direction", "")) == "inbound"
        # When full, drop: the periodic exchange catches up with this peer anyway, and the
        # periodic check below closes what is over the cap.
        with contextlib.suppress(trio.WouldBlock, trio.ClosedResourceError):
            self._events.send_nowait((conn.muxed_conn.peer_id.to_base58(), inbound))

    async def disconnected(self, network: INetwork, conn: INetConn) -> None:
        return None

    async def opened_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def closed_stream(self, network: INetwork, stream: INetStream) -> None:
        return None

    async def listen(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None

    async def listen_close(self, network: INetwork, multiaddr: Multiaddr) -> None:
        return None
