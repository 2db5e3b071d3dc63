"""A node that comes back to its peers does not act on its own head until it holds theirs.

Real libp2p hosts on 127.0.0.1 and real embedded chains: an authority that sealed a branch
alone (as a partitioned one did, or one restarted on a stale head) rejoins a peer whose
branch is longer. Having peers again is not enough to trust its head: until its catch-up
replaced its branch, the task runner must not act on it (`ChainService.head_synced`).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import trio
from eth_keys import keys
from test_runner import Node, until

from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.service import ChainService
from flockd.p2p.host import P2PService
from flockd.p2p.limits import P2PLimits
from flockd.tasks import runner as runner_module

NET = "chainrejoin"
PAIR = [keys.PrivateKey(bytes([0x51 + i]) * 32) for i in range(2)]
LIMITS = P2PLimits(peer_exchange_interval=0.3, bootstrap_backoff_max=1.0)


def seal_alone(chain: EmbeddedChain, blocks: int) -> None:
    for _ in range(blocks):
        chain.seal_block(chain.next_seal_time(0))


async def start_services(
    nursery: trio.Nursery, chains: list[EmbeddedChain], first_secret: int, bootstrap_to: str | None = None,
) -> tuple[list[P2PService], list[ChainService]]:
    """One host and chain service per chain, in this order, each bootstrapped to the first
    (or all to ``bootstrap_to``)."""
    nets: list[P2PService] = []
    services: list[ChainService] = []
    for i, chain in enumerate(chains):
        first = bootstrap_to or (nets[0].listen_addrs()[0] if nets else None)
        bootstrap = [first] if first else []
        net = P2PService(bytes([first_secret + i]) * 32, network_id=NET, bootstrap=bootstrap, limits=LIMITS)
        service = ChainService(chain, net)
        await nursery.start(net.run)
        await nursery.start(service.run)
        nets.append(net)
        services.append(service)
    return nets, services




def split_pair(chain_id: int) -> list[EmbeddedChain]:
    """Two authorities' chains after a split: the first sealed 40 blocks (its peers' branch,
    longer), the second 25 alone (cut off, or before a restart)."""
    genesis = Genesis.create(
        chain_id=chain_id, authorities=[k.public_key.to_canonical_address() for k in PAIR],
        timestamp=int(time.time()) - 600,
    )
    chains = [EmbeddedChain(genesis, None, key) for key in PAIR]
    seal_alone(chains[0], 40)
    seal_alone(chains[1], 25)
    return chains


async def test_a_rejoining_authority_trusts_its_head_only_once_it_holds_its_peers_chain() -> None:
    chains = split_pair(4245)
    own_tip = chains[1].head.hash
    samples: list[tuple[bool, bool, bool]] = []  # (has peers, head trusted, still on its own branch)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            (_, net_b), (_, service_b) = await start_services(nursery, chains, 0x61)
            while True:
                # In this order: its own branch, once replaced by the longer one, never
                # comes back, so "trusted, then still on its own branch" is a real overlap.
                peers = bool(net_b.peers())
                trusted = await service_b.head_synced()
                on_own = await trio.to_thread.run_sync(chains[1].canonical_hash, 25) == own_tip
                samples.append((peers, trusted, on_own))
                if trusted and not on_own:
                    break
                await trio.sleep(0.01)
            assert service_b.counters.get("reorgs") >= 1
            nursery.cancel_scope.cancel()
    # Peers alone (the runner's only gate before) would have let it act on its own branch...
    assert any(peers and on_own for peers, _, on_own in samples)
    # ...the head is trusted only once that branch is gone.
    assert not any(trusted and on_own for _, trusted, on_own in samples)


async def test_a_node_without_peers_does_not_trust_its_head() -> None:
    genesis = Genesis.create(
        chain_id=4246, authorities=[k.public_key.to_canonical_address() for k in PAIR], timestamp=int(time.time()) - 5
    )
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net = P2PService(b"\x63" * 32, network_id=NET, limits=LIMITS)
            lone = ChainService(EmbeddedChain(genesis, None, PAIR[0]), net)
            await nursery.start(net.run)
            await nursery.start(lone.run)
            assert not await lone.head_synced()
            nursery.cancel_scope.cancel()


async def test_the_sole_authority_trusts_its_head_and_seals_alone() -> None:
    genesis = Genesis.create(chain_id=4247, authorities=[PAIR[0].public_key.to_canonical_address()],
                             timestamp=int(time.time()) - 5)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            net = P2PService(b"\x64" * 32, network_id=NET, limits=LIMITS)
            sole = ChainService(EmbeddedChain(genesis, None, PAIR[0]), net)
            await nursery.start(net.run)
            await nursery.start(sole.run)
            assert await sole.head_synced()
            while sole.chain.head.block_number < 2:  # no peers, nobody to wait for
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()


async def test_the_task_runner_waits_while_the_head_is_not_synced(tmp_path: Path, monkeypatch) -> None:
    # The runner's side of the gate, against the scripted chain: it has peers all along,
    # but while the chain service does not vouch for the head it sends nothing.
    monkeypatch.setattr(runner_module, "POLL_SECONDS", 0.005)
    node = Node(tmp_path)
    synced = False

    async def head_synced() -> bool:
        return synced

    runner = node.runner()
    runner.ctx = runner.feed.ctx = dataclasses.replace(runner.ctx, head_synced=head_synced)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.run)
        node.chain.open_round(0)
        node.chain.seal_until(3)
        await trio.sleep(0.1)  # many polls
        assert node.chain.sent == [] and runner.machine.current_round is None
        synced = True
        await until(lambda: "decline" in node.chain.sent_fns(0), "the synced node to act")
        nursery.cancel_scope.cancel()


async def test_a_node_cut_off_by_net_isolate_trusts_its_head_only_once_caught_up() -> None:
    # The chaos testnet's partition: one of three authorities drops every peer and refuses
    # connections for a while; the other two seal on. Back, it has peers at once, but its
    # head is behind until its catch-up: acting then would act on a stale round.
    trio_keys = [keys.PrivateKey(bytes([0x91 + i]) * 32) for i in range(3)]
    genesis = Genesis.create(
        chain_id=4248, authorities=[k.public_key.to_canonical_address() for k in trio_keys],
        timestamp=int(time.time()) - 5,
    )
    samples: list[tuple[bool, bool, int]] = []  # (has peers, head trusted, head)
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            chains = [EmbeddedChain(genesis, None, key) for key in trio_keys]
            nets, services = await start_services(nursery, chains, 0x81)
            cut, cut_net = services[2], nets[2]
            while not await cut.head_synced() or cut.chain.head.block_number < 3:
                await trio.sleep(0.1)
            await cut_net.isolate(6.0)
            while not cut_net.peers():
                samples.append((False, await cut.head_synced(), cut.chain.head.block_number))
                await trio.sleep(0.05)
            ahead = services[0].chain.head.block_number  # the others' head when it is back
            while True:
                # In this order: its head only grows, so "trusted, then below" is a real overlap.
                peers = bool(cut_net.peers())
                trusted = await cut.head_synced()
                head = await trio.to_thread.run_sync(lambda: cut.chain.head.block_number)
                samples.append((peers, trusted, head))
                if trusted and head >= ahead:
                    break
                await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
    assert not any(trusted for peers, trusted, _ in samples if not peers)  # cut off: never
    # Back among peers but behind (the runner's peers-only gate would have acted here)...
    assert any(peers and head < ahead for peers, _, head in samples)
    # ...and trusted only once it held what the others had sealed meanwhile.
    assert not any(trusted and head < ahead for peers, trusted, head in samples if peers)
