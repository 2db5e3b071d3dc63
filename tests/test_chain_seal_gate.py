"""An authority seals only on a head it can trust (ChainService's seal loop).

Real libp2p hosts on 127.0.0.1 and real embedded chains. An authority restarted on a
stale branch of its own (it sealed alone while cut off) rejoins a peer whose branch is
longer: until its catch-up has replaced that branch, any block it sealed would extend a
fork its peers reorganise away (and reach them as one more reorg). The sole authority of a
chain (tests/test_chain_rejoin.py), and an authority among peers none of which seals,
must still seal.
"""

from __future__ import annotations

import time

import rlp
import trio
from eth_keys import keys
from test_chain_rejoin import seal_alone, start_services

from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.records import ImportResult


class SealSpy:
    """Wraps a chain's seal_block: for each block it seals, was the chain still on the
    branch whose block ``number`` is ``own``?"""

    def __init__(self, chain: EmbeddedChain, number: int, own: bytes) -> None:
        self.on_own: list[bool] = []
        seal = chain.seal_block

        def spy(timestamp: int):  # type: ignore[no-untyped-def]
            on_own = chain.canonical_hash(number) == own
            block = seal(timestamp)
            self.on_own.append(on_own)
            return block

        chain.seal_block = spy  # type: ignore[method-assign]


def slow_imports(chain: EmbeddedChain, seconds: float, count: int) -> None:
    """The next ``count`` imports take ``seconds`` longer each (in their worker threads):
    blocks full of transactions on a loaded machine, a catch-up that spans several
    sealing turns. Then the node keeps up again."""
    import_block = chain.import_block
    slowed = [0]

    def slow(raw: bytes) -> ImportResult:
        if slowed[0] < count:
            slowed[0] += 1
            time.sleep(seconds)
        return import_block(raw)

    chain.import_block = slow  # type: ignore[method-assign]


async def test_a_restarted_authority_seals_nothing_on_its_stale_branch() -> None:
    # Two authorities of three seal on (their branch: 40 blocks and growing); the third
    # restarts on 25 blocks it sealed alone and reaches them, and its catch-up is slow.
    three = [keys.PrivateKey(bytes([0xC1 + i]) * 32) for i in range(3)]
    genesis = Genesis.create(
        chain_id=4251, authorities=[k.public_key.to_canonical_address() for k in three],
        timestamp=int(time.time()) - 600,
    )
    chains = [EmbeddedChain(genesis, None, key) for key in three]
    seal_alone(chains[0], 40)
    for number in range(1, 41):
        block = chains[0].get_block_by_number(number)
        assert block is not None and chains[1].import_block(rlp.encode(block)).new_head
    seal_alone(chains[2], 25)
    spy = SealSpy(chains[2], 25, chains[2].head.hash)
    slow_imports(chains[2], 1.0, 30)
    with trio.fail_after(180):
        async with trio.open_nursery() as nursery:
            nets, _ = await start_services(nursery, chains[:2], 0xC5)
            while chains[0].head.block_number < 42:  # sealing on
                await trio.sleep(0.1)
            _, (restarted,) = await start_services(nursery, chains[2:], 0xC8, nets[0].listen_addrs()[0])
            while len(spy.on_own) < 2:  # it seals again, once it holds its peers' chain
                await trio.sleep(0.05)
            nursery.cancel_scope.cancel()
    assert not any(spy.on_own)
    assert restarted.counters.get("reorgs") >= 1


async def test_authorities_whose_peers_seal_nothing_start_sealing() -> None:
    # A network's first blocks (or every other authority restarted at once): nobody has a
    # head to announce, so waiting for one would wait for ever.
    three = [keys.PrivateKey(bytes([0xA1 + i]) * 32) for i in range(3)]
    genesis = Genesis.create(
        chain_id=4252, authorities=[k.public_key.to_canonical_address() for k in three],
        timestamp=int(time.time()) - 5,
    )
    with trio.fail_after(120):
        async with trio.open_nursery() as nursery:
            _, services = await start_services(nursery, [EmbeddedChain(genesis, None, key) for key in three], 0xB1)
            while min(s.chain.head.block_number for s in services) < 3:
                await trio.sleep(0.1)
            nursery.cancel_scope.cancel()

