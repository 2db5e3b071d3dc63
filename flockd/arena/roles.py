"""What a member does in each phase of a competition: a table of (role, phase) -> step.

A driver polls the chain and runs the step of its role for the phase a transaction sent
now lands in. Every step is idempotent (it checks the chain, and a finished step is
recorded in the membership), so a restart or a repeated poll redoes nothing. A step that
fails for a documented reason (a revert, the chain unreachable, a peer without the
data) is recorded in the competition's errors and tried again at the next poll while its
phase lasts.
"""

from __future__ import annotations

import secrets
from collections.abc import Awaitable, Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING

import trio

from flockd import sortition, vrf
from flockd.arena.peers import fetch_eval_set, fetch_model
from flockd.arena.records import Membership
from flockd.arena.snapshot import CompetitionSnapshot
from flockd.arena.spec import (
    ArenaSpec,
    ArenaSpecError,
    EvalSet,
    base_layout,
    decode_eval_set,
    read_submission,
    score_model,
)
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_FINALISED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    eval_commitment,
    scores_digest,
)
from flockd.chain.client.backends import ChainError
from flockd.fl.tensors import Tensors

if TYPE_CHECKING:
    from flockd.arena.service import ArenaService

POLL_SECONDS = 0.5
FINALISE_GRACE_BLOCKS = 6


class NotYet(Exception):
    """The step cannot act yet in this phase (a value it needs is not on chain, or no peer
    has given it, yet): try again at the next poll, quietly."""


Step = Callable[["ArenaService", Membership, CompetitionSnapshot], Awaitable[None]]


async def drive(svc: ArenaService, cid: int) -> None:
    while True:
        m = svc.members[cid]
        try:
            snap = await svc.snapshot(cid)
        except ChainError as exc:
            svc.record_error(cid, "read", str(exc))
            await trio.sleep(POLL_SECONDS * 4)
            continue
        if snap.phase == ARENA_PHASE_FINALISED:
            return
        step = STEPS.get((m.role, snap.phase))
        name = f"{m.role}:{snap.phase_name}"
        if step is not None and name not in m.done:
            try:
                await step(svc, m, snap)
                svc.remember(svc.members[cid].with_done(name))
            except NotYet:
                pass
            except (ChainError, ArenaSpecError) as exc:
                svc.record_error(cid, name, f"{type(exc).__name__}: {exc}")
                await trio.sleep(POLL_SECONDS * 3)  # a failed step asks peers and the chain: not at full pace
        await trio.sleep(POLL_SECONDS)


# -- creator ------------------------------------------------------------------------------

async def publish_eval(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    if snap.competition.eval_set_hash != bytes(32):
        return
    assert m.eval_set_hash is not None and m.eval_salt is not None  # set by create
    await svc.arena.publish_eval(m.competition_id, bytes.fromhex(m.eval_set_hash), bytes.fromhex(m.eval_salt))


async def finalise(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    await svc.arena.finalise(m.competition_id)


async def finalise_late(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    """A member finalises when the creator has not, a few blocks on: the payouts must not
    hang on one node."""
    if await svc.arena.client.block_number() < snap.ends.score_reveal + FINALISE_GRACE_BLOCKS:
        raise NotYet("the creator may still finalise")
    await svc.arena.finalise(m.competition_id)


# -- trainer ------------------------------------------------------------------------------

async def reveal_submission(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    if m.model_hash is None or m.submission_salt is None:
        return  # joined, never submitted
    mine = [s for s in snap.submissions if s.trainer == svc.ctx.address]
    if mine and not mine[0].revealed:
        await svc.arena.reveal_submission(m.competition_id, bytes.fromhex(m.model_hash), bytes.fromhex(m.submission_salt))


# -- validator ----------------------------------------------------------------------------

async def elect(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    cid = m.competition_id
    seed = await svc.arena.seed(cid)
    if seed == bytes(32):
        raise NotYet("the election seed is not readable yet")
    proof = await trio.to_thread.run_sync(vrf.prove, svc.ctx.vrf_secret, seed)
    threshold = await svc.arena.election_threshold(cid, svc.ctx.address)
    if sortition.draw(vrf.proof_to_hash(proof)) < threshold:  # else: not elected, nothing to do
        await svc.arena.elect(cid, proof)


async def score_and_commit(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    cid = m.competition_id
    me = snap.members.get(svc.ctx.address)
    if me is None or me.score_digest != bytes(32):
        return  # not elected, or committed already
    if m.scores is None:
        found = await score_submissions(svc, ArenaSpec.from_json(m.spec), snap)
        midpoint = (snap.ends.reveal + snap.ends.score_commit) // 2
        if None in found and await svc.arena.client.block_number() < midpoint:
            raise NotYet("a submission no peer gave yet")  # its trainer may be back soon
        scores = [0 if s is None else s for s in found]  # past the midpoint: unscorable ones get 0
        m = replace(m, scores=scores, scores_salt=secrets.token_hex(32))
        svc.remember(m)  # before the commit: its reveal needs both
    assert m.scores is not None and m.scores_salt is not None
    await svc.arena.commit_scores(cid, scores_digest(cid, svc.ctx.address, m.scores, bytes.fromhex(m.scores_salt)))


async def reveal_scores(svc: ArenaService, m: Membership, snap: CompetitionSnapshot) -> None:
    me = snap.members.get(svc.ctx.address)
    if me is None or me.revealed or me.score_digest == bytes(32) or m.scores is None or m.scores_salt is None:
        return
    await svc.arena.reveal_scores(m.competition_id, m.scores, bytes.fromhex(m.scores_salt))


# -- shared with arena_verify -------------------------------------------------------------

async def obtain_eval_set(svc: ArenaService, spec: ArenaSpec, snap: CompetitionSnapshot) -> EvalSet:
    """The evaluation set, held or fetched, checked against the published hash (or,
    before publication, the commitment)."""
    cid = snap.competition_id
    published = snap.competition.eval_set_hash

    def check(salt: bytes, data: bytes) -> EvalSet:
        split, digest = decode_eval_set(data, spec)
        if published != bytes(32) and digest != published:
            raise ArenaSpecError("the evaluation set does not hash to the published hash")
        if eval_commitment(digest, salt) != snap.params.eval_commitment:
            raise ArenaSpecError("the evaluation set does not match the creator's commitment")
        return split

    held = svc.records.eval_set(cid)
    if held is None:
        held = await fetch_eval_set(svc.ctx.network, cid, snap.competition.creator, check)
        if held is None:
            raise ArenaSpecError(f"no peer gave the evaluation set of competition {cid}")
        svc.records.put_eval_set(cid, *held)
    return await trio.to_thread.run_sync(check, *held)


async def score_submissions(svc: ArenaService, spec: ArenaSpec, snap: CompetitionSnapshot) -> list[int | None]:
    """One score per submission in commit order: 0 for one that does not count or whose
    committed bytes are not in the submission layout, None for one that no peer could give
    (bytes hashing to the committed hash; this node's own copy included), else the
    recipe's score."""
    eval_set = await obtain_eval_set(svc, spec, snap)
    layout = await trio.to_thread.run_sync(base_layout, spec)
    scores: list[int | None] = []
    for i, sub in enumerate(snap.submissions):
        if i not in snap.counted():
            scores.append(0)
            continue
        read = partial(read_submission, model_hash_=sub.model_hash, layout=layout)
        found: tuple[Tensors | None] | None = None  # (None,): the committed model, in a wrong layout
        data = await trio.to_thread.run_sync(svc.ctx.store.get_model_bytes, sub.model_hash)
        if data is not None:
            try:
                found = (await trio.to_thread.run_sync(read, data),)
            except ArenaSpecError:
                svc.counters.incr("bad_stored_submissions")
        if found is None:
            data = await fetch_model(svc.ctx.network, sub.model_hash, sub.trainer, read)
            if data is not None:
                found = (await trio.to_thread.run_sync(read, data),)
                await trio.to_thread.run_sync(svc.ctx.store.put_model_bytes, data, sub.model_hash)
        if found is None:
            scores.append(None)
        elif found[0] is None:
            svc.counters.incr("wrong_layout_submissions")
            scores.append(0)
        else:
            scores.append(await trio.to_thread.run_sync(score_model, spec, found[0], eval_set))
    return scores


STEPS: dict[tuple[str, int], Step] = {
    ("creator", ARENA_PHASE_SCORE_REVEAL): publish_eval,
    ("creator", ARENA_PHASE_CLOSED): finalise,
    ("trainer", ARENA_PHASE_REVEAL): reveal_submission,
    ("trainer", ARENA_PHASE_CLOSED): finalise_late,
    ("validator", ARENA_PHASE_CLOSED): finalise_late,
    ("validator", ARENA_PHASE_SUBMIT): elect,
    ("validator", ARENA_PHASE_SCORE_COMMIT): score_and_commit,
    ("validator", ARENA_PHASE_SCORE_REVEAL): reveal_scores,
}
