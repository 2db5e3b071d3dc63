"""The daemon's Arena roles (flockd.arena.roles) and arena_verify on the embedded chain,
step by step: real models trained and scored, the real contract settling. A lazy
validator that reveals random scores is paid less while the honest stake holds the
majority, and arena_verify catches a median it moved once it holds the majority; a copier
gains nothing. Every node restarts from its datadir before each reveal phase."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from test_anvil import E18, MEMBERS, Env, embedded_env, genesis
from test_arena_anvil import advance_to

from flockd.arena.records import Membership
from flockd.arena.roles import STEPS
from flockd.arena.service import ArenaService
from flockd.arena.spec import ArenaSpec, TrainerSettings
from flockd.arena.verify import verify_competition
from flockd.chain.client.addresses import ARENA_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.arena import (
    ARENA_PHASE_CLOSED,
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
    Arena,
    CompetitionParams,
    scores_digest,
)
from flockd.chain.client.arena_pools import ArenaPools
from flockd.chain.client.registry import Registry, Token
from flockd.p2p.abc import BlobHandler, GossipHandler, P2PError, P2PNetwork, PeerInfo
from flockd.store import Store
from flockd.tasks.context import NodeContext

CREATOR = 0
SPEC = ArenaSpec("digits-mlp", {"epochs": 1}, seed=3)


class NoPeers(P2PNetwork):
    """A node with no peer: everything it needs must be on its own disk."""

    peer_id = "none"

    def listen_addrs(self) -> list[str]:
        return []

    def peers(self) -> list[PeerInfo]:
        return []

    async def connect(self, multiaddr: str) -> str:
        raise P2PError("no network")

    async def publish(self, topic: str, kind: str, payload: object) -> None:
        raise P2PError("no network")

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        pass

    def handle_blobs(self, kind: str, handler: BlobHandler, *, max_size: int) -> None:
        pass

    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        raise P2PError("no network")

    def penalize_peer(self, peer_id: str, points: float, reason: str) -> None:
        pass

    def penalize_sender(self, address: str, points: float, reason: str) -> None:
        pass


def params(expected_validators: int) -> CompetitionParams:
    return CompetitionParams(
        recipe_hash=bytes(32), base_model_hash=bytes(32), eval_commitment=bytes(32),
        join_blocks=20, submit_blocks=8, reveal_blocks=8, score_commit_blocks=8, score_reveal_blocks=8,
        reward_pool=1000 * E18, creator_bond=100 * E18, trainer_stake=10 * E18, validator_stake=100 * E18,
        validator_cap=1000 * E18, expected_validators=expected_validators,
    )


@dataclass
class Nodes:
    env: Env
    services: dict[int, ArenaService]

    async def step(self, who: int, cid: int) -> None:
        svc = self.services[who]
        m = svc.members[cid]
        snap = await svc.snapshot(cid)
        await STEPS[(m.role, snap.phase)](svc, m, snap)

    def restart(self, root: Path) -> None:
        """Every node anew from its datadir: what it must still reveal is on its disk."""
        self.services = {w: node(self.env, w, root) for w in self.services}

    def hand_over(self, cid: int, source: int, targets: list[int]) -> None:
        """What the p2p fetches would carry: its models, and the evaluation set it holds."""
        src = self.services[source]
        held = src.records.eval_set(cid)
        for t in targets:
            for path in (src.ctx.store.root / "models").iterdir():
                self.services[t].ctx.store.put_model_bytes(path.read_bytes(), bytes.fromhex(path.stem))
            if held is not None:
                self.services[t].records.put_eval_set(cid, *held)

def node(env: Env, who: int, root: Path, network: P2PNetwork | None = None) -> ArenaService:
    client = env.client(who)
    ctx = NodeContext(network or NoPeers(), Registry(client, TASK_REGISTRY_ADDRESS), Store(root / str(who)), MEMBERS[who].address,
                      MEMBERS[who].vrf_sk, confirmations=0)
    return ArenaService(ctx, Arena(client, ARENA_ADDRESS), Token(client, env.deployment.token))


async def run(
    tmp_path: Path, validators: dict[int, tuple[int, str]], copies: dict[int, int] | None = None,
    then: Callable[[Nodes, int], Awaitable[None]] | None = None, backing: dict[int, int] | None = None,
    withheld: tuple[int, ...] = (),
) -> dict[int, dict[str, Any]]:
    """A competition to the end: trainers are the members that are neither the creator nor
    a validator; `validators` maps a member to (stake in tokens, "honest" | "random"),
    `copies` a trainer to the trainer whose model it submits as its own; `then` runs on the
    finalised competition before the chain stops; `backing` maps a validator to the tokens
    the creator delegates to its pool before it joins; a trainer in `withheld` commits and
    reveals its model but never gives it to anyone (the honest validators score it 0 once
    they stop waiting, at the score-commit window's midpoint). Returns arena_verify's
    answer on every member."""
    trainers = [w for w in range(1, 4) if w not in validators]
    async with embedded_env(genesis(arena=True)) as env:
        nodes = Nodes(env, {w: node(env, w, tmp_path) for w in range(4)})
        created = await nodes.services[CREATOR].create(SPEC, None, params(16))  # 16: every validator elected
        cid = created["competition_id"]
        for w in trainers:
            await nodes.services[w].join(cid, SPEC, "trainer", 10 * E18)
            original = (copies or {}).get(w)
            if original is None:
                await nodes.services[w].submit(cid, TrainerSettings(node_index=w - 1, num_nodes=3, seed=w))
            else:  # the original's model file, as the copier got it from a peer
                stolen = nodes.services[original]
                digest = bytes.fromhex(stolen.members[cid].model_hash or "")
                await nodes.services[w].submit(cid, TrainerSettings(model_path=str(stolen.ctx.store.model_path(digest))))
        for w, tokens in (backing or {}).items():
            await env.token(CREATOR).approve(ARENA_ADDRESS, tokens * E18)
            await ArenaPools(env.client(CREATOR), ARENA_ADDRESS).delegate(MEMBERS[w].address, tokens * E18)
        for w, (stake, _) in validators.items():
            await nodes.services[w].join(cid, SPEC, "validator", stake * E18)
        arena = nodes.services[CREATOR].arena  # a view: survives the restarts
        await advance_to(env, arena, cid, ARENA_PHASE_SUBMIT)
        for w in validators:
            await nodes.step(w, cid)
        await advance_to(env, arena, cid, ARENA_PHASE_REVEAL)
        nodes.restart(tmp_path)
        for w in trainers:
            await nodes.step(w, cid)
        await advance_to(env, arena, cid, ARENA_PHASE_SCORE_COMMIT)
        for w in [*trainers, CREATOR]:
            if w not in withheld:
                nodes.hand_over(cid, w, list(validators))
        if withheld:
            ends = await arena.deadlines(cid)
            await env.mine((ends.reveal + ends.score_commit) // 2 - await env.client(0).block_number())
        for w, (_, behaviour) in validators.items():
            if behaviour == "honest":
                await nodes.step(w, cid)
            else:  # lazy: random scores, committed and revealed like honest ones
                svc = nodes.services[w]
                scores = [random.Random(w).randrange(10**6) for _ in trainers]
                salt = bytes(32)
                svc.remember(Membership(cid, "validator", SPEC.to_json(), scores=scores, scores_salt=salt.hex()))
                await svc.arena.commit_scores(cid, scores_digest(cid, MEMBERS[w].address, scores, salt))
        await advance_to(env, arena, cid, ARENA_PHASE_SCORE_REVEAL)
        nodes.restart(tmp_path)
        for w in [*validators, CREATOR]:
            await nodes.step(w, cid)
        await advance_to(env, arena, cid, ARENA_PHASE_CLOSED)
        await nodes.step(CREATOR, cid)
        for w in [*trainers, CREATOR]:  # after publication: to everyone
            if w not in withheld:
                nodes.hand_over(cid, w, [o for o in range(4) if o != w])
        verified = {w: await verify_competition(nodes.services[w], await nodes.services[w].snapshot(cid), SPEC) for w in range(4)}
        if then is not None:
            await then(nodes, cid)
        return verified


async def test_honest_competition_verifies_on_every_member(tmp_path: Path) -> None:
    for w, verified in (await run(tmp_path, {3: (100, "honest")})).items():
        assert verified["ok"], (w, verified)
        counted = [s for s in verified["submissions"] if s["counted"]]
        assert len(counted) == 2 and all(s["recomputed_score"] == s["median"] > 0 for s in counted)
        assert sorted(s["rank"] for s in counted) == [1, 2]


async def test_a_lazy_minority_validator_is_paid_less_and_moves_no_median(tmp_path: Path) -> None:
    verified = (await run(tmp_path, {2: (100, "random"), 3: (300, "honest")}))[1]
    assert verified["ok"], verified
    rewards = [v["reward"] for v in verified["validators"]]
    deviations = [v["largest_deviation"] for v in verified["validators"]]
    assert deviations[1] == 0 and deviations[0] > 0  # elected in join order: lazy first
    # per unit of stake the lazy validator earns less than the honest one
    assert rewards[0] * 300 < rewards[1] * 100


async def test_a_backed_validator_weighs_its_stake_and_backing_and_verify_counts_both(tmp_path: Path) -> None:
    """Equal own stakes, but the honest validator's pool backs it with 200 more: the
    contract weighs it 300 against 100, and arena_verify recomputes the payouts with the
    same weights (with own stake alone it would find every validator payout wrong)."""
    verified = (await run(tmp_path, {2: (100, "random"), 3: (100, "honest")}, backing={3: 200}))[1]
    assert verified["ok"], verified["problems"]
    rewards = [v["reward"] for v in verified["validators"]]
    assert rewards[0] < rewards[1]  # the lazy one, elected first, earns less


async def test_verify_fails_when_a_lazy_majority_moves_the_median(tmp_path: Path) -> None:
    verified = (await run(tmp_path, {2: (300, "random"), 3: (100, "honest")}))[1]
    assert not verified["ok"]
    assert any("is not its recomputed score" in p for p in verified["problems"]), verified["problems"]



async def test_a_copier_of_another_trainers_model_gains_nothing(tmp_path: Path) -> None:
    verified = (await run(tmp_path, {3: (100, "honest")}, copies={2: 1}))[0]
    assert verified["ok"], verified
    original, copy = verified["submissions"]
    assert original["model_hash"] == copy["model_hash"]
    assert (original["counted"], original["rank"]) == (True, 1)
    assert (copy["counted"], copy["rank"]) == (False, 0)  # a duplicate: unranked, unpaid


async def test_a_withheld_model_is_scored_0_unranked_unpaid_and_verifies(tmp_path: Path) -> None:
    """Trainer 2 commits and reveals a model hash and serves nobody the model: the
    validator scores it 0, finalise gives it no rank (and so no reward: the other trainer
    is ranked alone), and arena_verify, which cannot fetch it either, agrees."""
    verified = await run(tmp_path, {3: (100, "honest")}, withheld=(2,))
    for w in (CREATOR, 1, 3):  # the withholder's own node scores its model: only there do they differ
        assert verified[w]["ok"], (w, verified[w]["problems"])
        served, withheld = verified[w]["submissions"]
        assert (served["counted"], served["rank"]) == (True, 1) and served["median"] > 0
        assert (withheld["counted"], withheld["recomputed_score"], withheld["median"], withheld["rank"]) == (True, None, 0, 0)
        assert verified[w]["validators"][0]["reward"] > 0  # its 0 was right: still paid for closeness
    assert not verified[2]["ok"]
