"""PoA sealing and import: 4 in-process authorities agree; forged or ill-timed blocks are refused."""

from __future__ import annotations

import pytest
import rlp
from eth.abc import BlockAPI
from eth_hash.auto import keccak
from eth_keys import keys

from flockd.chain.node.embedded import (
    MAX_BLOCK_BYTES,
    BlockTooLarge,
    EmbeddedChain,
    InvalidExecution,
    MalformedBlock,
    NotOurTurn,
)
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.poa import (
    BadHeaderField,
    BadSeal,
    BadTimestamp,
    FutureBlock,
    OutOfTurn,
    UnauthorizedSigner,
    sign_header,
)

T0 = 1_700_000_000
KEYS = [keys.PrivateKey(bytes([i + 1]) * 32) for i in range(4)]
OUTSIDER = keys.PrivateKey(b"\x77" * 32)


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def make_network(tmp_path, clock: Clock, **genesis_args) -> list[EmbeddedChain]:
    genesis = Genesis.create(
        chain_id=4242,
        authorities=[k.public_key.to_canonical_address() for k in KEYS],
        timestamp=T0,
        **genesis_args,
    )
    return [EmbeddedChain(genesis, tmp_path / f"node{i}.db", k, clock=clock) for i, k in enumerate(KEYS)]


def next_block(nodes: list[EmbeddedChain], clock: Clock, silent: set[int] = frozenset()) -> tuple[int, BlockAPI]:
    """Advance the fake clock to the earliest slot a live authority owns; it seals."""
    turns = {i: n.next_seal_time(clock.now) for i, n in enumerate(nodes) if i not in silent}
    sealer = min(turns, key=lambda i: turns[i])
    clock.now = turns[sealer]
    return sealer, nodes[sealer].seal_block(turns[sealer])


def broadcast(nodes: list[EmbeddedChain], sealer: int, block: BlockAPI) -> None:
    raw = rlp.encode(block)
    for i, node in enumerate(nodes):
        if i != sealer:
            assert node.import_block(raw).new_head


def test_four_authorities_agree_over_200_blocks(tmp_path):
    clock = Clock()
    nodes = make_network(tmp_path, clock)
    sealers = []
    for n in range(1, 221):
        # Authority 2 goes silent for a while: the next one in order takes its turns.
        sealer, block = next_block(nodes, clock, silent={2} if 60 <= n < 100 else set())
        broadcast(nodes, sealer, block)
        sealers.append(sealer)
    heads = {node.head.hash for node in nodes}
    assert len(heads) == 1 and nodes[0].head.block_number == 220
    assert sealers[:8] == [1, 2, 3, 0, 1, 2, 3, 0]  # block n is authorities[n % 4]'s
    assert 2 not in sealers[59:99] and sealers.count(3) > sealers.count(1)  # 3 stood in for 2
    # Every block of the common chain is byte-identical on every node.
    for number in (1, 77, 220):
        assert len({rlp.encode(node.get_block_by_number(number)) for node in nodes}) == 1


def _fresh_block(nodes: list[EmbeddedChain], clock: Clock) -> tuple[int, BlockAPI]:
    """A valid block for height 1, sealed by its in-turn authority but not delivered."""
    return next_block(nodes, clock)


def _resign(block: BlockAPI, key: keys.PrivateKey, **fields) -> BlockAPI:
    header = block.header.copy(**fields)
    return block.copy(header=sign_header(header, key))


def _rejected_by_all(nodes: list[EmbeddedChain], sealer: int, block: BlockAPI, error: type[Exception]) -> None:
    raw = rlp.encode(block)
    for i, node in enumerate(nodes):
        if i != sealer:
            with pytest.raises(error):
                node.import_block(raw)
            assert node.head.block_number == 0


def test_forged_and_ill_timed_blocks_are_rejected_by_all(tmp_path):
    clock = Clock()
    nodes = make_network(tmp_path, clock)
    sealer, block = _fresh_block(nodes, clock)
    key = KEYS[sealer]
    outsider = OUTSIDER.public_key.to_canonical_address()
    other = KEYS[(sealer + 1) % 4]

    _rejected_by_all(nodes, sealer, _resign(block, OUTSIDER, coinbase=outsider), UnauthorizedSigner)
    # Tampered seal: a broken recovery id fails to recover; a flipped byte of r recovers
    # someone else (not an authority).
    seal = bytearray(block.header.extra_data)
    seal[-1] = 9
    _rejected_by_all(nodes, sealer, block.copy(header=block.header.copy(extra_data=bytes(seal))), BadSeal)
    seal = bytearray(block.header.extra_data)
    seal[-65] ^= 0x01
    _rejected_by_all(
        nodes, sealer, block.copy(header=block.header.copy(extra_data=bytes(seal))), (BadSeal, UnauthorizedSigner)
    )
    # A real authority, but not the one whose turn it is.
    _rejected_by_all(
        nodes, sealer, _resign(block, other, coinbase=other.public_key.to_canonical_address()), OutOfTurn
    )
    # The in-turn authority itself, breaking other rules.
    _rejected_by_all(nodes, sealer, _resign(block, key, state_root=b"\x13" * 32), InvalidExecution)
    _rejected_by_all(nodes, sealer, _resign(block, key, gas_limit=block.header.gas_limit + 1), BadHeaderField)
    _rejected_by_all(nodes, sealer, _resign(block, key, timestamp=T0), BadTimestamp)  # not after parent
    # Bytes that are no block at all.
    for raw, error in ((b"\xc0", MalformedBlock), (b"\x01" * 10, MalformedBlock), (b"\x00" * (MAX_BLOCK_BYTES + 1), BlockTooLarge)):
        with pytest.raises(error):
            nodes[0].import_block(raw)
    # The untampered block is fine.
    broadcast(nodes, sealer, block)


def _with_vanity(block: BlockAPI, key: keys.PrivateKey, vanity: bytes) -> BlockAPI:
    """The block re-sealed correctly by `key`, with `vanity` bytes before the seal."""
    placeholder = block.header.copy(extra_data=vanity + bytes(65))
    unsealed = placeholder.copy(extra_data=vanity)
    signature = key.sign_msg_hash(keccak(rlp.encode(unsealed)))
    return block.copy(header=block.header.copy(extra_data=vanity + signature.to_bytes()))


def test_a_sealer_grinding_the_block_hash_with_vanity_bytes_is_rejected(tmp_path):
    """The round seed hashes a block's hash: a sealer free to pick 32 bytes of its header
    could try hashes until a seed suits it. extra_data is the seal and nothing else."""
    clock = Clock()
    nodes = make_network(tmp_path, clock)
    sealer, block = _fresh_block(nodes, clock)
    hashes = set()
    for attempt in range(3):
        ground = _with_vanity(block, KEYS[sealer], attempt.to_bytes(32, "big"))
        hashes.add(ground.header.hash)
        _rejected_by_all(nodes, sealer, ground, BadSeal)
    assert len(hashes) == 3  # each try was a different block hash: a choice of seeds
    assert len(block.header.extra_data) == 65
    broadcast(nodes, sealer, block)


def test_future_block_is_rejected(tmp_path):
    clock = Clock()
    nodes = make_network(tmp_path, clock, max_future_seconds=2)
    # The authority owning a slot 60 s ahead seals it early (its own clock is wrong).
    rules = nodes[0].rules
    slot = T0 + 60
    owner = next(i for i, k in enumerate(KEYS) if k.public_key.to_canonical_address() == rules.allowed_signer(1, T0, slot))
    block = nodes[owner].seal_block(slot)
    _rejected_by_all(nodes, owner, block, FutureBlock)
    clock.now = slot - 2  # once our clock nears the slot, it imports
    broadcast(nodes, owner, block)


def test_sealing_out_of_turn_is_refused_locally(tmp_path):
    clock = Clock()
    nodes = make_network(tmp_path, clock)
    with pytest.raises(NotOurTurn):
        nodes[0].seal_block(T0 + 1)  # block 1's first slot belongs to authority 1
    with pytest.raises(NotOurTurn):
        nodes[1].seal_block(T0)  # not after the parent


def test_missing_parent_known_block_and_fork_choice(tmp_path):
    clock = Clock()
    nodes = make_network(tmp_path, clock)
    lagging = 0  # authority 0's first turn is block 4: it can sit out blocks 1-2
    s1, b1 = next_block(nodes, clock, silent={lagging})
    broadcast(nodes[1:], s1 - 1, b1)
    s2, b2 = next_block(nodes, clock, silent={lagging})
    broadcast(nodes[1:], s2 - 1, b2)
    result = nodes[lagging].import_block(rlp.encode(b2))
    assert result.status == "missing_parent" and result.missing_parent == b1.hash
    assert nodes[lagging].import_block(rlp.encode(b1)).new_head
    assert nodes[lagging].import_block(rlp.encode(b2)).new_head
    assert nodes[lagging].import_block(rlp.encode(b2)).status == "known"

    # Two valid blocks at height 3: the in-turn one and a backup sealed K slots later.
    # First seen wins the tie; a longer branch then takes over.
    for node in nodes:
        for block in (b1, b2):
            assert node.import_block(rlp.encode(block)).status in ("imported", "known")
    parent = nodes[0].head
    assert parent.hash == b2.hash
    clock.now = parent.timestamp + 10
    in_turn = nodes[3 % 4]  # block 3 -> authority 3
    backup = nodes[0]
    k = nodes[0].rules.backup_after
    a = in_turn.seal_block(parent.timestamp + 1)
    b = backup.seal_block(parent.timestamp + 1 + k)
    assert nodes[1].import_block(rlp.encode(a)).new_head
    tie = nodes[1].import_block(rlp.encode(b))
    assert tie.status == "imported" and not tie.new_head and nodes[1].head.hash == a.hash
    # The backup's branch grows: block 4 on b, by whoever owns that slot.
    owner = nodes[0].rules.allowed_signer(4, b.header.timestamp, b.header.timestamp + 1)
    sealer = next(n for n in nodes if n.sealer_address == owner and n.head.hash == b.hash)
    c = sealer.seal_block(b.header.timestamp + 1)
    reorg = nodes[1].import_block(rlp.encode(c))
    assert reorg.new_head and reorg.reorged == 1 and nodes[1].head.hash == c.hash
