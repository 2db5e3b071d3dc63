"""The evaluation set leaves its creator only as the contract's flow says: to nobody while
submissions can still change, to the elected validators once they are revealed, to
anyone once it is published. Real libp2p hosts on 127.0.0.1, the embedded chain."""

from __future__ import annotations

from pathlib import Path

import trio
from test_anvil import E18, MEMBERS, embedded_env, genesis
from test_arena_anvil import advance_to
from test_arena_roles import CREATOR, SPEC, node, params

from flockd.arena.exchange import (
    EVAL_KIND,
    MAX_EVAL_REQUEST,
    decode_eval_reply,
    encode_eval_request,
)
from flockd.arena.roles import STEPS, obtain_eval_set
from flockd.arena.service import ArenaService
from flockd.arena.spec import MAX_EVAL_BYTES, TrainerSettings
from flockd.chain.client.arena import (
    ARENA_PHASE_REVEAL,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SCORE_REVEAL,
    ARENA_PHASE_SUBMIT,
)
from flockd.p2p.host import P2PService

TRAINER, VALIDATOR = 1, 3


async def step(svc: ArenaService, cid: int) -> None:
    m = svc.members[cid]
    snap = await svc.snapshot(cid)
    await STEPS[(m.role, snap.phase)](svc, m, snap)


async def test_the_eval_set_goes_to_elected_validators_then_to_everyone(tmp_path: Path) -> None:
    hosts = {w: P2PService(MEMBERS[w].account.key, network_id="arenatest") for w in (CREATOR, TRAINER, VALIDATOR)}
    with trio.fail_after(180):
        async with embedded_env(genesis(arena=True)) as env, trio.open_nursery() as nursery:
            for h in hosts.values():
                await nursery.start(h.run)
            for w in (TRAINER, VALIDATOR):
                await hosts[w].connect(hosts[CREATOR].listen_addrs()[0])
            svc = {w: node(env, w, tmp_path, hosts[w]) for w in hosts}
            hosts[CREATOR].handle_blobs(EVAL_KIND, svc[CREATOR].answer_eval_request, max_size=MAX_EVAL_REQUEST)

            async def ask(w: int) -> bytes | None:
                return await hosts[w].send_blob(hosts[CREATOR].peer_id, EVAL_KIND, encode_eval_request(cid))

            cid = (await svc[CREATOR].create(SPEC, None, params(1)))["competition_id"]
            await svc[TRAINER].join(cid, SPEC, "trainer", 10 * E18)
            await svc[TRAINER].submit(cid, TrainerSettings(seed=1))
            await svc[VALIDATOR].join(cid, SPEC, "validator", 100 * E18)
            assert await ask(VALIDATOR) is None  # submissions may still change
            await advance_to(env, svc[CREATOR].arena, cid, ARENA_PHASE_SUBMIT)
            await step(svc[VALIDATOR], cid)  # elected: the only validator, expected 1
            await advance_to(env, svc[CREATOR].arena, cid, ARENA_PHASE_REVEAL)
            await step(svc[TRAINER], cid)
            assert await ask(VALIDATOR) is None  # revealing: not yet
            await advance_to(env, svc[CREATOR].arena, cid, ARENA_PHASE_SCORE_COMMIT)

            assert await ask(TRAINER) is None  # not elected: refused
            assert svc[CREATOR].counters.get("eval_requests_refused") == 1
            held = svc[CREATOR].records.eval_set(cid)
            assert held is not None and decode_eval_reply(await ask(VALIDATOR) or b"", MAX_EVAL_BYTES) == held
            snap = await svc[VALIDATOR].snapshot(cid)
            split = await obtain_eval_set(svc[VALIDATOR], SPEC, snap)  # fetched, checked against the commitment
            assert len(split) > 0 and svc[VALIDATOR].records.eval_set(cid) == held

            await advance_to(env, svc[CREATOR].arena, cid, ARENA_PHASE_SCORE_REVEAL)
            await step(svc[CREATOR], cid)  # publishes
            assert decode_eval_reply(await ask(TRAINER) or b"", MAX_EVAL_BYTES) == held  # now anyone
            nursery.cancel_scope.cancel()
