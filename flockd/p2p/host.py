"""P2PService: the node's libp2p host (TCP + Noise + Yamux), gossip, blob streams, peering.

Start order matters (py-libp2p 0.8.1): pubsub and gossipsub run and are ready BEFORE the
host listens or dials, or early connections never get a pubsub stream. On the way out the
host is closed explicitly, or its socket leaks and peers keep listing us for seconds.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, TypeVar

import trio
from eth_keys import keys
from libp2p import new_host
from libp2p.abc import INetStream
from libp2p.crypto.secp256k1 import create_new_key_pair
from libp2p.network.auto_connector import AutoConnector
from libp2p.network.config import ConnectionConfig
from libp2p.network.swarm import Swarm
from libp2p.peer.id import ID
from libp2p.peer.peerinfo import PeerInfo as Libp2pPeerInfo
from libp2p.peer.peerinfo import info_from_p2p_addr
from libp2p.pubsub.gossipsub import GossipSub
from libp2p.pubsub.pubsub import Pubsub
from libp2p.tools.anyio_service import background_trio_service
from multiaddr import Multiaddr

from flockd.p2p import blobs, bulk, peerx
from flockd.p2p.abc import (
    BlobBufferHandler,
    BlobHandler,
    GossipHandler,
    P2PError,
    P2PNetwork,
    PeerInfo,
)
from flockd.p2p.gossip import Gossip
from flockd.p2p.isolation import IsolationGate
from flockd.p2p.limits import P2PLimits
from flockd.p2p.logs import route_libp2p_logs
from flockd.p2p.peering import Peering
from flockd.p2p.scoring import PeerScores
from flockd.p2p.streams import TransferSlots, close_stream, read_frame, write_frame
from flockd.stats import Counters

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

logger = logging.getLogger("flockd.p2p")
# Not 1.2: its IDONTWANT control messages, one to every mesh peer per message received,
# cost more CPU than they save on small gossip (protocol/spec/p2p.md §1).
MESHSUB = "/meshsub/1.1.0"
# A registered handler as the service calls it: with the blob as it arrived, bytes from a
# stream or the buffer a bulk session opened it into.
_InboundBlobHandler = Callable[[str, str, bytes | bytearray], Awaitable[bytes | None]]
_Blob = TypeVar("_Blob", bytes, bytearray)


class P2PService(P2PNetwork):
    def __init__(
        self,
        secret: bytes,
        *,
        network_id: str,
        listen: Sequence[str] = ("/ip4/127.0.0.1/tcp/0",),
        bootstrap: Sequence[str] = (),
        limits: P2PLimits | None = None,
    ) -> None:
        """`secret`: the node's 32-byte secp256k1 key (also its Ethereum key). `listen` and
        `bootstrap` are multiaddrs; bootstrap ones end in /p2p/<peer-id>. Raises P2PError."""
        if len(secret) != 32:
            raise P2PError("the node secret must be 32 bytes")
        route_libp2p_logs()
        self._limits = limits = limits or P2PLimits()
        self._listen = [_parse_multiaddr(a) for a in listen]
        seeds = [_parse_peer_multiaddr(a) for a in bootstrap]
        key = keys.PrivateKey(secret)
        self._host = new_host(
            key_pair=create_new_key_pair(secret),
            listen_addrs=self._listen,
            connection_config=_connection_config(limits),
        )
        swarm = self._host.get_network()
        assert isinstance(swarm, Swarm)  # new_host builds a Swarm
        swarm.auto_connector = _NoAutoDials(swarm, swarm.connection_config.auto_connect_interval)
        swarm._inbound_limiter = _LiveConnectionCap(swarm)  # type: ignore[assignment]
        self._id = self._host.get_id()
        # gossip_dropped, gossip_rejected, peers_banned, inbound_refused, bulk_sessions_opened,
        # bulk_sessions_keyed, bulk_sessions_failed, loop_stalls, loop_stall_ms (metrics).
        self.counters = Counters()
        self._scores = PeerScores(
            threshold=limits.ban_threshold, decay=limits.score_decay, ban_seconds=limits.ban_seconds
        )
        self._gossip = Gossip(
            key,
            self_id=self._id,
            network_id=network_id,
            limits=limits,
            counters=self.counters,
            report=self.penalize_peer,
            banned_peer=self.is_banned,
            banned_sender=self._sender_banned,
        )
        self._peering = Peering(
            self._host,
            limits,
            seeds=seeds,
            own_addrs=self._own_dial_addrs,
            banned=self.is_banned,
            counters=self.counters,
        )
        self._nursery: trio.Nursery | None = None
        self._blob_handlers: dict[str, tuple[_InboundBlobHandler, int]] = {}
        self._blob_slots = TransferSlots(limits.max_inbound_blobs, limits.max_inbound_blobs_per_peer)
        self._bulk = bulk.BulkListener(
            bulk.listen_host(list(listen)),
            limits,
            serve_blob=self._answer_blob,
            size_cap=self._inbound_cap,
            blob_slots=self._blob_slots,
            banned=self.is_banned,
            counters=self.counters,
        )
        self._bulk_sessions = bulk.BulkSessions(limits, self._key_bulk_session, self.counters)
        self._running = False
        self._host.set_stream_handler(blobs.PROTOCOL, self._serve_blob)  # type: ignore[arg-type]

    # --- lifecycle ---

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Listen, join gossip, dial seeds and exchange peers until cancelled. One run per
        instance. `task_status.started()` fires once listening (listen_addrs() is valid)."""
        stop = trio.Event()
        async with trio.open_nursery() as nursery:
            try:
                await nursery.start(self._run_libp2p, stop)
                task_status.started()
                await trio.sleep_forever()
            finally:
                stop.set()

    async def _run_libp2p(self, stop: trio.Event, *, task_status: TaskStatus[None]) -> None:
        # libp2p's services run in nurseries opened here, so a cancellation from outside
        # would reach them at the same moment as us: the swarm would then close its
        # connections under cancellation, which skips closing the sockets (upstream #1485;
        # peers keep listing us). Shielded, we stop our own tasks first, close the host
        # while nothing is cancelled, and only then let the services wind down.
        with trio.CancelScope(shield=True):
            gossipsub = GossipSub(
                protocols=[MESHSUB],  # type: ignore[list-item]
                degree=6,
                degree_low=4,
                degree_high=12,
                heartbeat_interval=1,
                # Built-in spam protection drops >10 msg/s per topic per peer, ours
                # included, and eclipse protection wants distinct IPs (loopback has one):
                # we enforce our own per-peer limits on envelopes instead.
                spam_protection_enabled=False,
                eclipse_protection_enabled=False,
            )
            pubsub = Pubsub(self._host, gossipsub)
            # Pubsub must be running before the host listens or dials (see module doc).
            async with background_trio_service(pubsub), background_trio_service(gossipsub):
                await pubsub.wait_until_ready()
                async with self._host.run(listen_addrs=self._listen):
                    try:
                        async with trio.open_nursery() as ours:
                            self._nursery = ours
                            await self._gossip.start(pubsub, ours)
                            await ours.start(self._bulk.run)
                            ours.start_soon(self._bulk_sessions.run)
                            ours.start_soon(self._peering.run)
                            ours.start_soon(_watch_loop_stalls, self.counters)
                            self._running = True
                            logger.info("p2p listening on %s", " ".join(self.listen_addrs()))
                            task_status.started()
                            await stop.wait()
                            ours.cancel_scope.cancel()
                    finally:
                        self._running = False
                        self._nursery = None
                        with trio.move_on_after(5):
                            await self._host.close()
                        logger.info("p2p host closed")

    # --- identity and peers ---

    @property
    def peer_id(self) -> str:
        return str(self._id.to_base58())

    def listen_addrs(self) -> list[str]:
        return [str(a) for a in self._host.get_addrs()]

    def peers(self) -> list[PeerInfo]:
        infos = []
        for peer, conns in self._host.get_network().get_connections_map().items():
            if not conns:
                continue
            peer_id = peer.to_base58()
            inbound = str(getattr(conns[0], "direction", "")) == "inbound"
            infos.append(
                PeerInfo(
                    peer_id=peer_id,
                    address=peerx.check_peer_id(peer_id),
                    addrs=self._peering.addrs_of(peer_id),
                    direction="inbound" if inbound else "outbound",
                    latency_ms=self._peering.latency_of(peer_id),
                )
            )
        return infos

    async def connect(self, multiaddr: str) -> str:
        self._require_running()
        info = _parse_peer_multiaddr(multiaddr)
        if info.peer_id == self._id:
            raise P2PError("refusing to connect to ourselves")
        if self.is_banned(info.peer_id.to_base58()):
            raise P2PError(f"{info.peer_id} is banned")
        await self._peering.dial(info.peer_id, list(info.addrs))
        return str(info.peer_id.to_base58())

    # --- misbehaviour ---

    def penalize_peer(self, peer_id: str, points: float, reason: str) -> None:
        try:
            address = peerx.check_peer_id(peer_id)
        except peerx.BadPeerEntry:
            return  # not a flock peer: it could not have connected
        self.penalize_sender(address, points, reason)

    def penalize_sender(self, address: str, points: float, reason: str) -> None:
        if not self._scores.penalize(address, points, time.monotonic()):
            return
        self.counters.incr("peers_banned")
        logger.warning(
            "banned %s for %.0fs: %s", address, self._limits.ban_seconds, reason[:200]
        )
        nursery = self._nursery
        if nursery is not None:
            for peer in self._peering.connected():
                if peerx.check_peer_id(peer) == address:
                    nursery.start_soon(self._peering.disconnect, peer)

    def is_banned(self, peer_id: str) -> bool:
        try:
            return self._sender_banned(peerx.check_peer_id(peer_id))
        except peerx.BadPeerEntry:
            return True

    def _sender_banned(self, address: str) -> bool:
        return self._scores.is_banned(address, time.monotonic())

    async def isolate(self, seconds: float) -> int:
        """Chaos testing: drop every peer and refuse all connections, both ways, for
        `seconds`; returns how many peers were dropped."""
        self._require_running()
        network = self._host.get_network()
        network.connection_gate = IsolationGate(network.connection_gate, trio.current_time() + seconds)
        peers = list(network.get_connections_map())
        for peer in peers:
            await network.close_peer(peer)
        return len(peers)

    # --- gossip ---

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        self._gossip.subscribe(topic, handler)

    async def publish(self, topic: str, kind: str, payload: object) -> None:
        self._require_running()
        await self._gossip.publish(topic, kind, payload)

    # --- blobs ---

    def handle_blobs(self, kind: str, handler: BlobHandler, *, max_size: int) -> None:
        blobs.check_kind(kind)
        self._blob_handlers[kind] = (_handing(bytes, handler), max_size)

    def handle_blob_buffers(self, kind: str, handler: BlobBufferHandler, *, max_size: int) -> None:
        blobs.check_kind(kind)
        self._blob_handlers[kind] = (_handing(bytearray, handler), max_size)

    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        """Raises BlobRejected when the peer refuses (its reason in the message), other
        BlobError subclasses for transfer failures, P2PError when it cannot be reached."""
        self._require_running()
        blobs.check_kind(kind)
        peerx.check_peer_id(peer_id)  # raises BadPeerEntry for a bad id; cached, as is_banned reads it
        if self.is_banned(peer_id):
            raise P2PError(f"{peer_id} is banned")
        if len(data) >= self._limits.bulk_min:
            reply = await self._bulk_sessions.request(peer_id, kind, data, self._reply_cap)
        else:
            async with self._blob_stream(peer_id) as stream:
                reply = await self._request(stream, kind, data)
        if reply.kind == blobs.REPLY_ERROR:
            raise blobs.BlobRejected(
                f"{peer_id} refused the {kind!r} blob: {reply.data.decode(errors='replace')}"
            )
        return reply.data if reply.kind == blobs.REPLY_DATA else None

    @contextlib.asynccontextmanager
    async def _blob_stream(self, peer_id: str) -> AsyncIterator[INetStream]:
        """A new blob stream to `peer_id`: closed after use, reset after an error."""
        try:
            with trio.fail_after(self._limits.dial_timeout):
                stream = await self._host.new_stream(ID.from_base58(peer_id), [blobs.PROTOCOL])  # type: ignore[list-item]
        except Exception as exc:  # timeouts and libp2p's assorted dial/negotiation errors
            raise P2PError(f"cannot open a blob stream to {peer_id}: {exc!r}") from exc
        try:
            yield stream
        except BaseException:
            await close_stream(stream, reset=True)
            raise
        await close_stream(stream)

    async def _key_bulk_session(self, peer_id: str) -> tuple[str, bulk.Answer]:
        """Ask `peer_id`, on a blob stream, for a bulk session's port, key and ticket."""
        limits = self._limits
        async with self._blob_stream(peer_id) as stream:
            await write_frame(stream, bulk.BULK, b"", chunk=limits.blob_chunk, timeout=limits.blob_read_timeout)
            answer_cap = {bulk.BULK: bulk.MAX_ANSWER, blobs.REPLY_ERROR: blobs.MAX_ERROR_REPLY}.get
            answered = await read_frame(stream, answer_cap, chunk=limits.blob_chunk, timeout=limits.blob_read_timeout)
            remote = stream.get_remote_address()
        if answered.kind == blobs.REPLY_ERROR:
            raise blobs.BlobRejected(
                f"{peer_id} refused a bulk session: {answered.data.decode(errors='replace')}"
            )
        if remote is None:
            raise bulk.BulkError("the blob stream has no remote address to reach the bulk port at")
        return remote[0], bulk.decode_answer(answered.data)

    async def _request(self, stream: INetStream, kind: str, data: bytes) -> blobs.Frame:
        # Upload and wait for the reply at the same time: a peer that refuses the blob
        # (too large, unknown kind, busy) answers at once, and we stop uploading.
        limits = self._limits
        reply_wait = trio.CancelScope()
        upload_error: list[blobs.BlobError] = []
        uploading = True

        async def upload() -> None:
            nonlocal uploading
            try:
                await write_frame(
                    stream,
                    kind,
                    data,
                    chunk=limits.blob_chunk,
                    timeout=limits.blob_read_timeout,
                    min_rate=limits.blob_min_rate,
                )
                reply_wait.deadline = trio.current_time() + limits.blob_reply_timeout
            except blobs.BlobError as exc:
                upload_error.append(exc)
                reply_wait.deadline = trio.current_time() + 1.0  # an error reply may be on its way
            finally:
                uploading = False

        reply: blobs.Frame | None = None
        read_error: blobs.BlobError | None = None
        async with trio.open_nursery() as nursery:
            nursery.start_soon(upload)
            with reply_wait:
                try:
                    reply = await read_frame(
                        stream,
                        self._reply_cap,
                        chunk=limits.blob_chunk,
                        timeout=limits.blob_read_timeout,
                        first_timeout=math.inf,  # bounded by reply_wait once the upload ends
                    )
                except blobs.BlobError as exc:
                    read_error = exc
            if uploading:
                # Resetting (not cancelling) stops the writer: cancelling a write midway
                # could leave half a frame on the connection shared by every stream.
                await close_stream(stream, reset=True)
        if reply is not None:
            return reply
        if upload_error:
            raise upload_error[0]
        raise read_error or blobs.BlobTimeout(f"no reply within {limits.blob_reply_timeout:.0f}s")

    def _reply_cap(self, kind: str) -> int | None:
        return {
            blobs.REPLY_DATA: self._limits.max_reply,
            blobs.REPLY_NONE: 0,
            blobs.REPLY_ERROR: blobs.MAX_ERROR_REPLY,
        }.get(kind)

    def _inbound_cap(self, kind: str) -> int | None:
        if kind == bulk.BULK:  # a request for a bulk session (empty)
            return 0
        entry = self._blob_handlers.get(kind)
        return entry[1] if entry else None

    async def _serve_blob(self, stream: INetStream) -> None:
        peer_id = stream.muxed_conn.peer_id.to_base58()
        if self.is_banned(peer_id):
            await close_stream(stream, reset=True)
            return
        if not self._blob_slots.try_acquire(peer_id):
            await self._refuse(stream, "busy: too many concurrent blob transfers")
            return
        try:
            await self._serve_blob_slot(stream, peer_id)
        finally:
            self._blob_slots.release(peer_id)

    async def _serve_blob_slot(self, stream: INetStream, peer_id: str) -> None:
        limits = self._limits
        try:
            frame = await read_frame(
                stream,
                self._inbound_cap,
                chunk=limits.blob_chunk,
                timeout=limits.blob_read_timeout,
                min_rate=limits.blob_min_rate,
            )
            if frame.kind == bulk.BULK:
                await self._answer_bulk_keying(stream, peer_id)
                return
        except blobs.BlobError as exc:
            logger.info("blob from %s rejected: %s", peer_id, exc)
            await self._refuse(stream, str(exc))
            return
        reply = await self._answer_blob(peer_id, frame.kind, frame.data)
        if reply.kind == blobs.REPLY_ERROR:
            await self._refuse(stream, reply.data.decode(errors="replace"))
            return
        try:
            await write_frame(
                stream,
                reply.kind,
                reply.data,
                chunk=limits.blob_chunk,
                timeout=limits.blob_read_timeout,
                min_rate=limits.blob_min_rate,
            )
        except blobs.BlobError as exc:
            logger.info("reply to %s failed: %s", peer_id, exc)
            await close_stream(stream, reset=True)
            return
        await close_stream(stream)

    async def _answer_bulk_keying(self, stream: INetStream, peer_id: str) -> None:
        """A bulk session for the stream's peer: its one-time port, key and ticket."""
        try:
            answer = self._bulk.key_session(peer_id)
            await write_frame(
                stream, bulk.BULK, bulk.encode_answer(answer), chunk=bulk.MAX_ANSWER, timeout=self._limits.blob_read_timeout
            )
        except blobs.BlobError as exc:
            await self._refuse(stream, str(exc))
            return
        await close_stream(stream)

    async def _answer_blob(self, peer_id: str, kind: str, data: bytes | bytearray) -> blobs.Frame:
        """The reply frame to a blob that arrived whole (on a stream or a bulk session)."""
        handler = self._blob_handlers[kind][0]
        try:
            reply = await handler(peer_id, kind, data)
        except Exception:  # a handler bug must cost one transfer, not the service
            logger.exception("blob handler for %r failed", kind)
            return blobs.Frame(blobs.REPLY_ERROR, b"the handler failed")
        return blobs.Frame(blobs.REPLY_NONE, b"") if reply is None else blobs.Frame(blobs.REPLY_DATA, reply)

    async def _refuse(self, stream: INetStream, reason: str) -> None:
        message = reason.encode()[: blobs.MAX_ERROR_REPLY]
        with contextlib.suppress(blobs.BlobError):
            await write_frame(
                stream, blobs.REPLY_ERROR, message, chunk=blobs.MAX_ERROR_REPLY, timeout=2.0
            )
        # The sender resets once it reads the refusal; wait briefly (reading, so its
        # writes do not stall on flow control before it gets there), then reset anyway.
        with trio.move_on_after(2.0):
            with contextlib.suppress(Exception):  # reset/EOF: what we are waiting for
                while await stream.read(self._limits.blob_chunk):
                    pass
        await close_stream(stream, reset=True)

    # --- helpers ---

    def _own_dial_addrs(self) -> list[str]:
        return [str(a) for a in self._host.get_transport_addrs()]

    def _require_running(self) -> None:
        if not self._running:
            raise P2PError("the p2p service is not running")


def _handing(form: type[_Blob], handler: Callable[[str, str, _Blob], Awaitable[bytes | None]]) -> _InboundBlobHandler:
    """`handler` called with the blob in its `form`: converted (a copy) only when it arrived
    in the other one."""

    async def call(peer_id: str, kind: str, data: bytes | bytearray) -> bytes | None:
        return await handler(peer_id, kind, data if isinstance(data, form) else form(data))

    return call


class _NoAutoDials(AutoConnector):
    """libp2p's auto-connector dials everything in the peerstore up to the midpoint of the
    watermarks, on a timer and after every disconnect, whatever the watermarks say: it would
    undo max_peers and redial peers peering.py chose to drop. peering.py alone dials."""

    async def maybe_connect(self) -> None:
        return None


LOOP_TICK = 0.25  # seconds between the stall watcher's wake-ups
LOOP_STALL = 1.0  # a wake-up this late means the event loop was held (by anything in the process)


async def _watch_loop_stalls(counters: Counters) -> None:
    """Count and log the times the event loop did not run for LOOP_STALL seconds: every
    peer's stream negotiation waits meanwhile, and 10 s of it fails them."""
    while True:
        expected = trio.current_time() + LOOP_TICK
        await trio.sleep(LOOP_TICK)
        late = trio.current_time() - expected
        if late >= LOOP_STALL:
            counters.incr("loop_stalls")
            counters.incr("loop_stall_ms", round(late * 1000))
            logger.warning("event loop stalled for %.1fs", late)


class _LiveConnectionCap:
    """Stands in for the swarm's inbound limiter, which leaks: py-libp2p 0.8.1 takes a token
    for every accepted TCP connection and returns it only when the swarm stops (a
    successful inbound handler waits on `manager.wait_finished()`), so after
    max_connections inbound connections in its lifetime a node closed every new one at
    accept. Churn while a 32-daemon mesh forms got there in minutes. This one refuses a
    connection at accept (before the costly handshake) only while the swarm holds
    max_connections live ones; connections still in their handshake are bounded by the
    swarm's inbound upgrade timeout, and peering.py closes inbound peers beyond max_peers."""

    def __init__(self, swarm: Swarm) -> None:
        self._swarm = swarm

    @property
    def total_tokens(self) -> int:  # read by the swarm's log line when it refuses
        return self._swarm.connection_config.max_connections

    def acquire_nowait(self) -> None:
        if self._swarm.get_total_connections() >= self.total_tokens:
            raise trio.WouldBlock

    def release(self) -> None:
        return None


def _connection_config(limits: P2PLimits) -> ConnectionConfig:
    # libp2p's own cap is a backstop; peering.py closes inbound connections beyond max_peers.
    ceiling = 2 * limits.max_peers
    return ConnectionConfig(
        min_connections=0,
        low_watermark=0,
        high_watermark=ceiling,
        max_connections=ceiling + 8,
        dial_timeout=limits.dial_timeout,
    )


def _parse_multiaddr(text: str) -> Multiaddr:
    try:
        return Multiaddr(text)
    except Exception as exc:  # multiaddr raises several parse error types
        raise P2PError(f"invalid multiaddr {text!r}: {exc}") from exc


def _parse_peer_multiaddr(text: str) -> Libp2pPeerInfo:
    """A dialable peer address: /ip4|ip6|dns*/<host>/tcp/<port>/p2p/<secp256k1 peer id>."""
    addr = _parse_multiaddr(text)
    try:
        info = info_from_p2p_addr(addr)
    except Exception as exc:
        raise P2PError(f"multiaddr {text!r} must end in /p2p/<peer-id>") from exc
    try:
        peerx.check_peer_id(info.peer_id.to_base58())
        for transport in info.addrs:
            peerx.check_dial_addr(str(transport))
    except peerx.BadPeerEntry as exc:
        raise P2PError(f"cannot dial {text!r}: {exc}") from exc
    return info
