"""Typed calls for the TaskRegistry and the StakeToken, and deploying them on an external chain.

Thin on purpose: each method is one ABI call through a ContractClient (see client.py for
the transaction lifecycle); results come back as small frozen dataclasses with addresses
as 20-byte `bytes`. Semantics, phases and revert reasons: protocol/spec/contracts.md.

Event arguments are as eth_abi decodes them (addresses as "0x…" strings, bytes32 as bytes).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass
from typing import Any

from eth_abi.exceptions import DecodingError
from eth_utils import to_canonical_address

from flockd.chain.client.artifacts import (
    STAKE_TOKEN,
    TASK_REGISTRY,
    Artifact,
    ArtifactError,
    artifact_path,
    event_topic,
    load,
)
from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import BlockTag, ContractClient, Log, TxReceipt

VERIFIER = "EcvrfVerifier"
VOTE_ACCEPT, VOTE_REJECT = 1, -1
PHASE_IDLE, PHASE_OPENING, PHASE_PROPOSE, PHASE_COMMIT, PHASE_REVEAL, PHASE_CLOSED = range(6)
STATUS_NONE, STATUS_JOINING, STATUS_RUNNING, STATUS_FINISHED = range(4)


class MalformedEvent(ChainError):
    """A log at the contract's address carries a known event topic but does not decode."""


@dataclass(frozen=True)
class TaskParams:
    recipe: str
    recipe_hash: bytes
    model_init_hash: bytes
    rounds: int
    min_participants: int
    min_stake: int
    stake_unit: int
    expected_proposers: int
    max_proposals: int
    propose_blocks: int
    commit_blocks: int
    reveal_blocks: int
    reward_pool: int
    vote_mode: int = 0  # 0 per proposal, 1 whole round (FLock)
    slash_bps: int = 1000
    proposer_share_bps: int = 6000


@dataclass(frozen=True)
class TaskState:
    creator: bytes
    status: int
    current_round: int
    total_stake: int
    pool: int


@dataclass(frozen=True)
class Participant:
    active: bool
    vrf_pk: bytes
    stake: int
    total_shares: int


@dataclass(frozen=True)
class RoundInfo:
    open_block: int
    seed: bytes
    n_proposals: int
    revealed_stake: int
    accept_stake: tuple[int, ...]  # per proposal (whole-round mode: index 0, the round)
    reject_stake: tuple[int, ...]
    finalised: bool
    accepted_mask: int
    model_hash: bytes
    proposals_digest: bytes  # flockd.round.proposals_digest of the round's delta hashes


@dataclass(frozen=True)
class Proposal:
    proposer: bytes
    delta_hash: bytes


@dataclass(frozen=True)
class Ballot:
    digest: bytes
    revealed: bool
    accept_mask: int  # bit i: +1 on proposal i (whole-round mode: bit 0, the round)
    reject_mask: int  # bit i: -1; neither bit: 0, not received


@dataclass(frozen=True)
class Deadlines:
    propose_end: int  # last block of each window
    commit_end: int
    reveal_end: int


@dataclass(frozen=True)
class Event:
    name: str
    args: dict[str, Any]
    log: Log


def _address(value: str) -> bytes:
    return to_canonical_address(value)


class Contract:
    """A deployed contract: ABI from its artifact, calls through a ContractClient."""

    def __init__(self, client: ContractClient, address: bytes, artifact: Artifact) -> None:
        self.client = client
        self.address = address
        self.artifact = artifact

    async def view(self, fn: str, *args: Any, block: BlockTag = "pending") -> Any:
        """A view's decoded output: the value itself when it has one output, else a tuple."""
        return self.decode_view(fn, await self.client.call(self.address, self.artifact.encode_call(fn, *args), block=block))

    def decode_view(self, fn: str, raw: bytes) -> Any:
        try:
            out = self.artifact.decode_output(fn, raw)
        except (DecodingError, ArtifactError) as exc:
            raise ChainError(f"{self.artifact.name}.{fn}: undecodable output: {exc}") from None
        return out[0] if len(out) == 1 else out

    async def transact(self, fn: str, *args: Any, gas: int | None = None) -> TxReceipt:
        return await self.client.transact(self.address, self.artifact.encode_call(fn, *args), gas=gas)

    def decode_events(self, logs: Iterable[Log]) -> list[Event]:
        """The logs emitted by this contract, decoded; other addresses and unknown topics skipped."""
        events = []
        for log in logs:
            if log.address != self.address:
                continue
            try:
                decoded = self.artifact.decode_log(list(log.topics), log.data)
            except (DecodingError, ArtifactError, ValueError) as exc:
                raise MalformedEvent(f"{self.artifact.name} log {log.log_index} of block {log.block_number}: {exc}") from None
            if decoded is not None:
                events.append(Event(decoded[0], decoded[1], log))
        return events

    async def events(self, from_block: int, to_block: int, names: Iterable[str] = ()) -> list[Event]:
        """Events in blocks [from_block, to_block] (chain order), only `names` when given."""
        wanted = set(names)
        topics: list[bytes | None] = []
        if len(wanted) == 1:  # let the node filter; several names are filtered here
            topics = [event_topic(self.artifact.event(next(iter(wanted))))]
        found = self.decode_events(await self.client.get_logs(self.address, from_block, to_block, topics))
        return [e for e in found if not wanted or e.name in wanted]


def _one(events: list[Event], name: str) -> Event:
    matching = [e for e in events if e.name == name]
    if len(matching) != 1:
        raise MalformedEvent(f"expected one {name} event in the receipt, found {len(matching)}")
    return matching[0]


class Token(Contract):
    def __init__(self, client: ContractClient, address: bytes) -> None:
        super().__init__(client, address, load(STAKE_TOKEN))

    async def approve(self, spender: bytes, amount: int) -> TxReceipt:
        return await self.transact("approve", spender, amount)

    async def transfer(self, to: bytes, amount: int) -> TxReceipt:
        return await self.transact("transfer", to, amount)

    async def balance_of(self, owner: bytes) -> int:
        return int(await self.view("balanceOf", owner))

    async def allowance(self, owner: bytes, spender: bytes) -> int:
        return int(await self.view("allowance", owner, spender))

    async def total_supply(self) -> int:
        return int(await self.view("totalSupply"))


class Registry(Contract):
    def __init__(self, client: ContractClient, address: bytes) -> None:
        super().__init__(client, address, load(TASK_REGISTRY))

    # -- transactions ------------------------------------------------------------------------

    async def create_task(self, params: TaskParams) -> int:
        """The new task's id (approve `reward_pool` tokens to the registry first)."""
        receipt = await self.transact("create_task", astuple(params))
        return int(_one(self.decode_events(receipt.logs), "TaskCreated").args["task_id"])

    async def join(self, task_id: int, stake: int, vrf_pk: bytes) -> TxReceipt:
        return await self.transact("join", task_id, stake, vrf_pk)

    async def delegate(self, task_id: int, participant: bytes, amount: int) -> TxReceipt:
        return await self.transact("delegate", task_id, participant, amount)

    async def withdraw(self, task_id: int, participant: bytes) -> TxReceipt:
        return await self.transact("withdraw", task_id, participant)

    async def start_task(self, task_id: int) -> TxReceipt:
        return await self.transact("start_task", task_id)

    async def cancel_task(self, task_id: int) -> TxReceipt:
        return await self.transact("cancel_task", task_id)

    async def propose(self, task_id: int, r: int, delta_hash: bytes, vrf_proof: bytes) -> int:
        """The proposal's index in round r."""
        receipt = await self.transact("propose", task_id, r, delta_hash, vrf_proof)
        return int(_one(self.decode_events(receipt.logs), "Proposed").args["index"])

    async def commit_vote(self, task_id: int, r: int, digest: bytes, proposals_digest: bytes) -> TxReceipt:
        """`proposals_digest`: flockd.round.proposals_digest of the delta hashes judged."""
        return await self.transact("commit_vote", task_id, r, digest, proposals_digest)

    async def reveal_vote(self, task_id: int, r: int, votes: Sequence[int], salt: bytes) -> TxReceipt:
        return await self.transact("reveal_vote", task_id, r, list(votes), salt)

    async def finalise(self, task_id: int, r: int) -> TxReceipt:
        return await self.transact("finalise", task_id, r)

    async def record_model(self, task_id: int, r: int, model_hash: bytes) -> TxReceipt:
        return await self.transact("record_model", task_id, r, model_hash)

    # -- views -------------------------------------------------------------------------------

    async def token(self) -> bytes:
        return _address(await self.view("token"))

    async def vrf_verifier(self) -> bytes:
        return _address(await self.view("vrf_verifier"))

    async def task_count(self) -> int:
        return int(await self.view("task_count"))

    async def get_params(self, task_id: int) -> TaskParams:
        return TaskParams(*await self.view("get_params", task_id))

    async def get_state(self, task_id: int) -> TaskState:
        creator, *rest = await self.view("get_state", task_id)
        return TaskState(_address(creator), *rest)

    async def get_participants(self, task_id: int) -> list[bytes]:
        return [_address(a) for a in await self.view("get_participants", task_id)]

    async def get_participant(self, task_id: int, who: bytes) -> Participant:
        return Participant(*await self.view("get_participant", task_id, who))

    async def get_round(self, task_id: int, r: int) -> RoundInfo:
        fields = list(await self.view("get_round", task_id, r))
        fields[4], fields[5] = tuple(fields[4]), tuple(fields[5])
        return RoundInfo(*fields)

    async def get_proposals(self, task_id: int, r: int) -> list[Proposal]:
        return [Proposal(_address(p), h) for p, h in await self.view("get_proposals", task_id, r)]

    async def proposal_slot(self, task_id: int, r: int, who: bytes) -> int:
        return int(await self.view("proposal_slot", task_id, r, who))

    async def get_ballot(self, task_id: int, r: int, voter: bytes) -> Ballot:
        return Ballot(*await self.view("get_ballot", task_id, r, voter))

    async def model_support(self, task_id: int, r: int, model_hash: bytes) -> int:
        return int(await self.view("model_support", task_id, r, model_hash))

    async def round_seed(self, task_id: int, r: int) -> bytes:
        return bytes(await self.view("round_seed", task_id, r))

    async def phase(self, task_id: int) -> int:
        """The phase a transaction sent now lands in (the next block's)."""
        return int(await self.view("phase", task_id))

    async def deadlines(self, task_id: int, r: int) -> Deadlines:
        return Deadlines(*await self.view("deadlines", task_id, r))

    async def sortition_threshold(self, task_id: int, who: bytes) -> int:
        return int(await self.view("sortition_threshold", task_id, who))

    async def shares_of(self, task_id: int, participant: bytes, holder: bytes) -> int:
        return int(await self.view("shares_of", task_id, participant, holder))

    async def value_of(self, task_id: int, participant: bytes, holder: bytes) -> int:
        return int(await self.view("value_of", task_id, participant, holder))


# -- deployment on an external chain -------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    token: bytes
    registry: bytes
    verifier: bytes
    block: int  # the registry's block: scan events from here


def verifier_available() -> bool:
    """Whether the EcvrfVerifier contract (for chains without the precompile) has been built."""
    return artifact_path(VERIFIER).exists()


async def deploy_contract(client: ContractClient, artifact: Artifact, *args: Any) -> TxReceipt:
    receipt = await client.transact(None, artifact.deploy_data(*args))
    if receipt.contract_address is None:
        raise ChainError(f"deploying {artifact.name}: the receipt names no contract address")
    return receipt


async def deploy(
    client: ContractClient,
    token_holders: Mapping[bytes, int],
    verifier: bytes | None = None,
    *,
    token_name: str = "flockd stake",
    token_symbol: str = "FLOCK",
) -> Deployment:
    """Deploy StakeToken (the whole supply minted to `token_holders`), the ECVRF verifier
    contract unless `verifier` names one, and the TaskRegistry, signed by `client`'s key."""
    holders = list(token_holders)
    token = await deploy_contract(
        client, load(STAKE_TOKEN), token_name, token_symbol, holders, [token_holders[h] for h in holders]
    )
    if verifier is None:
        if not verifier_available():
            raise ArtifactError(f"{artifact_path(VERIFIER)} missing: build EcvrfVerifier or pass a verifier address")
        verifier = _created(await deploy_contract(client, load(VERIFIER)))
    registry = await deploy_contract(client, load(TASK_REGISTRY), _created(token), verifier)
    return Deployment(_created(token), _created(registry), verifier, registry.block_number)


def _created(receipt: TxReceipt) -> bytes:
    assert receipt.contract_address is not None  # deploy_contract checked
    return receipt.contract_address
