"""The daemon's task adapter on the simulation's chain: three TaskRunners, each with its
own Store and the simulation's Worker, run a task to its end on the in-process py-evm
chain with the real contracts (`flockd.sim.task_chain`), through the same TaskChain seam
the daemon's registry client implements. No sockets: deltas and fetches between the
runners are handed over in process.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
from fake_task_chain import BlobOnlyPeers

from flockd import round as rnd
from flockd import vrf
from flockd.p2p.abc import PeerInfo
from flockd.sim import SimConfig
from flockd.sim.run import Simulation
from flockd.sim.task_chain import SimBlocks, SimTaskChain
from flockd.store import Store
from flockd.tasks import runner as runner_module
from flockd.tasks.exchange import DELTA_KIND, FETCH_KIND, decode_fetch, decode_push
from flockd.tasks.runner import NodeContext, TaskRunner


class InProcessPeers(BlobOnlyPeers):
    """Every other runner is a peer; a push goes to its inbox, a fetch to its store."""

    def __init__(self, me: bytes, hub: dict[bytes, TaskRunner]) -> None:
        super().__init__()
        self.me, self.hub = me, hub

    @property
    def peer_id(self) -> str:
        return self.me.hex()

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(a.hex(), "0x" + a.hex(), [], "outbound", None) for a in self.hub if a != self.me]

    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        await trio.lowlevel.checkpoint()
        target = self.hub[bytes.fromhex(peer_id)]
        if kind == DELTA_KIND:
            push = decode_push(data)
            target.on_delta_push(rnd.DeltaReceived(push.round, push.proposer, push.delta, self.me))
            return None
        assert kind == FETCH_KIND
        request = decode_fetch(data)
        store = target.ctx.store
        return store.get_delta(request.digest) if request.what == "delta" else store.get_model_bytes(request.digest)


@pytest.fixture(autouse=True)
def _fast_polls(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner_module, "POLL_SECONDS", 0.02)


async def test_runners_finish_a_task_on_the_simulations_chain(tmp_path: Path) -> None:
    cfg = SimConfig(nodes=3, rounds=2, expected_proposers=2, propose_blocks=10, commit_blocks=10, reveal_blocks=10)
    sim = Simulation(cfg)
    joiners = [(n.key, vrf.public_key(n.vrf_secret)) for n in sim.nodes]
    task_id = sim.chain.create_task(sim.nodes[0].key, sim.params, joiners, cfg.stake)
    participants = [bytes.fromhex(a[2:]) for a in sim.chain.view("get_participants", task_id)]
    blocks = SimBlocks(sim.chain)
    hub: dict[bytes, TaskRunner] = {}
    for node in sim.nodes:
        ctx = NodeContext(
            network=InProcessPeers(node.address, hub), registry=None,  # type: ignore[arg-type]
            store=Store(tmp_path / str(node.index)), address=node.address, vrf_secret=node.vrf_secret,
            confirmations=0,
        )
        hub[node.address] = TaskRunner(
            ctx, task_id, sim.spec, sim.params, participants, node.work, chain=SimTaskChain(blocks, node.key)
        )
    with trio.fail_after(240):  # a hang guard, not a timing assertion
        async with trio.open_nursery() as nursery:
            for runner in hub.values():
                nursery.start_soon(runner.run)
            nursery.start_soon(blocks.seal_every, 0.1)
            for runner in hub.values():
                await runner.done.wait()
            nursery.cancel_scope.cancel()
    recorded = bytes(sim.chain.view("get_round", task_id, cfg.rounds - 1)[8])
    for runner in hub.values():
        assert runner.error is None
        assert runner.final_model_hash == recorded
        assert [line["round"] for line in runner.ctx.store.history(task_id)] == [0, 1]
