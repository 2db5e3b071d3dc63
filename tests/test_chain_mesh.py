"""The chain service on real libp2p hosts (127.0.0.1) and real embedded chains, under attack:
a hijacked catch-up, a block too large to gossip, a gossip flood."""

from __future__ import annotations

import contextlib
import time

import msgpack
import rlp
import trio
from eth_account import Account
from eth_keys import keys

from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.service import ChainService
from flockd.chain.node.sync import (
    BLOCK_TOPIC,
    BLOCKS_KIND,
    MAX_GOSSIP_BLOCK,
    TX_TOPIC,
    encode_announcement,
)
from flockd.p2p.abc import P2PError
from flockd.p2p.host import P2PService
from flockd.p2p.limits import P2PLimits

NET = "chainmesh"
AUTHORITY = keys.PrivateKey(b"\x31" * 32)
ALICE = Account.from_key(b"\x0a" * 32)
LIMITS = P2PLimits(peer_exchange_interval=0.3, bootstrap_backoff_max=1.0)


def make_genesis() -> Genesis:
    return Genesis.create(
        chain_id=4243,
        authorities=[AUTHORITY.public_key.to_canonical_address()],
        timestamp=int(time.time()) - 5,
        alloc={ALICE.address: {"balance": 10**21}},
    )


async def start(
    nursery: trio.Nursery, genesis: Genesis, secret: bytes, sealer: keys.PrivateKey | None, bootstrap: list[str]
) -> tuple[ChainService, P2PService]:
    network = P2PService(secret, network_id=NET, bootstrap=bootstrap, limits=LIMITS)
    service = ChainService(EmbeddedChain(genesis, None, sealer), network)
    await nursery.start(network.run)
    await nursery.start(service.run)
    return service, network


async def wait_until(condition: object, poll: float = 0.1) -> None:
    while not condition():  # type: ignore[operator]
        await trio.sleep(poll)


def head(service: ChainService) -> int:
    return int(service.chain.head.block_number)


async def test_hijacked_catch_up_does_not_stall_sync() -> None:
    """A peer relays the authority's genuine header (and junk far heights), then serves
    block requests at a crawl: the victim's other attempts, with other peers, sync it."""
    genesis = make_genesis()
    crawled = trio.Event()

    async def crawl(peer_id: str, kind: str, data: bytes) -> bytes | None:
        crawled.set()
        await trio.sleep(120)  # one block every two minutes, at best
        return None

    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            authority, a_net = await start(nursery, genesis, b"\x31" * 32, AUTHORITY, [])
            await wait_until(lambda: head(authority) >= 6)
            attacker = P2PService(b"\x66" * 32, network_id=NET, bootstrap=[a_net.listen_addrs()[0]], limits=LIMITS)
            attacker.handle_blobs(BLOCKS_KIND, crawl, max_size=1024)
            await nursery.start(attacker.run)
            victim, _ = await start(nursery, genesis, b"\x32" * 32, None, [attacker.listen_addrs()[0]])

            async def hijack() -> None:
                while True:
                    # The authority's genuine head, announced as if too large to gossip...
                    best = authority.chain.head
                    payloads = [encode_announcement(rlp.encode(best), b"x" * (MAX_GOSSIP_BLOCK + 1))]
                    if crawled.is_set():  # ...and, once it crawls, a far height nobody sealed
                        payloads.append(msgpack.packb([1, 10**6, bytes(32), None]))
                    for payload in payloads:
                        with contextlib.suppress(P2PError):
                            await attacker.publish(BLOCK_TOPIC, "block", payload)
                    await trio.sleep(0.2)

            nursery.start_soon(hijack)
            await crawled.wait()  # the victim did ask the attacker
            goal = head(authority) + 3
            await wait_until(lambda: head(victim) >= goal)
            assert victim.chain.canonical_hash(goal) == authority.chain.canonical_hash(goal)
            nursery.cancel_scope.cancel()


async def test_large_block_propagates() -> None:
    """Two large-calldata transactions make a block over the gossip cap: it is announced by
    header only and fetched by hash."""
    genesis = make_genesis()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            authority, a_net = await start(nursery, genesis, b"\x31" * 32, AUTHORITY, [])
            follower, _ = await start(nursery, genesis, b"\x33" * 32, None, [a_net.listen_addrs()[0]])
            await wait_until(lambda: head(follower) >= head(authority) >= 2)
            hashes = []
            for nonce in range(2):
                tx = ALICE.sign_transaction(
                    {
                        "to": ALICE.address, "value": 0, "gas": 4_200_000, "maxFeePerGas": 10**10,
                        "maxPriorityFeePerGas": 10**9, "nonce": nonce, "chainId": 4243, "type": 2,
                        "data": bytes([7]) * 100_000,
                    }
                )
                hashes.append(authority.api.eth_sendRawTransaction("0x" + bytes(tx.raw_transaction).hex()))
            await wait_until(lambda: authority.chain.get_receipt(bytes.fromhex(hashes[1][2:])) is not None)
            receipt = authority.chain.get_receipt(bytes.fromhex(hashes[1][2:]))
            big = authority.chain.get_block_by_number(receipt.block_number)
            assert len(rlp.encode(big)) > MAX_GOSSIP_BLOCK and len(big.transactions) == 2
            await wait_until(lambda: follower.chain.canonical_hash(big.number) == big.hash)
            await wait_until(lambda: head(follower) >= big.number + 2)
            nursery.cancel_scope.cancel()


async def test_gossip_flood_does_not_stop_sealing_or_import() -> None:
    genesis = make_genesis()
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            authority, a_net = await start(nursery, genesis, b"\x31" * 32, AUTHORITY, [])
            follower, f_net = await start(nursery, genesis, b"\x34" * 32, None, [a_net.listen_addrs()[0]])
            flooder = P2PService(b"\x67" * 32, network_id=NET, bootstrap=[f_net.listen_addrs()[0]], limits=LIMITS)
            await nursery.start(flooder.run)
            await wait_until(lambda: head(follower) >= 2 and len(f_net.peers()) == 2)

            async def flood() -> None:
                old = authority.chain.get_block_by_number(1)
                replay = encode_announcement(rlp.encode(old.header), rlp.encode(old))
                i = 0
                while True:
                    i += 1
                    for topic, payload in ((BLOCK_TOPIC, replay), (TX_TOPIC, bytes([i % 256]) * 1000)):
                        with contextlib.suppress(P2PError):
                            await flooder.publish(topic, "x", payload)
                    await trio.sleep(0)

            nursery.start_soon(flood)
            start_head = head(authority)
            await wait_until(lambda: head(follower) >= start_head + 5)
            assert follower.chain.canonical_hash(start_head + 5) == authority.chain.canonical_hash(start_head + 5)
            # Its junk transactions (no node would admit them) got it banned and cut off.
            await wait_until(lambda: f_net.counters.get("peers_banned") == 1)
            assert f_net.is_banned(flooder.peer_id) and not a_net.is_banned(f_net.peer_id)
            nursery.cancel_scope.cancel()


PAIR = [keys.PrivateKey(bytes([0x41 + i]) * 32) for i in range(2)]


def pair_genesis() -> Genesis:
    return Genesis.create(
        chain_id=4244,
        authorities=[k.public_key.to_canonical_address() for k in PAIR],
        timestamp=int(time.time()) - 600,
    )


def seal_alone(chain: EmbeddedChain, blocks: int) -> None:
    for _ in range(blocks):
        chain.seal_block(chain.next_seal_time(0))


async def test_partitioned_authority_rejoins_by_reorg_and_counts_it() -> None:
    genesis = pair_genesis()
    chains = [EmbeddedChain(genesis, None, key) for key in PAIR]
    # Apart, each sealed its own branch (in the past); the first one's is longer.
    seal_alone(chains[0], 40)
    seal_alone(chains[1], 25)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            nets = []
            services = []
            for i, chain in enumerate(chains):
                bootstrap = [nets[0].listen_addrs()[0]] if nets else []
                net = P2PService(bytes([0x41 + i]) * 32, network_id=NET, bootstrap=bootstrap, limits=LIMITS)
                service = ChainService(chain, net)
                await nursery.start(net.run)
                await nursery.start(service.run)
                nets.append(net)
                services.append(service)
            await wait_until(lambda: services[1].counters.get("reorgs") >= 1)
            await wait_until(lambda: head(services[1]) >= 42 and head(services[0]) >= 42)
            assert chains[1].canonical_hash(41) == chains[0].canonical_hash(41)
            assert services[0].counters.get("reorgs") == 0
            nursery.cancel_scope.cancel()


async def test_authority_without_peers_does_not_seal() -> None:
    genesis = Genesis.create(
        chain_id=4244, authorities=[k.public_key.to_canonical_address() for k in PAIR], timestamp=int(time.time()) - 5
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            lone, _ = await start(nursery, genesis, bytes([0x41]) * 32, PAIR[0], [])
            await trio.sleep(4)  # four slots, two of them its own
            assert head(lone) == 0
            nursery.cancel_scope.cancel()


async def test_a_new_head_wakes_whoever_waits_for_it() -> None:
    """wait_head_moved returns once the head moves: on the authority when it seals, on a
    follower when it imports; the task runners read the chain then."""
    genesis = make_genesis()
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            authority, a_net = await start(nursery, genesis, b"\x31" * 32, AUTHORITY, [])
            follower, _ = await start(nursery, genesis, b"\x33" * 32, None, [a_net.listen_addrs()[0]])
            await wait_until(lambda: head(follower) >= 1)
            for service in (authority, follower):
                before = head(service)
                await service.wait_head_moved()
                assert head(service) > before
            nursery.cancel_scope.cancel()
