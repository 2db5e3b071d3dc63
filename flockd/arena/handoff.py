"""The hand-off: an Alliance task whose round 0 starts from an Arena competition's winner.

A task spec naming a competition (`TaskSpec.competition`) has, as its initial model, the
recipe's initial state built on the winning submission's model instead of a fresh one.
Every node derives it the same way, from the chain: the competition is finalised, its
recipe hash is the task's recipe, config and seed (as an ArenaSpec, with whichever
submission kind the recipe allows hashes to it), exactly one counted submission is
ranked 1, and the submission's bytes (this node's copy, else a peer's over `fl.fetch.1`)
hash to its revealed hash in the submission layout. The winner's full model weights are
the submission itself, or for an LM adapter the base with the adapter folded in
(`LoraRecipe.model_weights`, exact float64 sums rounded once: the same bytes on every
node); the task's initial state is the recipe's on those weights (for lm-lora: the
weights plus a fresh adapter from the task's seed, whose B is zero, so round 0's model is
exactly the winner's folded model). The
task's `model_init_hash` on chain must then match, as for any task (the runner and
model_verify check it). model_verify also reruns arena_verify on the competition, so the
whole lineage is checked: the competition's scores and ranks, the winner, every round.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import trio
from eth_utils import to_checksum_address

from flockd.arena.peers import fetch_model
from flockd.arena.snapshot import CompetitionSnapshot, read_competition
from flockd.arena.spec import (
    SUBMISSION_KINDS,
    ArenaSpec,
    ArenaSpecError,
    base_layout,
    load_submission,
    submission_weights,
)
from flockd.chain.client.arena import ARENA_PHASE_FINALISED, Submission
from flockd.fl.checkpoint import model_hash
from flockd.fl.tensors import Tensors
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

if TYPE_CHECKING:
    from flockd.arena.service import ArenaService

FETCH_ATTEMPTS = 30  # a fetch nobody answers is asked again, a second apart, this often
FETCH_RETRY_SECONDS = 1.0


class HandoffError(Exception):
    """A task cannot start from this competition's winner; says why."""


def arena_spec_of(spec: TaskSpec, recipe_hash: bytes | None = None) -> ArenaSpec:
    """The competition spec a task spec names: its recipe, config and seed, and the
    submission kind whose spec hashes to `recipe_hash` (the competition's), else the
    default kind (which winner_of then finds not to match)."""
    found: list[ArenaSpec] = []
    for kind in SUBMISSION_KINDS:
        try:
            found.append(ArenaSpec(spec.recipe, spec.config, spec.seed, submission=kind))
        except ArenaSpecError as exc:
            if not found and kind == SUBMISSION_KINDS[0]:
                raise HandoffError(f"the task's recipe cannot come from a competition: {exc}") from None
    return next((s for s in found if s.spec_hash == recipe_hash), found[0])


def winner_of(snap: CompetitionSnapshot, arena_spec: ArenaSpec) -> tuple[int, Submission]:
    """(index, submission) of the competition's rank-1 submission, checked against the
    chain's record; HandoffError when the competition cannot seed this task."""
    cid = snap.competition_id
    if snap.phase != ARENA_PHASE_FINALISED:
        raise HandoffError(f"competition {cid} is in its {snap.phase_name} phase, not finalised")
    if arena_spec.spec_hash != snap.params.recipe_hash:
        raise HandoffError(f"competition {cid} was not run on this task's recipe, config and seed")
    winners = [i for i in snap.counted() if snap.submissions[i].rank == 1]
    if len(winners) != 1:
        raise HandoffError(f"competition {cid} has {len(winners)} counted submissions ranked 1")
    return winners[0], snap.submissions[winners[0]]


class Handoff:
    """What the task service asks of the Arena for a task seeded by a competition."""

    def __init__(self, svc: ArenaService) -> None:
        self.svc = svc

    async def _winner(self, spec: TaskSpec) -> tuple[CompetitionSnapshot, ArenaSpec, int, Submission]:
        if spec.competition is None:
            raise HandoffError("the task spec names no competition")
        snap = await read_competition(self.svc.arena, spec.competition)
        if snap is None:
            raise HandoffError(f"no competition {spec.competition}")
        arena_spec = await trio.to_thread.run_sync(arena_spec_of, spec, snap.params.recipe_hash)
        return (snap, arena_spec, *winner_of(snap, arena_spec))

    async def base_model(self, spec: TaskSpec) -> Tensors:
        """The winning model's full weights, from its submission: this node's copy, else the
        first peer's whose bytes hash to the winner's revealed hash in the submission
        layout (kept then)."""
        _, arena_spec, _, winner = await self._winner(spec)
        store = self.svc.ctx.store
        layout = await trio.to_thread.run_sync(base_layout, arena_spec)

        def check(data: bytes) -> Tensors:
            return load_submission(data, winner.model_hash, layout)

        def weights(data: bytes) -> Tensors:
            return submission_weights(arena_spec, check(data))

        for _ in range(FETCH_ATTEMPTS):
            data = await trio.to_thread.run_sync(store.get_model_bytes, winner.model_hash)
            if data is None:
                data = await fetch_model(self.svc.ctx.network, winner.model_hash, winner.trainer, check)
                if data is not None:
                    await trio.to_thread.run_sync(store.put_model_bytes, data, winner.model_hash)
            if data is not None:
                try:
                    return await trio.to_thread.run_sync(weights, data)
                except ArenaSpecError as exc:  # this node's own copy is damaged
                    raise HandoffError(f"the stored winning model: {exc}") from None
            await trio.sleep(FETCH_RETRY_SECONDS)
        raise HandoffError(f"no peer gave the winning model {winner.model_hash.hex()} of competition {spec.competition}")

    async def verify(self, spec: TaskSpec) -> dict[str, Any]:
        """The competition's part of a task's lineage: arena_verify's recomputation, and
        which submission won (the rounds' part checks that the task starts from it)."""
        from flockd.arena.verify import verify_competition

        try:
            snap, arena_spec, index, winner = await self._winner(spec)
        except HandoffError as exc:
            return {"competition_id": spec.competition, "ok": False, "problems": [str(exc)]}
        verified = await verify_competition(self.svc, snap, arena_spec)
        return {
            "competition_id": snap.competition_id,
            "ok": verified["ok"],
            "problems": verified["problems"],
            "winner": {"index": index, "trainer": to_checksum_address(winner.trainer),
                       "model_hash": "0x" + winner.model_hash.hex(), "median": winner.median},
        }


class SeededWorker(Worker):
    """A task's worker whose initial model is built on a competition's winning model."""

    def __init__(self, *args: Any, base: Tensors, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._base = base

    def initial_model(self) -> Tensors:
        return self.recipe.initial_state(dict(self._base), self.spec.seed)


def initial_model_hash(spec: TaskSpec, base: Tensors) -> bytes:
    from flockd.fl.recipe import load_recipe

    return model_hash(load_recipe(spec.recipe, spec.config).initial_state(dict(base), spec.seed))
