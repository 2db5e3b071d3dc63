"""ContractClient and its backends: the transaction lifecycle (nonces, resubmission,
confirmations, reverts) on the embedded chain, and every kind of bad reply from a node."""

from __future__ import annotations

import functools
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields

import httpx
import pytest
import trio
from eth_abi import encode as abi_encode
from eth_account import Account
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.artifacts import event_topic, load
from flockd.chain.client.backends import (
    ChainTimeout,
    ChainUnavailable,
    HttpBackend,
    InProcessBackend,
    MalformedReply,
    ReplyTooLarge,
    RPCError,
    open_backend,
)
from flockd.chain.client.contract import (
    ContractClient,
    ContractRevert,
    Log,
    NoAccount,
    TxPolicy,
    TxRejected,
    TxTimeout,
    revert_reason,
)
from flockd.chain.client.registry import MalformedEvent, Registry, TaskParams, Token
from flockd.chain.node.deploy import genesis_contracts
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.config import Config

SEALER = PrivateKey(keccak(b"client sealer"))
ALICE = Account.from_key(keccak(b"alice"))
BOB = Account.from_key(keccak(b"bob"))
BOB_ADDR = bytes.fromhex(BOB.address[2:])
FAST = TxPolicy(poll_interval=0.01, resubmit_after=30.0, timeout=30.0)


@functools.cache
def genesis() -> Genesis:
    alloc: dict[bytes, dict[str, object]] = {bytes.fromhex(a.address[2:]): {"balance": 10**21} for a in (ALICE, BOB)}
    alloc.update({a: dict(acct) for a, acct in genesis_contracts({bytes.fromhex(ALICE.address[2:]): 10**24}).items()})
    return Genesis.create(chain_id=4444, authorities=[SEALER.public_key.to_canonical_address()],
                          timestamp=1_700_000_000, alloc=alloc)


class Sealer:
    """Seals whatever waits in the mempool while `auto`; `seal(n)` seals n blocks now."""

    def __init__(self, chain: EmbeddedChain) -> None:
        self.chain = chain
        self.auto = True
        self._lock = trio.Lock()

    async def seal(self, n: int = 1) -> None:
        def work() -> None:
            for _ in range(n):
                slot = self.chain.next_seal_time(0)
                assert slot is not None
                self.chain.seal_block(slot)

        async with self._lock:
            await trio.to_thread.run_sync(work)

    async def run(self) -> None:
        while True:
            if self.auto and len(self.chain.mempool):
                await self.seal()
            await trio.sleep(0.005)


@dataclass
class Node:
    chain: EmbeddedChain
    sealer: Sealer
    backend: InProcessBackend

    def client(self, account: object = ALICE, policy: TxPolicy = FAST) -> ContractClient:
        return ContractClient(self.backend, account, policy)  # type: ignore[arg-type]


@pytest.fixture
async def node(nursery: trio.Nursery) -> AsyncIterator[Node]:
    chain = EmbeddedChain(genesis(), None, SEALER)
    sealer = Sealer(chain)
    nursery.start_soon(sealer.run)
    yield Node(chain, sealer, InProcessBackend.for_chain(chain))
    chain.close()


async def until(predicate: Callable[[], bool]) -> None:
    with trio.fail_after(20):
        while not predicate():
            await trio.sleep(0.005)


# -- the transaction lifecycle on the embedded chain -------------------------------------------


async def test_transfer_and_reads(node: Node) -> None:
    client = node.client()
    assert await client.chain_id() == 4444
    receipt = await client.transact(BOB_ADDR, b"", value=12345)
    assert receipt.status == 1 and receipt.gas_used == 21_000
    assert await client.balance(BOB_ADDR) == 10**21 + 12345
    assert await client.block_number() >= receipt.block_number
    assert await client.block_hash(receipt.block_number) == receipt.block_hash


async def test_nonce_recovers_when_another_signer_took_it(node: Node) -> None:
    first, second = node.client(), node.client()  # same key, two nonce counters
    await first.transact(BOB_ADDR, b"", value=1)  # first now expects nonce 1 next
    await second.transact(BOB_ADDR, b"", value=2)  # second asks the chain: takes nonce 1
    receipt = await first.transact(BOB_ADDR, b"", value=3)  # nonce 1 too low: resync to 2
    assert receipt.status == 1
    assert node.chain.nonce(bytes.fromhex(ALICE.address[2:])) == 3


async def test_concurrent_sends_get_consecutive_nonces(node: Node) -> None:
    client = node.client()
    receipts = []

    async def send(value: int) -> None:
        receipts.append(await client.transact(BOB_ADDR, b"", value=value))

    async with trio.open_nursery() as nursery:
        for value in range(1, 6):
            nursery.start_soon(send, value)
    assert all(r.status == 1 for r in receipts) and len(receipts) == 5
    assert await client.balance(BOB_ADDR) == 10**21 + 15


async def test_resubmits_with_higher_fees_until_mined(node: Node) -> None:
    node.sealer.auto = False
    client = node.client(policy=TxPolicy(poll_interval=0.01, resubmit_after=0.05, max_resubmits=50, timeout=30))
    pending = await client.send(BOB_ADDR, b"", value=7)
    first_fees, first_hash = pending.fees, pending.hashes[0]
    result = []

    async def wait() -> None:
        result.append(await client.wait(pending))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        await until(lambda: len(pending.hashes) >= 3)
        # each version replaced the one before in the pool: one tx waits
        assert len(node.chain.mempool) == 1 and first_hash not in node.chain.mempool
        await node.sealer.seal()
    (receipt,) = result
    assert receipt.tx_hash in pending.hashes[1:] and len(set(pending.hashes)) == len(pending.hashes)
    assert pending.fees.max_fee > first_fees.max_fee and pending.fees.tip > first_fees.tip
    assert await client.balance(BOB_ADDR) == 10**21 + 7


async def test_gives_up_with_tx_timeout(node: Node) -> None:
    node.sealer.auto = False
    client = node.client(policy=TxPolicy(poll_interval=0.01, resubmit_after=0.02, max_resubmits=1, timeout=30))
    with pytest.raises(TxTimeout) as info:
        await client.transact(BOB_ADDR, b"", value=1)
    assert len(info.value.hashes) == 2


async def test_waits_for_confirmations(node: Node) -> None:
    node.sealer.auto = False
    client = node.client(policy=TxPolicy(confirmations=2, poll_interval=0.005, resubmit_after=30, timeout=30))
    pending = await client.send(BOB_ADDR, b"", value=1)
    seen: list[tuple[int, int]] = []

    async def wait() -> None:
        receipt = await client.wait(pending)
        seen.append((receipt.block_number, node.chain.head.block_number))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(wait)
        for _ in range(10):  # one block at a time, each given time to be seen
            await node.sealer.seal()
            await trio.sleep(0.05)
            if seen:
                break
    ((mined, head_at_return),) = seen
    assert head_at_return >= mined + 2


async def test_refused_transaction_is_tx_rejected(node: Node) -> None:
    client = node.client()
    with pytest.raises(TxRejected, match="InsufficientFunds"):
        await client.transact(BOB_ADDR, b"", value=10**30, gas=21_000)  # explicit gas: no estimate
    assert (await client.transact(BOB_ADDR, b"", value=1)).status == 1  # the nonce was not used up


async def test_revert_reasons_from_estimate_call_and_receipt(node: Node) -> None:
    token = Token(node.client(BOB), STAKE_TOKEN_ADDRESS)  # BOB holds no tokens
    with pytest.raises(ContractRevert, match="insufficient balance") as estimated:
        await token.transfer(bytes.fromhex(ALICE.address[2:]), 1)
    assert estimated.value.receipt is None
    # sent anyway (explicit gas: no estimate), mined with status 0, reason replayed
    with pytest.raises(ContractRevert, match="insufficient balance") as mined:
        await token.transact("transfer", bytes.fromhex(ALICE.address[2:]), 1, gas=100_000)
    assert mined.value.receipt is not None and mined.value.receipt.status == 0
    with pytest.raises(ContractRevert, match="insufficient allowance"):
        await token.view("transferFrom", bytes.fromhex(ALICE.address[2:]), BOB_ADDR, 1)
    assert await token.balance_of(BOB_ADDR) == 0


def test_revert_reason_decoding() -> None:
    error = bytes.fromhex("08c379a0") + abi_encode(["string"], ["no way"])
    assert revert_reason(error) == "no way"
    assert revert_reason(bytes.fromhex("4e487b71") + abi_encode(["uint256"], [0x11])) == "panic 0x11"
    assert revert_reason(error[:40], "fallback") == "fallback"  # truncated
    assert revert_reason(b"\xde\xad\xbe\xef", "fallback") == "fallback"
    assert revert_reason(b"") == "execution reverted"


async def test_read_only_client_cannot_send(node: Node) -> None:
    client = ContractClient(node.backend)
    assert await client.block_number() == 0
    with pytest.raises(NoAccount):
        await client.transact(BOB_ADDR, b"")


async def test_in_process_errors_are_rpc_errors(node: Node) -> None:
    with pytest.raises(RPCError) as info:
        await node.backend.request("eth_noSuchMethod", [])
    assert info.value.code == -32601
    with pytest.raises(RPCError) as info:
        await node.backend.request("eth_getBalance", ["0x1234"])
    assert info.value.code == -32602


# -- typed contracts ----------------------------------------------------------------------------


def test_task_params_follow_the_abi() -> None:
    (param,) = load("TaskRegistry").function("create_task")["inputs"]
    assert [c["name"] for c in param["components"]] == [f.name for f in fields(TaskParams)]


async def test_events_skip_foreign_logs_and_reject_undecodable_ones(node: Node) -> None:
    registry = Registry(node.client(), TASK_REGISTRY_ADDRESS)
    created = event_topic(registry.artifact.event("TaskCreated"))

    def log(address: bytes, topics: tuple[bytes, ...], data: bytes) -> Log:
        return Log(address, topics, data, 1, bytes(32), bytes(32), 0)

    assert registry.decode_events([log(bytes(20), (created,), b"")]) == []  # another contract
    assert registry.decode_events([log(TASK_REGISTRY_ADDRESS, (keccak(b"x"),), b"")]) == []  # unknown
    forged = log(TASK_REGISTRY_ADDRESS, (created, bytes(32), bytes(32)), b"\x01" * 7)
    with pytest.raises(MalformedEvent):
        registry.decode_events([forged])
    assert await registry.events(0, 0) == []


# -- choosing a backend -------------------------------------------------------------------------


async def test_open_backend_follows_the_config(node: Node) -> None:
    contracts = {"registry": "0x" + "11" * 20, "token": "0x" + "22" * 20}
    external = open_backend(Config().with_overrides(chain={"rpc_url": "http://127.0.0.1:1", **contracts}))
    assert isinstance(external, HttpBackend)
    await external.aclose()
    assert isinstance(open_backend(Config(), node.chain), InProcessBackend)
    with pytest.raises(ValueError):
        open_backend(Config())
    with pytest.raises(ValueError):
        HttpBackend("ftp://127.0.0.1/")


# -- bad replies from a node --------------------------------------------------------------------


def echo_id(request: httpx.Request) -> int:
    return int(json.loads(request.content)["id"])


REPLIES: dict[str, tuple[Callable[[httpx.Request], httpx.Response], type[Exception]]] = {
    "not json": (lambda r: httpx.Response(200, content=b"<html>"), MalformedReply),
    "not an object": (lambda r: httpx.Response(200, json=[1, 2]), MalformedReply),
    "wrong id": (lambda r: httpx.Response(200, json={"jsonrpc": "2.0", "id": 999, "result": "0x1"}), MalformedReply),
    "no version": (lambda r: httpx.Response(200, json={"id": echo_id(r), "result": "0x1"}), MalformedReply),
    "result and error": (
        lambda r: httpx.Response(200, json={"jsonrpc": "2.0", "id": echo_id(r), "result": 1, "error": {}}),
        MalformedReply,
    ),
    "bad error object": (
        lambda r: httpx.Response(200, json={"jsonrpc": "2.0", "id": echo_id(r), "error": {"code": "x"}}),
        MalformedReply,
    ),
    "error": (
        lambda r: httpx.Response(
            200, json={"jsonrpc": "2.0", "id": echo_id(r), "error": {"code": -32000, "message": "boom"}}
        ),
        RPCError,
    ),
    "http 502": (lambda r: httpx.Response(502, content=b"bad gateway"), ChainUnavailable),
    "declared too large": (
        lambda r: httpx.Response(200, headers={"content-length": str(10**9)}, content=b"{}"),
        ReplyTooLarge,
    ),
}


@pytest.mark.parametrize("case", list(REPLIES))
async def test_http_backend_rejects_bad_replies(case: str) -> None:
    handler, error = REPLIES[case]
    async with HttpBackend("http://node.invalid", transport=httpx.MockTransport(handler)) as backend:
        with pytest.raises(error):
            await backend.request("eth_blockNumber", [])


async def test_http_backend_caps_a_streamed_reply() -> None:
    async def endless() -> AsyncIterator[bytes]:
        while True:
            yield b" " * 65536

    transport = httpx.MockTransport(lambda r: httpx.Response(200, content=endless()))
    async with HttpBackend("http://node.invalid", transport=transport, max_reply_bytes=1 << 20) as backend:
        with pytest.raises(ReplyTooLarge):
            await backend.request("eth_blockNumber", [])


@pytest.mark.parametrize(
    ("method", "result"),
    [
        ("block_number", "0xzz"),
        ("block_number", 17),
        ("chain_id", None),
        ("receipt", {"transactionHash": "0x" + "00" * 32}),  # fields missing
        ("receipt", ["not", "an", "object"]),
        ("logs", {"not": "a list"}),
        ("logs", [{"address": "0x12", "topics": [], "data": "0x"}]),
    ],
)
async def test_client_rejects_results_of_the_wrong_shape(method: str, result: object) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"jsonrpc": "2.0", "id": echo_id(request), "result": result})

    async with HttpBackend("http://node.invalid", transport=httpx.MockTransport(handler)) as backend:
        client = ContractClient(backend)
        calls = {
            "block_number": client.block_number,
            "chain_id": client.chain_id,
            "receipt": lambda: client.get_receipt(bytes(32)),
            "logs": lambda: client.get_logs(bytes(20), 0, 0),
        }
        with pytest.raises(MalformedReply):
            await calls[method]()


async def serve(nursery: trio.Nursery, handler: Callable[[trio.SocketStream], Awaitable[None]]) -> str:
    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return f"http://127.0.0.1:{listeners[0].socket.getsockname()[1]}"


async def test_silent_node_times_out(nursery: trio.Nursery) -> None:
    async def silent(stream: trio.SocketStream) -> None:
        await trio.sleep_forever()

    async with HttpBackend(await serve(nursery, silent), timeout=0.3) as backend:
        with pytest.raises(ChainTimeout):
            await backend.request("eth_blockNumber", [])


async def test_dripping_node_hits_the_whole_reply_deadline(nursery: trio.Nursery) -> None:
    async def drip(stream: trio.SocketStream) -> None:
        await stream.receive_some(65536)
        await stream.send_all(b"HTTP/1.1 200 OK\r\ncontent-length: 100000\r\n\r\n")
        while True:  # each byte arrives well within httpx's per-read timeout
            await stream.send_all(b" ")
            await trio.sleep(0.02)

    async with HttpBackend(await serve(nursery, drip), timeout=0.5) as backend:
        with pytest.raises(ChainTimeout):
            await backend.request("eth_blockNumber", [])


async def test_unreachable_node() -> None:
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    async with HttpBackend(f"http://127.0.0.1:{port}", timeout=5) as backend:
        with pytest.raises(ChainUnavailable):
            await backend.request("eth_blockNumber", [])
