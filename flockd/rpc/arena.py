"""arena_*: AI Arena competitions on this node (docs/arena.md).

    arena_create    post a competition: recipe, evaluation set, reward pool, bond, phases
    arena_join      stake as a trainer or a validator (one role per competition)
    arena_submit    a trainer trains on its own data and commits; the node reveals later
    arena_status    the phase, deadlines, members, submissions, and this node's part
    arena_results   the leaderboard and the validators' payouts, once finalised
    arena_verify    recompute every score and payout, and check them against the chain
    arena_claim     pull the stakes and rewards the Arena released to this node

Amounts are token base units (an int, or text such as "25e18"). Once a competition is
created or joined, the node's driver acts in every phase by itself.
"""

from __future__ import annotations

from typing import Any, Literal

from eth_utils import to_checksum_address

from flockd.arena.outcome import read_outcome
from flockd.arena.service import ArenaError, ArenaService
from flockd.arena.snapshot import CompetitionSnapshot
from flockd.arena.spec import ArenaSpec, ArenaSpecError, TrainerSettings
from flockd.arena.verify import verify_competition
from flockd.chain.client.arena import MAX_ELECTED, CompetitionParams
from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractRevert
from flockd.chain.node.genesis import GenesisError, parse_amount
from flockd.fl.data import DataError
from flockd.rpc.errors import INVALID_PARAMS, RPCError

ARENA_ERROR = -32050
BPS = 10_000
MAX_PHASE_BLOCKS, MAX_SUBMIT_BLOCKS, MIN_REVEAL_BLOCKS = 1024, 256, 8  # as the contract checks
E18 = 10**18


class _ArenaErrors:
    """The arena layer's errors as JSON-RPC errors that say why."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, ArenaSpecError | DataError | GenesisError):
            raise RPCError(INVALID_PARAMS, str(exc)) from None
        if isinstance(exc, ContractRevert):
            raise RPCError(ARENA_ERROR, f"the arena refused: {exc.reason}") from None
        if isinstance(exc, ArenaError | ChainError):
            raise RPCError(ARENA_ERROR, f"{type(exc).__name__}: {exc}") from None


def _in(name: str, value: int, low: int, high: int) -> int:
    if not low <= value <= high:
        raise RPCError(INVALID_PARAMS, f"{name} must be in [{low}, {high}], got {value}")
    return value


def _cid(value: int) -> int:
    return _in("competition_id", value, 1, 2**64)


class ArenaNamespace:
    namespace = "arena"

    def __init__(self, arena: ArenaService) -> None:
        self._arena = arena

    async def arena_create(
        self,
        recipe: str,
        reward_pool: int | str,
        creator_bond: int | str,
        config: dict[str, Any] | None = None,
        seed: int = 0,
        eval_path: str | None = None,
        submission: str = "model",
        trainer_stake: int | str = 10 * E18,
        validator_stake: int | str = 100 * E18,
        validator_cap: int | str = 1000 * E18,
        expected_validators: int = 4,
        join_blocks: int = 30,
        submit_blocks: int = 10,
        reveal_blocks: int = 10,
        score_commit_blocks: int = 20,
        score_reveal_blocks: int = 10,
        trainer_share_bps: int = 7000,
        rank_decay_bps: int = 5000,
        tolerance_bps: int = 500,
        slash_bps: int = 1000,
    ) -> dict[str, Any]:
        """Post a competition; the evaluation set (eval_path, else the recipe's bundled
        held-out split) stays on this node until the validators are elected. submission:
        "model" (a full model) or, for an LM recipe, "adapter" (a LoRA adapter)."""
        with _ArenaErrors():
            amounts = {k: parse_amount(k, v) for k, v in (("reward_pool", reward_pool), ("creator_bond", creator_bond),
                       ("trainer_stake", trainer_stake), ("validator_stake", validator_stake), ("validator_cap", validator_cap))}
            if amounts["validator_cap"] < amounts["validator_stake"]:
                raise RPCError(INVALID_PARAMS, "validator_cap must be at least validator_stake")
            params = CompetitionParams(
                recipe_hash=bytes(32), base_model_hash=bytes(32), eval_commitment=bytes(32),  # set by the service
                join_blocks=_in("join_blocks", join_blocks, 1, MAX_PHASE_BLOCKS),
                submit_blocks=_in("submit_blocks", submit_blocks, 2, MAX_SUBMIT_BLOCKS),
                reveal_blocks=_in("reveal_blocks", reveal_blocks, MIN_REVEAL_BLOCKS, MAX_PHASE_BLOCKS),
                score_commit_blocks=_in("score_commit_blocks", score_commit_blocks, 1, MAX_PHASE_BLOCKS),
                score_reveal_blocks=_in("score_reveal_blocks", score_reveal_blocks, MIN_REVEAL_BLOCKS, MAX_PHASE_BLOCKS),
                expected_validators=_in("expected_validators", expected_validators, 1, MAX_ELECTED),
                trainer_share_bps=_in("trainer_share_bps", trainer_share_bps, 0, BPS),
                rank_decay_bps=_in("rank_decay_bps", rank_decay_bps, 1, BPS),
                tolerance_bps=_in("tolerance_bps", tolerance_bps, 1, BPS),
                slash_bps=_in("slash_bps", slash_bps, 0, BPS // 2),
                **amounts,
            )
            spec = ArenaSpec(recipe=recipe, config=config or {}, seed=seed, submission=submission)
            return await self._arena.create(spec, eval_path, params)

    async def arena_join(
        self, competition_id: int, spec: dict[str, Any], role: Literal["trainer", "validator"], stake: int | str
    ) -> dict[str, Any]:
        """Stake on a competition (spec: as arena_create returned it)."""
        with _ArenaErrors():
            cid, amount = _cid(competition_id), parse_amount("stake", stake)
            return await self._arena.join(cid, ArenaSpec.from_json(spec), role, amount)

    async def arena_submit(
        self,
        competition_id: int,
        data_path: str | None = None,
        node_index: int = 0,
        num_nodes: int = 1,
        epochs: int | None = None,
        lr: float | None = None,
        seed: int = 0,
        model_path: str | None = None,
        steps: int | None = None,
    ) -> dict[str, Any]:
        """Train a model (or an LM's adapter) from the base on this node's data (data_path,
        else part node_index of num_nodes of the bundled data) with its own epochs or steps,
        lr and seed, and commit it, or commit the model at model_path (safetensors, trained
        elsewhere); the node reveals it in time."""
        with _ArenaErrors():
            cid = _cid(competition_id)
            settings = TrainerSettings(
                data_path=data_path,
                node_index=_in("node_index", node_index, 0, num_nodes - 1),
                num_nodes=_in("num_nodes", num_nodes, 1, 1024),
                epochs=None if epochs is None else _in("epochs", epochs, 1, 1000),
                steps=None if steps is None else _in("steps", steps, 1, 100_000),
                lr=None if lr is None else _positive_lr(lr),
                seed=_in("seed", seed, 0, 2**63 - 1),
                model_path=model_path,
            )
            return await self._arena.submit(cid, settings)

    async def arena_status(self, competition_id: int) -> dict[str, Any]:
        """The phase and its deadlines, members, submissions, and this node's part."""
        with _ArenaErrors():
            cid = _cid(competition_id)
            snap = await self._arena.snapshot(cid)
            mine = self._arena.members.get(cid)
            return {
                "competition_id": cid,
                "phase": snap.phase_name,
                "block": await self._arena.arena.client.block_number(),
                "deadlines": vars(snap.ends),
                "creator": to_checksum_address(snap.competition.creator),
                "reward_pool": snap.params.reward_pool,
                "submissions": [_submission(i, s) for i, s in enumerate(snap.submissions)],
                "elected": [to_checksum_address(v) for v in snap.elected],
                "eval_published": snap.competition.eval_set_hash != bytes(32),
                "role": mine.role if mine else None,
                "claimable": await self._arena.arena.claimable(self._arena.ctx.address),
                "done": mine.done if mine else [],
                "errors": self._arena.errors.get(cid, []),
            }

    async def arena_results(self, competition_id: int) -> dict[str, Any]:
        """The leaderboard (rank, median, reward) and every elected validator's settlement."""
        with _ArenaErrors():
            snap = await self._arena.snapshot(_cid(competition_id))
            outcome = await read_outcome(self._arena.arena, snap)
            return {
                "competition_id": snap.competition_id,
                "finalised": snap.competition.finalised,
                "leaderboard": [
                    {**_submission(r.index, snap.submissions[r.index]), "reward": r.reward} for r in outcome.ranked
                ],
                "validators": [
                    {"address": to_checksum_address(v), "scores": snap.scores.get(v), **vars(s)}
                    for v, s in outcome.settled.items()
                ],
            }

    async def arena_verify(self, competition_id: int, spec: dict[str, Any] | None = None) -> dict[str, Any]:
        """Recompute every score from the published evaluation set and the submissions;
        check medians, ranks and payouts against the chain (spec: needed on a node that
        took no part)."""
        with _ArenaErrors():
            cid = _cid(competition_id)
            snap = await self._arena.snapshot(cid)
            return await verify_competition(self._arena, snap, self._spec(cid, snap, spec))

    async def arena_claim(self) -> dict[str, Any]:
        """Pull every stake and reward the Arena released to this node (all competitions)."""
        with _ArenaErrors():
            return await self._arena.claim()

    def _spec(self, cid: int, snap: CompetitionSnapshot, given: dict[str, Any] | None) -> ArenaSpec:
        if given is not None:
            return ArenaSpec.from_json(given)
        mine = self._arena.members.get(cid)
        if mine is None:
            raise ArenaError(f"this node took no part in competition {cid}: give its spec")
        return ArenaSpec.from_json(mine.spec)


def _positive_lr(lr: float) -> float:
    if not 0 < lr <= 10:
        raise RPCError(INVALID_PARAMS, f"lr must be in (0, 10], got {lr}")
    return float(lr)


def _submission(index: int, s: Any) -> dict[str, Any]:
    return {
        "index": index,
        "trainer": to_checksum_address(s.trainer),
        "model_hash": "0x" + s.model_hash.hex() if s.revealed else None,
        "revealed": s.revealed,
        "duplicate": s.duplicate,
        "median": s.median,
        "rank": s.rank,
    }
