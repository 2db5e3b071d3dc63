"""The simulation's ActionHost: one node's actions carried out at once, in process.

The node's round machine is driven by the daemon's own adapter (`flockd.tasks.adapter.
TaskAdapter`: the same routing, transaction translation and scoring look-ups); only the
carrying is the simulation's. Elections, training, scoring and aggregation are computed
at once and their answers queued for the same slot; a pushed delta is queued for every
other node; a fetch is a look-up in the one content-addressed map of deltas or models
(nothing to answer when it is not there: nothing is ever lost in the simulation);
transactions are signed into the next block, whose results bring failures back as
TxFailed (`Simulation._slot`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from eth_utils import keccak

from flockd import round as rnd
from flockd.sortition import elect
from flockd.tasks.adapter import ActionHost, Call
from flockd.tasks.bridge import Submission

if TYPE_CHECKING:
    from flockd.sim.run import Node, Simulation

Emit = Callable[[tuple["Node", rnd.Event]], None]  # queue an event for a node, this slot


class SimActions(ActionHost):
    def __init__(self, sim: Simulation, node: Node) -> None:
        self.sim = sim
        self.node = node
        self.learner = sim.learner
        self.emit: Emit = sim.queue.append

    def elect(self, action: rnd.RunElection) -> None:
        election = elect(self.node.vrf_secret, action.seed, self.sim.stakes(self.node))
        self.emit((self.node, rnd.ElectionDone(action.round, election)))

    def train(self, action: rnd.StartTraining) -> None:
        delta = self.learner.train(self.node.work, action.base_model_hash, action.round)
        self.learner.deltas[keccak(delta)] = delta
        self.emit((self.node, rnd.TrainingDone(action.round, delta)))

    def push_delta(self, action: rnd.PushDelta) -> None:
        me = self.node
        for peer in self.sim.nodes:
            if peer is not me:
                self.emit((peer, rnd.DeltaReceived(action.round, me.address, action.delta, me.address)))

    def fetch_delta(self, action: rnd.FetchDelta) -> None:
        data = self.learner.deltas.get(action.delta_hash)
        if data is not None:
            self.emit((self.node, rnd.DeltaReceived(action.round, action.proposer, data, action.proposer)))

    def score(self, action: rnd.ScoreProposals, proposers: tuple[bytes, ...]) -> None:
        whole = action.mode is rnd.VoteMode.WHOLE_ROUND
        votes = self.learner.score(
            self.node.work, action.base_model_hash, action.deltas, list(proposers), whole, action.round
        )
        self.emit((self.node, rnd.ScoresReady(action.round, votes)))

    def aggregate(self, action: rnd.Aggregate) -> None:
        digest = self.learner.aggregate(action.base_model_hash, action.deltas)
        self.emit((self.node, rnd.ModelReady(action.round, digest)))

    def fetch_model(self, action: rnd.FetchModel) -> None:
        if action.model_hash in self.learner.models:
            self.emit((self.node, rnd.ModelReady(action.round, action.model_hash)))

    def commit(self, action: rnd.SubmitCommit, call: Call) -> None:
        self.transact(action, call)  # nothing to keep: a simulated node never restarts

    def transact(self, action: Submission, call: Call) -> None:
        kind, fn, args = call
        tag = (self.node.address, action.round, kind)
        self.sim.chain.send(self.node.key, fn, self.sim.task_id, action.round, *args, tag=tag)

    def delta_rejected(self, action: rnd.DeltaRejected) -> None:
        pass  # counted by nobody: the simulation's peers send only what the chain holds

    def round_complete(self, action: rnd.RoundComplete) -> None:
        pass  # the round's figures come from the chain's logs (sim/ledger.py)
