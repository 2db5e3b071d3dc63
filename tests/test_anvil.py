"""One contract flow, two chains: the same ContractClient code drives the task registry on
the embedded chain (InProcessBackend) and on a real anvil node (HttpBackend).

anvil comes from npm `@foundry-rs/anvil` (scripts/_env.sh installs it into .tools/ and
exports FLOCKD_ANVIL); the anvil cases skip, saying so, when no binary is found.
Proposals on anvil need the ECVRF verifier contract (contracts/build/EcvrfVerifier.json);
without it that case is an expected failure whose reason says so.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from anvil_node import AnvilNode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak, to_checksum_address

from flockd import sortition, vrf
from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.backends import ChainBackend, HttpBackend, InProcessBackend
from flockd.chain.client.contract import ContractClient, ContractRevert, TxPolicy
from flockd.chain.client.registry import (
    PHASE_CLOSED,
    PHASE_COMMIT,
    PHASE_PROPOSE,
    PHASE_REVEAL,
    STATUS_FINISHED,
    VOTE_ACCEPT,
    VOTE_REJECT,
    Deployment,
    Registry,
    TaskParams,
    Token,
    deploy,
    verifier_available,
)
from flockd.chain.node.deploy import genesis_contracts
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS
from flockd.round import vote_digest

REPO = Path(__file__).resolve().parents[1]

E18 = 10**18
N_ACCOUNTS = 4
STAKE = 100 * E18
POLICY = TxPolicy(poll_interval=0.02, resubmit_after=20.0, timeout=60.0)
SEALER = PrivateKey(keccak(b"test sealer"))


@dataclass
class Member:
    account: LocalAccount
    vrf_sk: bytes

    @property
    def address(self) -> bytes:
        return bytes.fromhex(self.account.address[2:])

    @property
    def vrf_pk(self) -> bytes:
        return vrf.public_key(self.vrf_sk)


MEMBERS = [
    Member(Account.from_key(keccak(b"client test account %d" % i)), keccak(b"client test vrf %d" % i))
    for i in range(N_ACCOUNTS)
]
HOLDINGS = {m.address: 10**6 * E18 for m in MEMBERS}


# -- anvil ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def anvil() -> Iterator[AnvilNode]:
    node = AnvilNode()
    yield node
    node.stop()


# -- two environments, one shape -------------------------------------------------------------


@dataclass
class Env:
    name: str
    backend: ChainBackend
    deployment: Deployment
    mine: Callable[[int], Awaitable[None]]  # seal/mine n blocks
    clients: dict[int, ContractClient] = field(default_factory=dict)

    def client(self, who: int) -> ContractClient:
        if who not in self.clients:
            self.clients[who] = ContractClient(self.backend, MEMBERS[who].account, POLICY)
        return self.clients[who]

    def registry(self, who: int) -> Registry:
        return Registry(self.client(who), self.deployment.registry)

    def token(self, who: int) -> Token:
        return Token(self.client(who), self.deployment.token)

    @property
    def proposals_work(self) -> bool:
        return self.deployment.verifier != VRF_PRECOMPILE_ADDRESS or self.name == "embedded"


@functools.cache
def genesis(arena: bool = False) -> Genesis:
    alloc: dict[bytes, dict[str, object]] = {m.address: {"balance": 10**22} for m in MEMBERS}
    alloc.update({a: dict(acct) for a, acct in genesis_contracts(HOLDINGS, arena=arena).items()})
    return Genesis.create(chain_id=4343, authorities=[SEALER.public_key.to_canonical_address()],
                          timestamp=1_700_000_000, alloc=alloc)


def seal(chain: EmbeddedChain, n: int = 1) -> None:
    for _ in range(n):
        slot = chain.next_seal_time(0)
        assert slot is not None
        chain.seal_block(slot)


@asynccontextmanager
async def embedded_env(chain_genesis: Genesis | None = None) -> AsyncIterator[Env]:
    """The daemon's own chain: contracts at genesis, a sealer that seals whenever txs wait."""
    chain = EmbeddedChain(chain_genesis or genesis(), None, SEALER)
    sealing = trio.Lock()

    async def mine(n: int) -> None:
        async with sealing:
            await trio.to_thread.run_sync(seal, chain, n)

    async def sealer() -> None:
        while True:
            if len(chain.mempool):
                await mine(1)
            await trio.sleep(0.01)

    deployment = Deployment(STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS, VRF_PRECOMPILE_ADDRESS, 0)
    async with InProcessBackend.for_chain(chain) as backend, trio.open_nursery() as nursery:
        nursery.start_soon(sealer)
        yield Env("embedded", backend, deployment, mine)
        nursery.cancel_scope.cancel()
    chain.close()


@asynccontextmanager
async def anvil_env(node: AnvilNode) -> AsyncIterator[Env]:
    """anvil (automining: one block per tx); the contracts deployed through the client."""
    async with HttpBackend(node.url(), timeout=30) as backend:
        for m in MEMBERS:
            await backend.request("anvil_setBalance", [m.account.address, hex(10**22)])

        async def mine(n: int) -> None:
            await backend.request("anvil_mine", [hex(n)])

        deployer = ContractClient(backend, MEMBERS[0].account, POLICY)
        verifier = None if verifier_available() else VRF_PRECOMPILE_ADDRESS  # no code on anvil
        deployment = await deploy(deployer, HOLDINGS, verifier)
        env = Env("anvil", backend, deployment, mine, {0: deployer})
        yield env


@asynccontextmanager
async def open_env(backend: str, node: AnvilNode) -> AsyncIterator[Env]:
    opener = embedded_env() if backend == "embedded" else anvil_env(node)
    async with opener as env:
        yield env


# -- the flow ------------------------------------------------------------------------------------


def task_params(**over: int) -> TaskParams:
    base = dict(
        recipe="mnist-mlp", recipe_hash=keccak(b"recipe"), model_init_hash=keccak(b"model 0"),
        rounds=2, min_participants=N_ACCOUNTS, min_stake=STAKE, stake_unit=STAKE,
        expected_proposers=16,  # >= total stake units: every participant is elected
        max_proposals=16, propose_blocks=8, commit_blocks=8, reveal_blocks=8,
        reward_pool=1000 * E18, vote_mode=0, slash_bps=1000, proposer_share_bps=6000,
    )
    base.update(over)
    return TaskParams(**base)  # type: ignore[arg-type]


async def started_task(env: Env, **over: int) -> int:
    """Every member approves and joins (concurrently), member 0 creates and starts."""
    async with trio.open_nursery() as nursery:
        for who in range(N_ACCOUNTS):
            nursery.start_soon(env.token(who).approve, env.deployment.registry, 2**256 - 1)
    task = await env.registry(0).create_task(task_params(**over))
    async with trio.open_nursery() as nursery:
        for who in range(N_ACCOUNTS):
            nursery.start_soon(env.registry(who).join, task, STAKE, MEMBERS[who].vrf_pk)
    assert sorted(await env.registry(0).get_participants(task)) == sorted(m.address for m in MEMBERS)
    await env.registry(0).start_task(task)
    return task


async def advance_to(env: Env, task: int, r: int, phase: int) -> None:
    """Mine until a transaction sent now lands in `phase` of round r."""
    registry = env.registry(0)
    deadlines = await registry.deadlines(task, r)
    first = {
        PHASE_PROPOSE: (await registry.get_round(task, r)).open_block + 1,
        PHASE_COMMIT: deadlines.propose_end + 1,
        PHASE_REVEAL: deadlines.commit_end + 1,
        PHASE_CLOSED: deadlines.reveal_end + 1,
    }[phase]
    missing = first - (await env.client(0).block_number() + 1)
    if missing > 0:
        await env.mine(missing)
    assert await registry.phase(task) == phase


async def vote(env: Env, task: int, r: int, ballots: dict[int, list[int]]) -> None:
    salts = {who: keccak(b"salt %d %d" % (who, r)) for who in ballots}
    await advance_to(env, task, r, PHASE_COMMIT)
    judged = (await env.registry(0).get_round(task, r)).proposals_digest
    async with trio.open_nursery() as nursery:
        for who, votes in ballots.items():
            digest = vote_digest(tuple(votes), salts[who], MEMBERS[who].address)
            nursery.start_soon(env.registry(who).commit_vote, task, r, digest, judged)
    await advance_to(env, task, r, PHASE_REVEAL)
    async with trio.open_nursery() as nursery:
        for who, votes in ballots.items():
            nursery.start_soon(env.registry(who).reveal_vote, task, r, votes, salts[who])
    # a second reveal: refused at gas estimation, nothing sent (once every committed vote
    # is revealed the window has closed early, so the reason may be the phase)
    voter = next(iter(ballots))
    with pytest.raises(ContractRevert, match="already revealed|wrong phase") as info:
        await env.registry(voter).reveal_vote(task, r, ballots[voter], salts[voter])
    assert info.value.receipt is None
    await advance_to(env, task, r, PHASE_CLOSED)


BACKENDS = ["embedded", "anvil"]


@pytest.mark.parametrize("backend", BACKENDS)
async def test_round_with_proposals(backend: str, anvil: AnvilNode) -> None:
    async with open_env(backend, anvil) as env:
        task = await started_task(env)
        registry = env.registry(0)
        first_block = env.deployment.block
        r = 0
        # The seed every node derives from B_r's hash is the one the contract uses.
        seed = await registry.round_seed(task, r)
        open_block = (await registry.get_round(task, r)).open_block
        assert seed == sortition.round_seed(await env.client(0).block_hash(open_block), task, r)

        await advance_to(env, task, r, PHASE_PROPOSE)
        deltas = {1: keccak(b"delta one"), 2: keccak(b"delta two")}
        proofs = {who: vrf.prove(MEMBERS[who].vrf_sk, seed) for who in deltas}
        if not env.proposals_work:
            with pytest.raises(ContractRevert, match="vrf proof rejected"):
                await env.registry(1).propose(task, r, deltas[1], proofs[1])
            pytest.xfail("contracts/build/EcvrfVerifier.json missing: no ECVRF verifier to deploy on anvil")
        for index, who in enumerate(deltas):
            assert await env.registry(who).propose(task, r, deltas[who], proofs[who]) == index
        proposals = await registry.get_proposals(task, r)
        assert [(p.proposer, p.delta_hash) for p in proposals] == [(MEMBERS[w].address, deltas[w]) for w in deltas]

        # Voters 0 and 3 accept proposal 0 and reject proposal 1.
        await vote(env, task, r, {0: [VOTE_ACCEPT, VOTE_REJECT], 3: [VOTE_ACCEPT, VOTE_REJECT]})
        await env.registry(3).finalise(task, r)
        info = await registry.get_round(task, r)
        assert info.finalised and info.accepted_mask == 0b01 and info.n_proposals == 2
        assert (await registry.get_state(task)).current_round == 1

        # Record model_1: attestations until a stake majority backs it.
        model = keccak(b"model 1")
        for who in (0, 1, 3):
            if (await registry.get_round(task, r)).model_hash == model:
                break
            await env.registry(who).record_model(task, r, model)
        assert (await registry.get_round(task, r)).model_hash == model
        # A late attestation, sent with explicit gas so it is mined and fails on chain: the
        # reason is recovered from the failed receipt.
        with pytest.raises(ContractRevert, match="model already recorded") as failed:
            await env.registry(2).transact("record_model", task, r, model, gas=200_000)
        assert failed.value.receipt is not None and failed.value.receipt.status == 0

        events = await registry.events(first_block, await env.client(0).block_number())
        names = [e.name for e in events]
        for name in ("TaskCreated", "Joined", "TaskStarted", "RoundOpened", "SeedFixed", "Proposed",
                     "VoteCommitted", "VoteRevealed", "RoundFinalised", "Rewarded", "Slashed", "ModelRecorded"):
            assert name in names, name
        (slashed,) = [e for e in events if e.name == "Slashed" and e.args["task_id"] == task]
        assert slashed.args["participant"] == to_checksum_address(MEMBERS[2].address).lower()
        assert slashed.args["reason"] == 1  # rejected proposal
        (finalised,) = await registry.events(first_block, await env.client(0).block_number(), ["RoundFinalised"])
        assert finalised.args["accepted_mask"] == 0b01


@pytest.mark.parametrize("backend", BACKENDS)
async def test_round_without_proposals_finishes_task(backend: str, anvil: AnvilNode) -> None:
    async with open_env(backend, anvil) as env:
        task = await started_task(env, rounds=1)
        registry = env.registry(0)
        before = await env.token(1).balance_of(MEMBERS[1].address)
        await vote(env, task, 0, {0: [], 1: []})
        with pytest.raises(ContractRevert, match="wrong phase"):
            await env.registry(2).commit_vote(task, 0, keccak(b"late"), bytes(32))
        await env.registry(2).finalise(task, 0)
        info = await registry.get_round(task, 0)
        # nothing accepted: model_0 stands, recorded at once; the last round ends the task
        assert info.finalised and info.accepted_mask == 0 and info.model_hash == task_params().model_init_hash
        assert (await registry.get_state(task)).status == STATUS_FINISHED
        with pytest.raises(ContractRevert, match="model already recorded"):
            await env.registry(1).record_model(task, 0, keccak(b"other"))
        await env.registry(1).withdraw(task, MEMBERS[1].address)
        assert await env.token(1).balance_of(MEMBERS[1].address) == before + STAKE


async def test_deploy_on_anvil_wires_token_and_verifier(anvil: AnvilNode) -> None:
    async with anvil_env(anvil) as env:
        registry = env.registry(0)
        assert await registry.token() == env.deployment.token
        assert await registry.vrf_verifier() == env.deployment.verifier
        assert await registry.task_count() == 0
        assert await env.token(0).balance_of(MEMBERS[3].address) == 10**6 * E18
        assert await env.token(0).total_supply() == N_ACCOUNTS * 10**6 * E18


async def test_registry_without_verifier_code_admits_no_proposal(anvil: AnvilNode) -> None:
    """A verifier address without code "succeeds" with empty output: the registry must refuse."""
    async with anvil_env(anvil) as env:
        env.deployment = await deploy(env.client(0), HOLDINGS, VRF_PRECOMPILE_ADDRESS)
        registry = env.registry(0)
        task = await started_task(env)
        await advance_to(env, task, 0, PHASE_PROPOSE)
        proof = vrf.prove(MEMBERS[1].vrf_sk, await registry.round_seed(task, 0))
        with pytest.raises(ContractRevert, match="vrf proof rejected"):
            await env.registry(1).propose(task, 0, keccak(b"delta"), proof)


async def test_anvil_resubmission_and_confirmations(anvil: AnvilNode) -> None:
    """With automining off, an unmined tx is re-sent with higher fees (anvil replaces it in
    its pool); a receipt counts only once `confirmations` blocks sit on top of it."""
    async with anvil_env(anvil) as env:
        policy = TxPolicy(confirmations=2, poll_interval=0.01, resubmit_after=0.05, max_resubmits=50, timeout=30)
        client = ContractClient(env.backend, MEMBERS[3].account, policy)
        token = Token(client, env.deployment.token)
        await env.backend.request("evm_setAutomine", [False])
        try:
            pending = await client.send(env.deployment.token, token.artifact.encode_call("transfer", MEMBERS[2].address, 5))
            result: list[tuple[int, int]] = []

            async def wait() -> None:
                receipt = await client.wait(pending)
                result.append((receipt.block_number, await client.block_number()))

            async with trio.open_nursery() as nursery:
                nursery.start_soon(wait)
                with trio.fail_after(20):
                    while len(pending.hashes) < 3:
                        await trio.sleep(0.01)
                for _ in range(10):  # one block at a time until the wait is over
                    await env.mine(1)
                    await trio.sleep(0.1)
                    if result:
                        break
        finally:
            await env.backend.request("evm_setAutomine", [True])
        ((mined, head_at_return),) = result
        assert head_at_return >= mined + 2
        receipt = await client.get_receipt(pending.hashes[-1]) or await client.get_receipt(pending.hashes[-2])
        assert receipt is not None and receipt.status == 1
        assert await token.balance_of(MEMBERS[2].address) == 10**6 * E18 + 5
