"""Typed calls for the Arena contract (training competitions), and deploying it.

Like `registry.py`: each method is one ABI call through a ContractClient, results are
frozen dataclasses with addresses as 20-byte `bytes`. The digests a member commits are
built here so that the daemon and the tests hash exactly what the contract checks.
Semantics, phases and revert reasons: protocol/spec/contracts.md ("Arena").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass, fields

from eth_abi import encode as abi_encode
from eth_utils import keccak

from flockd.chain.client.artifacts import ARENA, load
from flockd.chain.client.contract import ContractClient, TxReceipt
from flockd.chain.client.registry import _address, _one, deploy_contract
from flockd.chain.client.view_checks import CheckedContract, MalformedView, at_most, within

ROLE_TRAINER, ROLE_VALIDATOR = 1, 2
(
    ARENA_PHASE_NONE,
    ARENA_PHASE_JOIN,
    ARENA_PHASE_SUBMIT,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_FINALISED,
) = range(8)
MAX_SCORE = 2**128
MAX_TRAINERS, MAX_VALIDATORS, MAX_ELECTED = 24, 32, 16
MAX_PHASE_BLOCKS, BPS, MAX_SLASH_BPS = 1024, 10_000, 5000


@dataclass(frozen=True)
class CompetitionParams:
    recipe_hash: bytes
    base_model_hash: bytes
    eval_commitment: bytes  # eval_commitment(eval_set_hash, salt)
    join_blocks: int
    submit_blocks: int
    reveal_blocks: int
    score_commit_blocks: int
    score_reveal_blocks: int
    reward_pool: int
    creator_bond: int
    trainer_stake: int
    validator_stake: int
    validator_cap: int
    expected_validators: int
    trainer_share_bps: int = 7000
    rank_decay_bps: int = 5000
    tolerance_bps: int = 500
    slash_bps: int = 1000


@dataclass(frozen=True)
class Competition:
    creator: bytes
    start_block: int
    seed: bytes
    eval_set_hash: bytes
    validator_weight: int
    finalised: bool


@dataclass(frozen=True)
class ArenaMember:
    role: int
    stake: int
    vrf_pk: bytes
    elected: bool
    score_digest: bytes
    revealed: bool


@dataclass(frozen=True)
class Submission:
    trainer: bytes
    digest: bytes
    model_hash: bytes
    revealed: bool
    duplicate: bool
    median: int  # set when ranked
    rank: int  # 1 = best, 0 = unranked (its reward: the Ranked event)


@dataclass(frozen=True)
class PhaseEnds:
    """The first block after each phase."""

    join: int
    submit: int
    reveal: int
    score_commit: int
    score_reveal: int


def submission_digest(competition_id: int, trainer: bytes, model_hash: bytes, salt: bytes) -> bytes:
    """keccak(competition ‖ trainer ‖ model_hash ‖ salt): a copied commit is worth nothing."""
    return keccak(abi_encode(["uint256", "address", "bytes32", "bytes32"], [competition_id, trainer, model_hash, salt]))


def scores_digest(competition_id: int, validator: bytes, scores: Sequence[int], salt: bytes) -> bytes:
    return keccak(abi_encode(["uint256", "address", "uint256[]", "bytes32"], [competition_id, validator, list(scores), salt]))


def eval_commitment(eval_set_hash: bytes, salt: bytes) -> bytes:
    """The creator's commitment; the salt keeps a guessable set (a public split) hidden."""
    return keccak(abi_encode(["bytes32", "bytes32"], [eval_set_hash, salt]))


_NO_PARAMS = CompetitionParams(bytes(32), bytes(32), bytes(32), *[0] * (len(fields(CompetitionParams)) - 3))


def _checked_params(p: CompetitionParams) -> CompetitionParams:
    """`create` refused anything else; a competition that does not exist reads as all zeros."""
    if p == _NO_PARAMS:
        return p
    for name in ("join_blocks", "submit_blocks", "reveal_blocks", "score_commit_blocks", "score_reveal_blocks"):
        within(f"params.{name}", getattr(p, name), 1, MAX_PHASE_BLOCKS)
    within("params.trainer_share_bps", p.trainer_share_bps, 0, BPS)
    for name in ("rank_decay_bps", "tolerance_bps"):  # divisors in the settlement: never 0
        within(f"params.{name}", getattr(p, name), 1, BPS)
    for name in ("reward_pool", "creator_bond", "trainer_stake", "validator_stake"):
        within(f"params.{name}", getattr(p, name), 1, 2**256 - 1)
    within("params.slash_bps", p.slash_bps, 0, MAX_SLASH_BPS)
    within("params.expected_validators", p.expected_validators, 1, MAX_ELECTED)
    within("params.validator_cap", p.validator_cap, p.validator_stake, 2**256 - 1)
    return p


def _checked_submission(s: Submission) -> Submission:
    within("submission.median", s.median, 0, MAX_SCORE)
    within("submission.rank", s.rank, 0, MAX_TRAINERS)
    return s


class Arena(CheckedContract):
    def __init__(self, client: ContractClient, address: bytes) -> None:
        super().__init__(client, address, load(ARENA))

    # -- transactions ------------------------------------------------------------------------

    async def create(self, params: CompetitionParams) -> int:
        """The new competition's id (approve reward_pool + creator_bond to the arena first)."""
        receipt = await self.transact("create", astuple(params))
        return int(_one(self.decode_events(receipt.logs), "CompetitionCreated").args["competition_id"])

    async def join(self, competition_id: int, role: int, stake: int, vrf_pk: bytes = bytes(32)) -> TxReceipt:
        return await self.transact("join", competition_id, role, stake, vrf_pk)

    async def commit_submission(self, competition_id: int, digest: bytes) -> int:
        """The submission's index (commit order)."""
        receipt = await self.transact("commit_submission", competition_id, digest)
        return int(_one(self.decode_events(receipt.logs), "SubmissionCommitted").args["index"])

    async def elect(self, competition_id: int, vrf_proof: bytes) -> TxReceipt:
        return await self.transact("elect", competition_id, vrf_proof)

    async def reveal_submission(self, competition_id: int, model_hash: bytes, salt: bytes) -> TxReceipt:
        return await self.transact("reveal_submission", competition_id, model_hash, salt)

    async def commit_scores(self, competition_id: int, digest: bytes) -> TxReceipt:
        return await self.transact("commit_scores", competition_id, digest)

    async def reveal_scores(self, competition_id: int, scores: Sequence[int], salt: bytes) -> TxReceipt:
        return await self.transact("reveal_scores", competition_id, list(scores), salt)

    async def publish_eval(self, competition_id: int, eval_set_hash: bytes, salt: bytes) -> TxReceipt:
        return await self.transact("publish_eval", competition_id, eval_set_hash, salt)

    async def finalise(self, competition_id: int) -> TxReceipt:
        return await self.transact("finalise", competition_id)

    async def claim(self) -> TxReceipt:
        return await self.transact("claim")

    # -- views -------------------------------------------------------------------------------

    async def token(self) -> bytes:
        return _address(await self.view("token"))

    async def competition_count(self) -> int:
        return int(await self.view("competition_count"))

    async def claimable(self, who: bytes) -> int:
        return int(await self.view("claimable", who))

    async def burned(self) -> int:
        return int(await self.view("burned"))

    async def get_params(self, competition_id: int) -> CompetitionParams:
        return _checked_params(CompetitionParams(*await self.view("get_params", competition_id)))

    async def get_competition(self, competition_id: int) -> Competition:
        creator, *rest = await self.view("get_competition", competition_id)
        return Competition(_address(creator), *rest)

    async def get_member(self, competition_id: int, who: bytes) -> ArenaMember:
        member = ArenaMember(*await self.view("get_member", competition_id, who))
        within("member.role", member.role, 0, ROLE_VALIDATOR)
        return member

    async def get_trainers(self, competition_id: int) -> list[bytes]:
        return [_address(a) for a in at_most("trainers", await self.view("get_trainers", competition_id), MAX_TRAINERS)]

    async def get_validators(self, competition_id: int) -> list[bytes]:
        return [_address(a) for a in at_most("validators", await self.view("get_validators", competition_id), MAX_VALIDATORS)]

    async def get_elected(self, competition_id: int) -> list[bytes]:
        return [_address(a) for a in at_most("elected", await self.view("get_elected", competition_id), MAX_ELECTED)]

    async def get_submissions(self, competition_id: int) -> list[Submission]:
        rows = at_most("submissions", await self.view("get_submissions", competition_id), MAX_TRAINERS)
        return [_checked_submission(Submission(_address(trainer), *rest)) for trainer, *rest in rows]

    async def get_scores(self, competition_id: int, validator: bytes) -> list[int]:
        scores = at_most("scores", await self.view("get_scores", competition_id, validator), MAX_TRAINERS)
        return [within("score", int(s), 0, MAX_SCORE) for s in scores]

    async def phase(self, competition_id: int) -> int:
        """The phase a transaction sent now lands in (the next block's)."""
        return within("phase", int(await self.view("phase", competition_id)), ARENA_PHASE_NONE, ARENA_PHASE_FINALISED)

    async def deadlines(self, competition_id: int) -> PhaseEnds:
        ends = PhaseEnds(*await self.view("deadlines", competition_id))
        if list(astuple(ends)) != sorted(astuple(ends)):
            raise MalformedView(f"deadlines out of order: {ends}")
        return ends

    async def seed(self, competition_id: int) -> bytes:
        return bytes(await self.view("seed", competition_id))

    async def election_threshold(self, competition_id: int, who: bytes) -> int:
        return within("election_threshold", int(await self.view("election_threshold", competition_id, who)), 0, 2**64)


async def deploy_arena(client: ContractClient, token: bytes, verifier: bytes) -> bytes:
    """Deploy the Arena for `token` with the ECVRF `verifier` (the precompile on the
    embedded chain); its address."""
    receipt = await deploy_contract(client, load(ARENA), token, verifier)
    assert receipt.contract_address is not None  # deploy_contract checked
    return receipt.contract_address
