"""The embedded chain inside the daemon: seals in turn, gossips blocks and transactions,
answers block requests, and catches up from peers when it hears of a longer chain.

Chain work is synchronous and CPU-bound, so every call into EmbeddedChain runs in a worker
thread (EmbeddedChain serialises callers with its own lock); the event loop only routes.

Nothing a peer says is a reason to work until an authority's seal vouches for it: an
announcement carries the block header, and a catch-up starts only for a header sealed by an
authority at a height its timestamp allows. Catch-ups run in parallel (one per peer), each
bounded in time, rotating among peers; invalid data earns its author or sender a penalty.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Any

import rlp
import trio

from flockd.chain.ethrpc.eth_api import CALL_TIMEOUT, EthAPI
from flockd.chain.ethrpc.eth_http import HTTPAccess, serve_http
from flockd.chain.node.embedded import EmbeddedChain, NotOurTurn
from flockd.chain.node.mempool import (
    AlreadyKnown,
    BadTxSignature,
    ForbiddenTarget,
    GasTooHigh,
    MalformedTx,
    TxRejected,
    TxTooLarge,
    WrongChainId,
)
from flockd.chain.node.poa import BlockRejected, FutureBlock
from flockd.chain.node.records import ImportResult
from flockd.chain.node.sync import (
    BLOCK_TOPIC,
    BLOCKS_KIND,
    MAX_REQUEST_BYTES,
    TX_TOPIC,
    BlockRequest,
    Catchup,
    PeerCannotServe,
    SyncError,
    SyncTarget,
    SyncTargets,
    advance,
    answer_from_chain,
    decode_announcement,
    encode_announcement,
    encode_blocks,
    encode_request,
)
from flockd.logs import get_logger
from flockd.p2p.abc import GossipMessage, P2PError, P2PNetwork
from flockd.p2p.blobs import BlobError
from flockd.stats import Counters

if TYPE_CHECKING:
    from eth.abc import BlockAPI
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

log = get_logger("flockd.chain")
LOCAL_TX_BUFFER = 4096
MAX_CATCHUPS = 3  # attempts at once, each with a different peer
CATCHUP_REQUEST_TIMEOUT = 20.0  # one request's round trip (a full 16 MiB batch fits; a loaded peer too)
QUIET_PERIODS = 3  # block periods without a peer's block after which an authority seals unsynced
OWN_CALL_TIMEOUT = 120.0  # seconds for the daemon's own eth_call / eth_estimateGas
CATCHUP_ATTEMPT_TIMEOUT = 60.0  # one attempt with one peer, before another peer's turn
BAD_DATA_POINTS = 25.0  # misbehaviour points for an invalid block or reply (ban at 100)
BAD_TX_POINTS = 5.0  # for a gossiped tx no node would admit, whatever its pool
_PROVABLY_BAD_TX = (SyncError, MalformedTx, TxTooLarge, BadTxSignature, WrongChainId, GasTooHigh, ForbiddenTarget)


class GossipingEthAPI(EthAPI):
    """EthAPI whose accepted raw transactions are also handed to the network: a tx sent
    to any node (in process, HTTP) must reach whichever authority seals next."""

    def __init__(
        self, chain: EmbeddedChain, on_local_tx: Callable[[bytes], None], *, call_timeout: float = CALL_TIMEOUT
    ) -> None:
        super().__init__(chain, call_timeout=call_timeout)
        self._on_local_tx = on_local_tx

    def eth_sendRawTransaction(self, raw: Any) -> str:
        tx_hash = super().eth_sendRawTransaction(raw)
        self._on_local_tx(bytes.fromhex(raw[2:]) if isinstance(raw, str) else bytes(raw))
        return tx_hash


@dataclass
class _Importer:
    """The chain as catch-up sees it, noting every import result: the service counts them
    on the event loop once the worker thread is done."""

    chain: EmbeddedChain
    results: list[ImportResult] = field(default_factory=list)

    def decode_header(self, raw: bytes) -> Any:
        return self.chain.decode_header(raw)

    def canonical_hash(self, number: int) -> bytes | None:
        return self.chain.canonical_hash(number)

    def import_block(self, raw: bytes) -> ImportResult:
        result = self.chain.import_block(raw)
        self.results.append(result)
        return result


class ChainService:
    def __init__(
        self, chain: EmbeddedChain, network: P2PNetwork, *, http_port: int = 0, http_access: HTTPAccess | None = None
    ) -> None:
        self.chain = chain
        self.network = network
        self.api = GossipingEthAPI(chain, self._queue_local_tx)  # HTTP clients'
        # The daemon's own client calls only the genesis contracts (8M gas at most, and no other
        # code can exist): HTTP's 5 s budget, there against hostile loops, would on a loaded
        # machine abort the node's own finalise estimate three times and leave its round stuck.
        self.own_api = GossipingEthAPI(chain, self._queue_local_tx, call_timeout=OWN_CALL_TIMEOUT)
        self.http_port = http_port
        self.http_access = http_access
        self.http_bound: int | None = None
        self.peer_heads: dict[str, int] = {}
        self._last_heard = time.monotonic()  # a peer's last block announcement (or our start)
        # reorgs, reorged_blocks, blocks_imported, blocks_rejected, catchups, catchups_failed
        self.counters = Counters()
        self.targets = SyncTargets()
        self._catchups: dict[str, bytes] = {}  # peer -> the target hash its attempt aims at
        self._new_head = trio.Event()  # the seal loop's: replaced each time it waits
        self._head_moved = trio.Event()  # wait_head_moved's: set, then replaced, per new head
        self._sync_wanted = trio.Event()
        self._txs_out, self._txs_in = trio.open_memory_channel[bytes](LOCAL_TX_BUFFER)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

    async def wait_head_moved(self) -> None:
        """Returns once the canonical head moves (a block sealed, gossiped or caught up):
        the task runners read the chain then rather than at their next poll."""
        await self._head_moved.wait()

    def _wake_head_waiters(self) -> None:
        self._head_moved.set()
        self._head_moved = trio.Event()

    @property
    def syncing(self) -> bool:
        return bool(self._catchups)

    async def head_synced(self) -> bool:
        """Whether our head is one to act on (the task runner asks before it feeds a block).

        An authority of several that was cut off, or restarted on a stale head, may hold a
        branch of its own that its peers' longer chain is about to replace: having peers
        again is not enough. The head is trusted once we are connected, have heard a
        connected peer's head since (peers we lose are forgotten, so every reconnection
        waits for a fresh announcement), no catch-up runs, and our head is at least as
        high as every head our peers announced. The sole authority of a chain is the
        whole network: its head is always the chain's."""
        if tuple(self.chain.head_authorities) == (self.chain.sealer_address,):
            return True
        connected = {p.peer_id for p in self.network.peers()}
        heard = [number for peer, number in self.peer_heads.items() if peer in connected]
        if not heard or self.syncing:
            return False
        head = await trio.to_thread.run_sync(lambda: self.chain.head.block_number)
        return bool(head >= max(heard))

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.network.subscribe(BLOCK_TOPIC, self._on_block)
        self.network.subscribe(TX_TOPIC, self._on_tx)
        self.network.handle_blobs(BLOCKS_KIND, self._serve_blocks, max_size=MAX_REQUEST_BYTES)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._seal_loop)
                nursery.start_soon(self._sync_loop, nursery)
                nursery.start_soon(self._publish_local_txs)
                if self.http_port:
                    self.http_bound = await nursery.start(
                        partial(serve_http, self.http_port, self.api, access=self.http_access)
                    )
                    log.info("chain JSON-RPC over HTTP", url=f"http://127.0.0.1:{self.http_bound}")
                head = self.chain.head
                log.info("chain open", head=head.block_number, genesis=self.chain.genesis_hash.hex())
                task_status.started()
        finally:
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(self.chain.close)

    # -- sealing ---------------------------------------------------------------------------

    async def _seal_loop(self) -> None:
        if self.chain.sealer_key is None:
            return  # no key: we only follow
        while True:
            if not await self.may_seal():
                await trio.sleep(0.2)
                continue
            slot = await trio.to_thread.run_sync(self.chain.next_seal_time)
            self._new_head = trio.Event()
            if slot is None:  # no authority (yet, or any more): a vote in a new head may change that
                with trio.move_on_after(self.chain.genesis.block_period):
                    await self._new_head.wait()
                continue
            with trio.move_on_after(max(0.0, slot - time.time())):
                await self._new_head.wait()
                continue  # someone else's block arrived first: our turn moved
            if not await self.may_seal():
                continue
            try:
                block = await trio.to_thread.run_sync(self.chain.seal_block, slot)
            except NotOurTurn:
                continue
            self._wake_head_waiters()
            await self._announce(block)

    async def may_seal(self) -> bool:
        """Whether this authority may seal on its head now (protocol/spec/chain.md, fork
        choice). The sole authority always may. One of several seals only among peers
        (cut off, it would seal a branch the others reorganise away) and only on a head
        it can trust (`head_synced`): restarted on a stale head, or back from a partition,
        it first catches up, or every block it sealed would fork the chain once more.
        Unless no connected peer has announced a block for QUIET_PERIODS block periods
        (a network's first blocks, every other authority restarting): then nobody else
        seals, and waiting for a head to sync to would wait for ever."""
        if tuple(self.chain.head_authorities) == (self.chain.sealer_address,):
            return True
        if not self.network.peers():
            return False
        if await self.head_synced():
            return True
        quiet = time.monotonic() - self._last_heard > QUIET_PERIODS * self.chain.genesis.block_period
        return quiet and not self.syncing

    async def _announce(self, block: BlockAPI) -> None:
        payload = encode_announcement(rlp.encode(block.header), rlp.encode(block))
        try:
            await self.network.publish(BLOCK_TOPIC, "block", payload)
        except P2PError as exc:
            log.warning("block announcement failed", number=block.number, error=str(exc))
        log.debug("sealed", number=block.number, txs=len(block.transactions))

    # -- blocks from peers -----------------------------------------------------------------

    async def _on_block(self, msg: GossipMessage) -> None:
        try:
            announcement = decode_announcement(_payload_bytes(msg))
            header = self.chain.parse_header(announcement.header)
            if announcement.block is not None and self.chain.decode_header(announcement.block).hash != header.hash:
                raise SyncError("the inline block is not the announced one")
        except (SyncError, BlockRejected) as exc:
            self._blame_sender(msg, exc)
            return
        # Chain calls wait for its lock, held by imports for seconds: never on the event loop.
        if await trio.to_thread.run_sync(self.chain.has_block, header.hash):
            self._heard(msg.peer_id, header.block_number)
            return
        importer = _Importer(self.chain)
        try:
            if announcement.block is None:
                # Too large to gossip: judge the header alone, then fetch the block by hash.
                await trio.to_thread.run_sync(self.chain.check_detached_header, header)
                result = ImportResult("missing_parent", header.hash, header.block_number)
            else:
                result = await trio.to_thread.run_sync(importer.import_block, announcement.block)
        except BlockRejected as exc:
            self.counters.incr("blocks_rejected")
            self._blame_sender(msg, exc)
            return
        finally:
            self._count(importer.results)
        self._heard(msg.peer_id, header.block_number)  # vouched for by an authority's seal
        if result.status == "missing_parent":
            self._want(header.block_number, header.hash, msg.peer_id)
        elif result.new_head:
            self._new_head.set()
            self._wake_head_waiters()

    def _heard(self, peer_id: str, number: int) -> None:
        self.peer_heads[peer_id] = number
        self._last_heard = time.monotonic()

    def _blame_sender(self, msg: GossipMessage, exc: Exception) -> None:
        log.warning("bad block announcement", sender=msg.sender, peer=msg.peer_id, error=f"{type(exc).__name__}: {exc}")
        if not isinstance(exc, FutureBlock):  # clocks drift: not proof of bad faith
            self.network.penalize_sender(msg.sender, BAD_DATA_POINTS, f"block: {type(exc).__name__}")

    def _count(self, results: list[ImportResult]) -> None:
        for result in results:
            if result.status == "imported":
                self.counters.incr("blocks_imported")
            if result.reorged:
                self.counters.incr("reorgs")
                self.counters.incr("reorged_blocks", result.reorged)
                log.info("reorganised", head=result.number, dropped=result.reorged)

    def _want(self, number: int, block_hash: bytes, peer_id: str) -> None:
        self.targets.want(number, block_hash, peer_id)  # pruned by the sync loop if not ahead
        self._sync_wanted.set()

    # -- catching up -----------------------------------------------------------------------

    async def _sync_loop(self, nursery: trio.Nursery) -> None:
        while True:
            self._sync_wanted = trio.Event()
            wanted = self.targets.hashes()
            head_number, held = await trio.to_thread.run_sync(self._held, wanted)
            self.targets.prune(head_number, held.__contains__)
            connected = [p.peer_id for p in self.network.peers()]
            for peer in [p for p in self.peer_heads if p not in connected]:
                del self.peer_heads[peer]
            while len(self._catchups) < MAX_CATCHUPS:
                pick = self.targets.pick(connected, set(self._catchups), time.monotonic())
                if pick is None:
                    break
                target, peer = pick
                self._catchups[peer] = target.block_hash
                nursery.start_soon(self._catch_up, peer, target)
            # Woken by a new target or an attempt's end; else look again now and then (a
            # peer's retry time passes, a new peer connects).
            with trio.move_on_after(1.0):
                await self._sync_wanted.wait()

    def _held(self, hashes: list[bytes]) -> tuple[int, set[bytes]]:
        return self.chain.head.block_number, {h for h in hashes if self.chain.has_block(h)}

    async def _catch_up(self, peer_id: str, target: SyncTarget) -> None:
        self.counters.incr("catchups")
        try:
            with trio.fail_after(CATCHUP_ATTEMPT_TIMEOUT):
                start, _ = await trio.to_thread.run_sync(self._held, [])
                catchup = Catchup(target.number, target.block_hash)
                request = catchup.start(start)
                while request is not None:
                    request = await self._catch_up_step(peer_id, catchup, request)
            head, held = await trio.to_thread.run_sync(self._held, [target.block_hash])
            if not held:
                raise PeerCannotServe("its canonical chain does not hold the target")
            log.info("caught up", peer=peer_id, start=start, head=head)
        except (SyncError, BlockRejected) as exc:
            self._failed(peer_id, target, exc)
            if not isinstance(exc, PeerCannotServe | FutureBlock):
                self.network.penalize_peer(peer_id, BAD_DATA_POINTS, f"sync: {type(exc).__name__}")
        except (BlobError, P2PError, trio.TooSlowError) as exc:
            self._failed(peer_id, target, exc)
        finally:
            del self._catchups[peer_id]
            self._sync_wanted.set()
            self._new_head.set()

    async def _catch_up_step(self, peer_id: str, catchup: Catchup, request: BlockRequest) -> BlockRequest | None:
        with trio.fail_after(CATCHUP_REQUEST_TIMEOUT):
            reply = await self.network.send_blob(peer_id, BLOCKS_KIND, encode_request(request))
        importer = _Importer(self.chain)
        try:
            return await trio.to_thread.run_sync(advance, catchup, importer, request, reply or b"")
        finally:
            self._count(importer.results)
            if any(r.new_head for r in importer.results):
                self._new_head.set()
                self._wake_head_waiters()

    def _failed(self, peer_id: str, target: SyncTarget, exc: BaseException) -> None:
        self.counters.incr("catchups_failed")
        self.targets.failed(target.block_hash, peer_id, time.monotonic())
        log.warning("catch-up failed", peer=peer_id, target=target.number, error=f"{type(exc).__name__}: {exc}")

    async def _serve_blocks(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        try:
            return await trio.to_thread.run_sync(answer_from_chain, self.chain, data)
        except SyncError as exc:
            self.network.penalize_peer(peer_id, BAD_DATA_POINTS, f"block request: {type(exc).__name__}")
            return encode_blocks([])

    # -- transactions ----------------------------------------------------------------------

    def _queue_local_tx(self, raw: bytes) -> None:
        # Called from whichever thread ran eth_sendRawTransaction: hop to the event loop.
        if self._token is not None:
            self._token.run_sync_soon(self._send_local_tx, raw)

    def _send_local_tx(self, raw: bytes) -> None:
        try:
            self._txs_out.send_nowait(raw)
        except trio.WouldBlock:
            log.warning("local tx gossip queue full: dropping one announcement (the tx stays in our pool)")

    async def _publish_local_txs(self) -> None:
        async for raw in self._txs_in:
            try:
                await self.network.publish(TX_TOPIC, "tx", raw)
            except P2PError as exc:
                log.warning("tx gossip failed", error=str(exc))

    async def _on_tx(self, msg: GossipMessage) -> None:
        try:
            raw = _payload_bytes(msg)
            await trio.to_thread.run_sync(self.chain.add_transaction, raw)
        except AlreadyKnown:
            pass
        except (TxRejected, SyncError) as exc:
            log.debug("gossiped tx rejected", peer=msg.peer_id, error=f"{type(exc).__name__}: {exc}")
            if isinstance(exc, _PROVABLY_BAD_TX):  # not a matter of our pool's state
                self.network.penalize_sender(msg.sender, BAD_TX_POINTS, f"tx: {type(exc).__name__}")


def _payload_bytes(msg: GossipMessage) -> bytes:
    if not isinstance(msg.payload, bytes):
        raise SyncError(f"expected a bytes payload, got {type(msg.payload).__name__}")
    return msg.payload
