"""The embedded chain inside the daemon: seals in turn, gossips blocks and transactions,
answers block requests, and catches up from peers when it hears of a longer chain.

Chain work is synchronous and CPU-bound, so every call into EmbeddedChain runs in a worker
thread (EmbeddedChain serialises callers with its own lock); the event loop only routes.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any

import rlp
import trio

from flockd.chain.embedded import EmbeddedChain, NotOurTurn
from flockd.chain.eth_api import EthAPI
from flockd.chain.eth_http import HTTPAccess, serve_http
from flockd.chain.mempool import AlreadyKnown, TxRejected
from flockd.chain.poa import BlockRejected
from flockd.chain.sync import (
    BLOCK_TOPIC,
    BLOCKS_KIND,
    MAX_REQUEST_BYTES,
    TX_TOPIC,
    Catchup,
    SyncError,
    answer_from_chain,
    decode_announcement,
    decode_blocks,
    encode_announcement,
    encode_request,
    import_batch,
)
from flockd.logs import get_logger
from flockd.p2p.abc import GossipMessage, P2PError, P2PNetwork
from flockd.p2p.blobs import BlobError

if TYPE_CHECKING:
    from eth.abc import BlockAPI
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

log = get_logger("flockd.chain")
LOCAL_TX_BUFFER = 4096


class GossipingEthAPI(EthAPI):
    """EthAPI whose accepted raw transactions are also handed to the network: a tx sent
    to any node (in process, HTTP) must reach whichever authority seals next."""

    def __init__(self, chain: EmbeddedChain, on_local_tx: Callable[[bytes], None]) -> None:
        super().__init__(chain)
        self._on_local_tx = on_local_tx

    def eth_sendRawTransaction(self, raw: Any) -> str:
        tx_hash = super().eth_sendRawTransaction(raw)
        self._on_local_tx(bytes.fromhex(raw[2:]) if isinstance(raw, str) else bytes(raw))
        return tx_hash


class ChainService:
    def __init__(
        self, chain: EmbeddedChain, network: P2PNetwork, *, http_port: int = 0, http_access: HTTPAccess | None = None
    ) -> None:
        self.chain = chain
        self.network = network
        self.api = GossipingEthAPI(chain, self._queue_local_tx)
        self.http_port = http_port
        self.http_access = http_access
        self.http_bound: int | None = None
        self.syncing = False
        self.peer_heads: dict[str, int] = {}
        self._new_head = trio.Event()
        self._txs_out, self._txs_in = trio.open_memory_channel[bytes](LOCAL_TX_BUFFER)
        self._token: trio.lowlevel.TrioToken | None = None
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._token = trio.lowlevel.current_trio_token()
        self.network.subscribe(BLOCK_TOPIC, self._on_block)
        self.network.subscribe(TX_TOPIC, self._on_tx)
        self.network.handle_blobs(BLOCKS_KIND, self._serve_blocks, max_size=MAX_REQUEST_BYTES)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                nursery.start_soon(self._seal_loop)
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
        if self.chain.next_seal_time() is None:
            return  # not an authority: we only follow
        await self._wait_for_peers_head()
        while True:
            slot = await trio.to_thread.run_sync(self.chain.next_seal_time)
            assert slot is not None
            self._new_head = trio.Event()
            with trio.move_on_after(max(0.0, slot - time.time())):
                await self._new_head.wait()
                continue  # someone else's block arrived first: our turn moved
            try:
                block = await trio.to_thread.run_sync(self.chain.seal_block, slot)
            except NotOurTurn:
                continue
            await self._announce(block)

    async def _wait_for_peers_head(self) -> None:
        # A node that restarts behind its peers should sync before it seals, or it forks
        # off a stale head (harmless, longest chain wins, but wasted). A lone authority
        # has nobody to wait for.
        if len(self.chain.rules.authorities) == 1:
            return
        with trio.move_on_after(3 * self.chain.genesis.block_period):
            while not self.peer_heads:
                await trio.sleep(0.1)

    async def _announce(self, block: BlockAPI) -> None:
        payload = encode_announcement(block.number, block.hash, rlp.encode(block))
        try:
            await self.network.publish(BLOCK_TOPIC, "block", payload)
        except P2PError as exc:
            log.warning("block announcement failed", number=block.number, error=str(exc))
        log.debug("sealed", number=block.number, txs=len(block.transactions))

    # -- blocks from peers -----------------------------------------------------------------

    async def _on_block(self, msg: GossipMessage) -> None:
        try:
            announcement = decode_announcement(_payload_bytes(msg))
        except SyncError as exc:
            log.info("bad block announcement", peer=msg.peer_id, error=str(exc))
            return
        self.peer_heads[msg.peer_id] = announcement.number
        if announcement.block is None:
            self._start_catch_up(msg.peer_id, announcement.number, announcement.block_hash)
            return
        try:
            result = await trio.to_thread.run_sync(self.chain.import_block, announcement.block)
        except BlockRejected as exc:
            log.warning("block rejected", peer=msg.peer_id, number=announcement.number, error=f"{type(exc).__name__}: {exc}")
            return
        if result.status == "missing_parent":
            self._start_catch_up(msg.peer_id, announcement.number, announcement.block_hash)
        elif result.new_head:
            self._new_head.set()

    def _start_catch_up(self, peer_id: str, number: int, block_hash: bytes) -> None:
        if not self.syncing and self._nursery is not None:
            self.syncing = True
            self._nursery.start_soon(self._catch_up, peer_id, number, block_hash)

    async def _catch_up(self, peer_id: str, number: int, block_hash: bytes) -> None:
        start = self.chain.head.block_number
        try:
            catchup = Catchup(number, block_hash)
            request = catchup.start(start)
            while request is not None:
                reply = await self.network.send_blob(peer_id, BLOCKS_KIND, encode_request(request))
                raws = decode_blocks(reply or b"", request.count)
                outcome = await trio.to_thread.run_sync(import_batch, self.chain, raws)
                request = catchup.on_results(request, outcome)
            log.info("caught up", peer=peer_id, start=start, head=self.chain.head.block_number)
        except (SyncError, BlockRejected, BlobError, P2PError) as exc:
            log.warning("catch-up failed", peer=peer_id, error=f"{type(exc).__name__}: {exc}")
        finally:
            self.syncing = False
            self._new_head.set()

    async def _serve_blocks(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        return await trio.to_thread.run_sync(answer_from_chain, self.chain, data)

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


def _payload_bytes(msg: GossipMessage) -> bytes:
    if not isinstance(msg.payload, bytes):
        raise SyncError(f"expected a bytes payload, got {type(msg.payload).__name__}")
    return msg.payload
