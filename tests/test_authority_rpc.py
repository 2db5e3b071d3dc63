"""authority_list, authority_votes and authority_propose on a real embedded chain: a vote is
signed by the node's key and mined; what the chain would refuse is refused before signing."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import pytest
import trio
from eth_account import Account
from eth_utils import keccak
from test_client import FAST, Sealer

from flockd.chain.client.backends import InProcessBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.rpc.authority import AUTHORITY_ERROR, AuthorityNamespace
from flockd.rpc.dispatch import Dispatcher
from flockd.rpc.errors import INVALID_PARAMS, RPCError

SEALER, ALICE, CAROL = (Account.from_key(keccak(name)) for name in (b"vote sealer", b"vote alice", b"vote carol"))


def genesis() -> Genesis:
    return Genesis.create(
        chain_id=4545,
        authorities=[bytes.fromhex(a.address[2:]) for a in (SEALER, ALICE)],
        timestamp=1_700_000_000,
        alloc={bytes.fromhex(a.address[2:]): {"balance": 10**21} for a in (SEALER, ALICE, CAROL)},
    )


@pytest.fixture
async def nodes(nursery: trio.Nursery) -> AsyncIterator[dict[str, AuthorityNamespace]]:
    from eth_keys import keys

    chain = EmbeddedChain(genesis(), None, keys.PrivateKey(SEALER.key))
    nursery.start_soon(Sealer(chain).run)  # seals whenever its turn comes, so the votes get mined
    backend = InProcessBackend.for_chain(chain)
    yield {who.address: AuthorityNamespace(chain, ContractClient(backend, who, FAST)) for who in (SEALER, ALICE, CAROL)}
    chain.close()


async def test_a_majority_of_votes_adds_an_authority(nodes: dict[str, AuthorityNamespace]) -> None:
    alice, sealer = nodes[ALICE.address], nodes[SEALER.address]
    listed = await alice.authority_list()
    assert listed["authorities"] == [SEALER.address, ALICE.address]
    assert (listed["votes_needed"], listed["this_node_seals"]) == (2, True)

    first = await alice.authority_propose(CAROL.address.lower(), "add")
    assert (first["decided"], first["votes"], first["votes_needed"]) == (False, 1, 2)
    [pending] = await sealer.authority_votes()
    assert (pending["candidate"], pending["action"], pending["voters"]) == (CAROL.address, "add", [ALICE.address])
    assert (await alice.authority_list())["authorities"] == [SEALER.address, ALICE.address]  # a minority

    second = await sealer.authority_propose(CAROL.address, "add")
    assert second["decided"] is True and second["effective_from_block"] == second["block"] + 1
    listed = await nodes[CAROL.address].authority_list()
    assert listed["authorities"] == [SEALER.address, ALICE.address, CAROL.address]
    assert listed["this_node_seals"] is True and await sealer.authority_votes() == []
    recent = await alice.authority_sealers(4)
    head = recent[0]["block"]
    assert head >= second["block"] and [r["block"] for r in recent] == list(range(head, max(0, head - 4), -1))
    assert {r["sealer"] for r in recent} == {SEALER.address}  # only the sealer's node runs here


async def test_votes_the_chain_would_refuse_are_refused_before_signing(nodes: dict[str, AuthorityNamespace]) -> None:
    carol, alice = nodes[CAROL.address], nodes[ALICE.address]
    cases = [
        (carol, ALICE.address, "remove", "not an authority"),  # carol may not vote
        (alice, SEALER.address, "add", "already an authority"),
        (alice, CAROL.address, "remove", "not an authority"),
    ]
    for node, address, action, reason in cases:
        with pytest.raises(RPCError) as refused:
            await node.authority_propose(address, action)  # type: ignore[arg-type]
        assert refused.value.code == AUTHORITY_ERROR and reason in refused.value.message
    assert await alice.authority_votes() == []
    assert await carol.authority_list() == {**await alice.authority_list(), "this_node": CAROL.address, "this_node_seals": False}

    dispatcher = Dispatcher([alice])
    assert {"authority_list", "authority_votes", "authority_propose"} <= {m.name for m in dispatcher.methods()}
    for method, params in [
        ("authority_propose", {"address": "0x12", "action": "add"}),
        ("authority_propose", {"address": CAROL.address, "action": "promote"}),
        ("authority_sealers", {"blocks": 0}),
        ("authority_sealers", {"blocks": 257}),
    ]:
        line = json.dumps({"jsonrpc": "2.0", "id": 1, "method": method, "params": params}).encode()
        reply = json.loads(await dispatcher.handle_line(line) or b"")
        assert reply["error"]["code"] == INVALID_PARAMS
