"""The hand-off (flockd.arena.handoff): a task created from a finalised competition starts
from the winning submission's model, checked against the chain, on the embedded chain with
the real contracts; a spec that names no finalised competition of its recipe is refused,
and a winning model that does not hash to the revealed one is never used."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_arena_roles import CREATOR, SPEC, Nodes, run

import flockd.arena.handoff as handoff_module
from flockd.arena.handoff import Handoff, HandoffError
from flockd.fl.checkpoint import model_hash
from flockd.tasks.service import TaskError, TaskService
from flockd.tasks.spec import SpecError, TaskSpec
from flockd.tasks.verify import verify_lineage

TASK_SPEC = TaskSpec(SPEC.recipe, SPEC.config, seed=SPEC.seed, num_nodes=2)
TASK = {"rounds": 2, "expected_proposers": 2, "min_participants": 2, "min_stake": 10**18, "stake_unit": 10**18,
        "propose_blocks": 8, "commit_blocks": 6, "reveal_blocks": 8, "reward_pool": 0, "vote_mode": 0, "max_proposals": 16}


def test_a_spec_without_a_competition_hashes_as_before() -> None:
    assert "competition" not in TASK_SPEC.to_json()
    seeded = replace(TASK_SPEC, competition=7)
    assert seeded.to_json()["competition"] == 7
    assert TaskSpec.from_json(seeded.to_json()) == seeded
    assert seeded.spec_hash != TASK_SPEC.spec_hash
    with pytest.raises(SpecError):
        replace(TASK_SPEC, competition=0)


async def test_a_task_starts_from_the_competitions_winner(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handoff_module, "FETCH_RETRY_SECONDS", 0.0)

    async def hand_off(nodes: Nodes, cid: int) -> None:
        creator = nodes.services[CREATOR]
        tasks = TaskService(creator.ctx, creator.token)
        tasks.handoff = Handoff(creator)
        spec = replace(TASK_SPEC, competition=cid)
        snap = await creator.snapshot(cid)
        (winner,) = [s for s in snap.submissions if s.rank == 1]

        created = await tasks.create(spec, **TASK)
        params = await tasks.registry.get_params(created["task_id"])
        assert params.model_init_hash == winner.model_hash  # a classifier's initial state is its model
        worker = await tasks.worker_for(spec, 0, None)
        assert model_hash(worker.initial_model()) == winner.model_hash
        lineage = await verify_lineage(tasks.registry, tasks.ctx.store, worker, created["task_id"], tasks.fetch_delta)
        assert lineage["problems"] == [] and lineage["rounds_checked"] == 0  # not started: nothing else to check

        # a creator naming the competition but posting another initial model: nobody stakes on it
        forged = await tasks.registry.create_task(replace(params, model_init_hash=bytes(32)))
        joiner = TaskService(nodes.services[2].ctx, nodes.services[2].token)
        joiner.handoff = Handoff(nodes.services[2])
        held = await joiner.token.balance_of(joiner.ctx.address)
        with pytest.raises(TaskError, match="does not start from competition"):
            await joiner.join(forged, spec, 10**18, None)
        assert await joiner.token.balance_of(joiner.ctx.address) == held

        checked = await tasks.handoff.verify(spec)
        assert checked["ok"], checked
        assert checked["winner"]["model_hash"] == "0x" + winner.model_hash.hex()

        # not the competition's recipe seed; no such competition: refused before any transaction
        with pytest.raises(HandoffError, match="not run on this task's recipe"):
            await tasks.create(replace(spec, seed=SPEC.seed + 1), **TASK)
        with pytest.raises(HandoffError, match="no competition"):
            await tasks.create(replace(spec, competition=cid + 1), **TASK)
        assert not (await tasks.handoff.verify(replace(spec, competition=cid + 1)))["ok"]

        # a node whose copy of the winner is not the revealed model uses nothing (and no peer has it)
        trainer = nodes.services[1]
        path = trainer.ctx.store.model_path(winner.model_hash)
        other = next(p for p in path.parent.iterdir() if p != path)
        path.write_bytes(other.read_bytes())
        with pytest.raises(HandoffError, match="stored winning model"):
            await Handoff(trainer).base_model(spec)
        path.unlink()
        monkeypatch.setattr(handoff_module, "FETCH_ATTEMPTS", 2)
        with pytest.raises(HandoffError, match="no peer gave the winning model"):
            await Handoff(trainer).base_model(spec)

    await run(tmp_path, {3: (100, "honest")}, then=hand_off)
