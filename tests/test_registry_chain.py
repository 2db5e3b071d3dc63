"""The daemon's TaskChain (tasks/registry_chain.py) on the embedded chain with the real
contracts: reads as of a past block, logs of one task only with their block hashes, a
block that does not exist yet, and a revert as TxReverted."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from eth_utils import keccak
from test_client import ALICE, BOB, FAST, SEALER, Sealer, genesis

from flockd import vrf
from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.backends import InProcessBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.registry import Registry, TaskParams, Token
from flockd.chain.node.embedded import EmbeddedChain
from flockd.sortition import round_seed
from flockd.tasks.abc import TxReverted
from flockd.tasks.registry_chain import RegistryChain

STAKE = 10**18
PARAMS = TaskParams(
    recipe="digits-mlp", recipe_hash=keccak(b"spec"), model_init_hash=keccak(b"init"), rounds=2,
    min_participants=2, min_stake=STAKE, stake_unit=STAKE, expected_proposers=1, max_proposals=4,
    propose_blocks=16, commit_blocks=16, reveal_blocks=16, reward_pool=0,
)


@pytest.fixture
async def chain(nursery: trio.Nursery) -> AsyncIterator[EmbeddedChain]:
    embedded = EmbeddedChain(genesis(), None, SEALER)
    nursery.start_soon(Sealer(embedded).run)
    yield embedded
    embedded.close()


async def test_the_registry_behind_the_task_seam(chain: EmbeddedChain) -> None:
    backend = InProcessBackend.for_chain(chain)
    registries = {who: Registry(ContractClient(backend, who, FAST), TASK_REGISTRY_ADDRESS) for who in (ALICE, BOB)}
    alice, bob = registries[ALICE], registries[BOB]
    await Token(alice.client, STAKE_TOKEN_ADDRESS).transfer(bytes.fromhex(BOB.address[2:]), STAKE)
    tasks = [await alice.create_task(PARAMS) for _ in range(2)]
    for registry, secret in ((alice, b"a"), (bob, b"b")):
        await Token(registry.client, STAKE_TOKEN_ADDRESS).approve(TASK_REGISTRY_ADDRESS, 2 * STAKE)
        await registry.join(tasks[0], STAKE, vrf.public_key(keccak(secret)))
    before_start = await alice.client.block_number()
    await alice.start_task(tasks[0])
    seam = RegistryChain(alice)
    head = await seam.head()

    logs = await seam.task_logs(tasks[0], 0, head)
    assert {entry.args["task_id"] for entry in logs} == {tasks[0]}  # not the other task's
    opened = [entry for entry in logs if entry.name == "RoundOpened"]
    assert len(opened) == 1
    open_block = opened[0].block_number
    assert opened[0].block_hash == await seam.block_hash(open_block)
    assert await seam.block_hash(head + 100) is None

    now = await seam.round_start(tasks[0], None, head)
    assert (now.current_round, now.open_block) == (0, open_block)
    then = await seam.round_start(tasks[0], None, before_start)
    assert then.open_block is None  # as of that block no round was open

    assert await seam.stakes(tasks[0], bytes.fromhex(ALICE.address[2:])) == (STAKE, 2 * STAKE)
    seed = round_seed(opened[0].block_hash, tasks[0], 0)
    assert await seam.transact("decline", tasks[0], 0, vrf.prove(keccak(b"a"), seed)) > 0
    with pytest.raises(TxReverted):
        await seam.transact("finalise", tasks[0], 0)  # the round's windows are still open

