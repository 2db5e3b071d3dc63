"""Authority votes: the pure rule (minority, majority, who may vote, what a vote may ask), then
real py-evm chains: the change lands at the same block on every node, the added authority
seals and is accepted, the removed one stops, forged and replayed votes are refused, and
the set follows a reorganisation and a restart because it is derived from the blocks."""

from __future__ import annotations

import contextlib

import pytest
import rlp
from eth.abc import BlockAPI
from eth_account import Account
from eth_keys import keys
from hypothesis import given
from hypothesis import strategies as st

from flockd.chain.node import authority
from flockd.chain.node.authority import (
    VOTE_ADDRESS,
    VOTE_GAS,
    BadVote,
    Snapshot,
    Vote,
    decode_vote,
    encode_vote,
)
from flockd.chain.node.embedded import EmbeddedChain, InvalidExecution, NotOurTurn
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.mempool import AlreadyKnown, NonceTooLow, WrongChainId
from flockd.chain.node.poa import FutureBlock, UnauthorizedSigner, UnknownSigner, sign_header
from flockd.chain.node.sealer import build_block

A, B, C, D, X = (bytes([i]) * 20 for i in (0xA, 0xB, 0xC, 0xD, 0xE))


# -- the pure rule ---------------------------------------------------------------------------


def test_a_minority_vote_changes_nothing_and_a_majority_adds_at_the_end() -> None:
    four = Snapshot((A, B, C, D))
    assert four.needed() == 3
    two = four.apply(Vote(A, X, True)).apply(Vote(B, X, True))
    assert two.authorities == (A, B, C, D) and two.tally(X, True) == 2
    assert two.apply(Vote(B, X, True)).tally(X, True) == 2  # voting twice counts once
    three = two.apply(Vote(C, X, True))
    assert three.authorities == (A, B, C, D, X)
    assert three.votes == ()  # the decided candidate's votes are spent


def test_a_removal_keeps_the_others_order_and_kills_the_removed_ones_votes() -> None:
    s = Snapshot((A, B, C)).apply(Vote(A, X, True))  # A's vote for X is open
    s = s.apply(Vote(B, A, False))
    assert s.authorities == (A, B, C)
    s = s.apply(Vote(C, A, False))
    assert s.authorities == (B, C)
    assert s.tally(X, True) == 0 and s.votes == ()
    # Two of two are needed now; one is a minority.
    assert s.apply(Vote(B, X, True)).authorities == (B, C)


def test_votes_the_rule_refuses() -> None:
    s = Snapshot((A, B))
    with pytest.raises(BadVote, match="not an authority"):
        s.apply(Vote(X, D, True))  # a non-authority's vote
    with pytest.raises(BadVote, match="already an authority"):
        s.apply(Vote(A, B, True))
    with pytest.raises(BadVote, match="not an authority"):
        s.apply(Vote(A, X, False))
    with pytest.raises(BadVote, match="last authority"):
        Snapshot((A,)).apply(Vote(A, A, False))
    with pytest.raises(BadVote, match="no value"):
        decode_vote(A, encode_vote(X, True), 1)
    for data in (b"", encode_vote(X, True) + b"\x00", b"\x02" + X):
        with pytest.raises(BadVote, match="calldata"):
            decode_vote(A, data, 0)
    assert decode_vote(A, encode_vote(X, False), 0) == Vote(A, X, False)


def test_votes_decided_inside_one_block_apply_in_transaction_order() -> None:
    # Once X is in (second vote), X may vote in the same block, and 3 of 4 are needed now.
    s = Snapshot((A, B, C)).apply_all([Vote(A, X, True), Vote(B, X, True), Vote(X, C, False), Vote(A, C, False)])
    assert s.authorities == (A, B, C, X) and s.tally(C, False) == 2
    with pytest.raises(BadVote):
        Snapshot((A, B, C)).apply_all([Vote(A, X, True), Vote(X, C, False)])  # X is not in yet


# -- real chains --------------------------------------------------------------------------

T0 = 1_700_000_000
CHAIN_ID = 4242
KEYS = [keys.PrivateKey(bytes([0x21 + i]) * 32) for i in range(3)]
NEWCOMER = keys.PrivateKey(b"\x31" * 32)
OUTSIDER = keys.PrivateKey(b"\x77" * 32)
GWEI = 10**9


def addr(key: keys.PrivateKey) -> bytes:
    return bytes(key.public_key.to_canonical_address())


class Clock:
    def __init__(self) -> None:
        self.now = float(T0)

    def __call__(self) -> float:
        return self.now


def genesis() -> Genesis:
    funded = {addr(k): {"balance": 10**21} for k in [*KEYS, NEWCOMER, OUTSIDER]}
    return Genesis.create(chain_id=CHAIN_ID, authorities=[addr(k) for k in KEYS], timestamp=T0, alloc=funded)


def network(tmp_path, clock: Clock) -> list[EmbeddedChain]:
    """Three authorities and a fourth node that only follows, each with its own database."""
    g = genesis()
    return [EmbeddedChain(g, tmp_path / f"node{i}.db", k, clock=clock) for i, k in enumerate([*KEYS, NEWCOMER])]


def vote(key: keys.PrivateKey, nonce: int, candidate: bytes, add: bool, chain_id: int = CHAIN_ID) -> bytes:
    tx = {
        "to": VOTE_ADDRESS, "value": 0, "gas": VOTE_GAS, "maxFeePerGas": 2 * GWEI, "maxPriorityFeePerGas": GWEI,
        "nonce": nonce, "chainId": chain_id, "type": 2, "data": encode_vote(candidate, add),
    }
    return bytes(Account.from_key(key.to_bytes()).sign_transaction(tx).raw_transaction)


def next_block(nodes: list[EmbeddedChain], clock: Clock, among: set[int] | None = None) -> tuple[int, BlockAPI]:
    """The live authority whose turn comes first seals (the fake clock jumps to it)."""
    turns = {i: n.next_seal_time(clock.now) for i, n in enumerate(nodes) if among is None or i in among}
    turns = {i: t for i, t in turns.items() if t is not None}
    sealer = min(turns, key=lambda i: turns[i])
    clock.now = turns[sealer]
    return sealer, nodes[sealer].seal_block(turns[sealer])


def broadcast(nodes: list[EmbeddedChain], sealer: int, block: BlockAPI, to: set[int] | None = None) -> None:
    for i, node in enumerate(nodes):
        if i != sealer and (to is None or i in to):
            assert node.import_block(rlp.encode(block)).new_head


def submit(nodes: list[EmbeddedChain], raw: bytes) -> None:
    for node in nodes:
        node.add_transaction(raw)


def seal_until_mined(nodes: list[EmbeddedChain], clock: Clock, raw_count: int) -> list[tuple[int, BlockAPI]]:
    """Seal and broadcast until every pool is empty (the votes are in)."""
    sealed = []
    while any(len(n.mempool) for n in nodes):
        sealer, block = next_block(nodes, clock)
        broadcast(nodes, sealer, block)
        sealed.append((sealer, block))
        assert len(sealed) < 10 + raw_count
    return sealed


def test_a_vote_lands_at_the_same_block_everywhere_and_the_sealers_follow(tmp_path) -> None:
    clock = Clock()
    nodes = network(tmp_path, clock)
    founders = tuple(addr(k) for k in KEYS)
    assert nodes[3].next_seal_time() is None  # the newcomer only follows

    submit(nodes, vote(KEYS[0], 0, addr(NEWCOMER), True))
    seal_until_mined(nodes, clock, 1)
    assert all(n.authorities().authorities == founders for n in nodes)  # 1 of 3: a minority
    assert nodes[2].authorities().tally(addr(NEWCOMER), True) == 1

    submit(nodes, vote(KEYS[1], 0, addr(NEWCOMER), True))
    [(_, deciding)] = seal_until_mined(nodes, clock, 1)
    m = deciding.number
    for node in nodes:  # the same block on every node: m decides, m + 1 is the first it governs
        assert node.authorities(m - 1).authorities == founders
        assert node.authorities(m).authorities == (*founders, addr(NEWCOMER))
        assert node.authorities(m).votes == ()
    assert nodes[3].next_seal_time() is not None

    sealers, blocks = [], []
    for _ in range(8):  # the newcomer seals in turn, and the others import its blocks
        sealer, block = next_block(nodes, clock)
        broadcast(nodes, sealer, block)
        sealers.append(sealer)
        blocks.append(block)
    assert 3 in sealers

    # A follower that missed the deciding block cannot judge the newcomer's blocks yet: it
    # neither blames the sender nor starts a catch-up for them; in order, they import.
    late = EmbeddedChain(genesis(), None, None, clock=clock)
    for n in range(1, m):
        late.import_block(rlp.encode(nodes[0].get_block_by_number(n)))
    newcomers = [b for b in blocks if b.header.coinbase == addr(NEWCOMER)]
    with pytest.raises(UnknownSigner) as unknown:
        late.import_block(rlp.encode(newcomers[0]))
    assert isinstance(unknown.value, FutureBlock)  # what the chain service does not blame
    for n in range(m, blocks[-1].number + 1):
        assert late.import_block(rlp.encode(nodes[0].get_block_by_number(n))).new_head
    assert late.head.hash == blocks[-1].hash

    # Voting the first founder out takes 3 of the 4 now.
    for i, (key, nonce) in enumerate([(KEYS[1], 1), (KEYS[2], 0), (NEWCOMER, 0)]):
        submit(nodes, vote(key, nonce, addr(KEYS[0]), False))
        if i < 2:  # seal each vote alone: two votes are still a minority
            seal_until_mined(nodes, clock, 1)
            assert all(len(n.authorities().authorities) == 4 for n in nodes)
    seal_until_mined(nodes, clock, 1)
    assert all(n.authorities().authorities == (addr(KEYS[1]), addr(KEYS[2]), addr(NEWCOMER)) for n in nodes)
    assert nodes[0].next_seal_time() is None
    with pytest.raises(NotOurTurn):
        nodes[0].seal_block(int(clock.now) + 1)
    sealers = []
    for _ in range(9):
        sealer, block = next_block(nodes, clock)
        broadcast(nodes, sealer, block)
        sealers.append(sealer)
    assert 0 not in sealers and {1, 2, 3} <= set(sealers)
    # A block the removed authority signs anyway is refused everywhere.
    sealer, honest = next_block(nodes, clock)
    broadcast(nodes, sealer, honest)
    forged = honest.copy(header=sign_header(honest.header.copy(coinbase=addr(KEYS[0])), KEYS[0]))
    for node in nodes[1:]:
        with pytest.raises(UnauthorizedSigner):
            node.import_block(rlp.encode(forged))

    # Restart: the set is read back from the blocks, not remembered.
    head = nodes[1].head.hash
    nodes[1].close()
    reopened = EmbeddedChain(genesis(), tmp_path / "node1.db", KEYS[1], clock=clock)
    assert reopened.head.hash == head
    assert reopened.authorities().authorities == nodes[2].authorities().authorities
    assert reopened.authorities(m - 1).authorities == founders


def test_a_reorganisation_takes_the_vote_back(tmp_path) -> None:
    clock = Clock()
    nodes = network(tmp_path, clock)
    founders = tuple(addr(k) for k in KEYS)
    # Node 0 alone holds both votes and seals them into a branch of one block...
    nodes[0].add_transaction(vote(KEYS[0], 0, addr(NEWCOMER), True))
    nodes[0].add_transaction(vote(KEYS[1], 0, addr(NEWCOMER), True))
    _, lone = next_block(nodes, clock, among={0})
    assert nodes[0].authorities().authorities == (*founders, addr(NEWCOMER))
    # ...while nodes 1 and 2 seal a longer branch without them.
    branch = []
    for _ in range(2):
        sealer, block = next_block(nodes, clock, among={1, 2})
        broadcast(nodes, sealer, block, to={1, 2})
        branch.append(block)
    for block in branch:
        nodes[0].import_block(rlp.encode(block))
    assert nodes[0].head.hash == branch[-1].hash
    assert nodes[0].authorities().authorities == founders  # derived from the new branch
    assert len(nodes[0].mempool) == 2  # the votes wait to be sealed again
    assert nodes[0].authorities(lone.hash).authorities == (*founders, addr(NEWCOMER))  # the old branch keeps its own


def test_forged_and_replayed_votes_are_refused(tmp_path) -> None:
    clock = Clock()
    nodes = network(tmp_path, clock)
    # An outsider's vote: a sealer leaves it out and drops it...
    outsider_vote = vote(OUTSIDER, 0, addr(NEWCOMER), True)
    submit(nodes, outsider_vote)
    sealer, block = next_block(nodes, clock)
    assert block.transactions == () and len(nodes[sealer].mempool) == 0
    broadcast(nodes, sealer, block)
    # ...and a block that carries it anyway is invalid.
    sealer_key = {addr(k): k for k in KEYS}
    parent = nodes[0].head
    slot = nodes[0].rules.next_turn(parent.block_number + 1, parent.timestamp, addr(KEYS[0]), clock.now)
    clock.now = slot
    pretend = Snapshot((*nodes[0].authorities().authorities, addr(OUTSIDER)))  # the forger's own idea of the set
    with contextlib.suppress(AlreadyKnown):  # the sealer dropped it, the others still hold it
        nodes[0].add_transaction(outsider_vote)
    bad = build_block(nodes[0]._chain, nodes[0].mempool, parent, slot, addr(KEYS[0]), pretend, 256)
    bad = bad.copy(header=sign_header(bad.header, sealer_key[addr(KEYS[0])]))
    assert len(bad.transactions) == 1
    with pytest.raises(BadVote, match="not an authority"):
        nodes[1].import_block(rlp.encode(bad))

    # An authority's genuine vote, once mined, cannot be counted again.
    genuine = vote(KEYS[1], 0, addr(NEWCOMER), True)
    nodes[0].mempool.remove(bad.transactions[0].hash)
    submit(nodes[:3], genuine)
    sealer, first = next_block(nodes, clock)
    assert len(first.transactions) == 1
    broadcast(nodes, sealer, first)
    with pytest.raises(NonceTooLow):
        nodes[2].add_transaction(genuine)
    # A sealer that puts the same vote into a later block: the block does not re-execute.
    head = nodes[0].head
    owner = nodes[0].rules.allowed_signer(head.block_number + 1, head.timestamp, head.timestamp + 1, nodes[0].authorities().authorities)
    replay_header = first.header.copy(
        parent_hash=head.hash, block_number=head.block_number + 1, timestamp=head.timestamp + 1, coinbase=owner,
    )
    clock.now = head.timestamp + 1
    replay = first.copy(header=sign_header(replay_header, sealer_key[owner]))
    receiver = next(i for i in range(3) if addr(KEYS[i]) != owner)
    with pytest.raises(InvalidExecution):
        nodes[receiver].import_block(rlp.encode(replay))
    assert all(n.authorities().tally(addr(NEWCOMER), True) == 1 for n in nodes)
    # The same vote signed for another chain is refused at the door.
    with pytest.raises(WrongChainId):
        nodes[0].add_transaction(vote(KEYS[2], 0, addr(NEWCOMER), True, chain_id=CHAIN_ID + 1))


# -- properties ---------------------------------------------------------------------------

PEOPLE = [bytes([i + 1]) * 20 for i in range(7)]


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=2**256 - 1))
def test_any_calldata_decodes_to_a_vote_or_bad_vote(data: bytes, value: int) -> None:
    try:
        decoded = decode_vote(A, data, value)
    except BadVote:
        return
    assert encode_vote(decoded.candidate, decoded.add) == data and value == 0


@given(
    st.integers(min_value=1, max_value=5),
    st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans()), max_size=40),
)
def test_a_minority_never_changes_the_set(size: int, votes: list[tuple[int, int, bool]]) -> None:
    start = Snapshot(tuple(PEOPLE[:size]))
    # Half of the authorities at most, and anyone outside the set, vote as they like.
    voters = PEOPLE[: size // 2] + PEOPLE[size:]  # half (rounded down) is not more than half
    s = start
    for voter, candidate, add in votes:
        try:
            s = s.apply(Vote(voters[voter % len(voters)], PEOPLE[candidate], add))
        except BadVote:
            continue
    assert s.authorities == start.authorities


@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6), st.booleans()), max_size=60))
def test_any_vote_sequence_keeps_a_sound_set(votes: list[tuple[int, int, bool]]) -> None:
    s = Snapshot(tuple(PEOPLE[:3]))
    for voter, candidate, add in votes:
        before = s
        try:
            s = s.apply(Vote(PEOPLE[voter], PEOPLE[candidate], add))
        except BadVote:
            assert s == before
            continue
        assert s.authorities and len(set(s.authorities)) == len(s.authorities)
        if s.authorities != before.authorities:  # only the voted candidate moved
            assert set(s.authorities) ^ set(before.authorities) == {PEOPLE[candidate]}
            assert before.tally(PEOPLE[candidate], add) + 1 >= before.needed()


def test_a_restart_reads_the_set_from_checkpoints_or_recomputes_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(authority, "CHECKPOINT_EVERY", 4)
    sealer = KEYS[0]
    g = Genesis.create(chain_id=CHAIN_ID, authorities=[addr(sealer)], timestamp=T0, alloc={addr(sealer): {"balance": 10**21}})
    clock = Clock()
    chain = EmbeddedChain(g, tmp_path / "alone.db", sealer, clock=clock)
    for n in range(1, 11):
        if n == 3:  # one of one decides at once
            chain.add_transaction(vote(sealer, 0, addr(NEWCOMER), True))
        clock.now = chain.next_seal_time(clock.now)
        chain.seal_block(int(clock.now))
    expected = (addr(sealer), addr(NEWCOMER))
    assert chain.authorities().authorities == expected and chain.authorities(2).authorities == (addr(sealer),)
    keys_of = [authority.SNAPSHOT_KEY_PREFIX + chain.canonical_hash(n) for n in (4, 8)]
    chain.close()

    reopened = EmbeddedChain(g, tmp_path / "alone.db", sealer, clock=clock)
    assert all(key in reopened._db for key in keys_of)  # checkpoints kept under their block hash
    assert reopened.head_authorities == expected and reopened.authorities(3).authorities == expected
    for key in keys_of:
        del reopened._db[key]
    reopened.close()
    # Without them the set is recomputed from the blocks alone, the same.
    again = EmbeddedChain(g, tmp_path / "alone.db", sealer, clock=clock)
    assert again.head_authorities == expected and again.authorities(2).authorities == (addr(sealer),)
    assert all(key in again._db for key in keys_of)  # and the checkpoints are back
