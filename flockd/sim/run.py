"""N nodes, one process, one chain: every node's TaskMachine driven slot by slot.

A slot is one block. Each slot the simulation seals every transaction the nodes sent in
the previous slot into one block, hands every node that block's registry logs (translated
by `flockd.tasks.bridge.round_events`, as the daemon's chain feed does), its own failed
transactions, then BlockSealed; then it feeds the queued events to the nodes until none
is left. Each node's machine is driven by the daemon's adapter (`tasks/adapter.py:
TaskAdapter`), its actions carried out at once by `sim/actions.py:SimActions`: answers
are queued for the same slot, transactions signed into the next block. Docs:
docs/simulation.md.
"""

from __future__ import annotations

import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd import round as rnd
from flockd import vrf
from flockd.chain.client.registry import TaskParams
from flockd.chain.node.deploy import revert_reason
from flockd.fl.attacks import HONEST, Behaviour
from flockd.sim.actions import SimActions
from flockd.sim.chain import Sealed, SimChain, SimError
from flockd.sim.config import RoundFigures, SimConfig, SimResult
from flockd.sim.learn import Learner
from flockd.sim.ledger import Ledger, pools, stake_share
from flockd.sortition import Stakes
from flockd.tasks.adapter import TaskAdapter
from flockd.tasks.bridge import as_address, round_events
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

OnRound = Callable[[RoundFigures], None]


@dataclass
class Node:
    index: int
    key: PrivateKey
    address: bytes
    vrf_secret: bytes
    behaviour: Behaviour
    work: Worker
    adapter: TaskAdapter | None = None
    salts: int = 0

    @property
    def machine(self) -> rnd.TaskMachine | None:
        return None if self.adapter is None else self.adapter.machine

    @property
    def final(self) -> bytes | None:
        return None if self.adapter is None else self.adapter.final_model_hash

    def salt(self) -> bytes:
        """Deterministic per node and ballot, so a run is reproducible to the block hash."""
        self.salts += 1
        return keccak(b"flockd sim salt" + self.key.to_bytes() + self.salts.to_bytes(8, "big"))


class Simulation:
    def __init__(self, cfg: SimConfig, on_round: OnRound | None = None) -> None:
        self.cfg = cfg
        self.on_round = on_round
        self.spec = TaskSpec(
            recipe=cfg.recipe, config=dict(cfg.recipe_config), rule=cfg.rule,
            partition=cfg.partition, num_nodes=cfg.nodes, seed=cfg.seed, root_rows=cfg.root_rows,
        )
        self.learner = Learner(self.spec, cfg.score_sample, cfg.vote_scoring)
        self.key_seed = cfg.seed if cfg.key_seed is None else cfg.key_seed
        keys = [PrivateKey(keccak(b"flockd sim key %d/%d" % (self.key_seed, i))) for i in range(cfg.nodes)]
        # The attackers' cartel: every malicious node (only a colluding voter uses it).
        colluders = frozenset(bytes(keys[i].public_key.to_canonical_address()) for i in cfg.malicious)
        self.nodes = [self._node(i, key, colluders) for i, key in enumerate(keys)]
        self.chain = SimChain([n.key for n in self.nodes], cfg.stake)
        self.init_hash = self.learner.initial_model(cfg.creator_steps)
        self.params = TaskParams(
            recipe=cfg.recipe, recipe_hash=self.spec.spec_hash, model_init_hash=self.init_hash,
            rounds=cfg.rounds, min_participants=cfg.nodes, min_stake=cfg.stake_unit,
            stake_unit=cfg.stake_unit, expected_proposers=cfg.expected_proposers,
            max_proposals=cfg.max_proposals, propose_blocks=cfg.propose_blocks,
            commit_blocks=cfg.commit_blocks, reveal_blocks=cfg.reveal_blocks, reward_pool=0,
            vote_mode=0 if cfg.vote_mode == "per-proposal" else 1,
        )
        self.result = SimResult(cfg.to_json(), self.learner.evaluate(self.init_hash)["accuracy"])
        self.queue: deque[tuple[Node, rnd.Event]] = deque()  # events for nodes, this slot
        index_of = {n.address: n.index for n in self.nodes}
        self.ledger = Ledger(index_of, cfg.malicious, self.learner.evaluate, self._round_done)
        self._total_stake: tuple[int, int] | None = None  # (block, total stake)
        # Stakes read from the chain; dropped when a log says one changed (slash, reward).
        self._stake_of: dict[bytes, int] = {}

    def _node(self, i: int, key: PrivateKey, colluders: frozenset[bytes]) -> Node:
        behaviour = self.cfg.behaviours.get(i, HONEST)
        vrf_secret = keccak(b"flockd sim vrf %d/%d" % (self.key_seed, i))
        address = bytes(key.public_key.to_canonical_address())
        return Node(i, key, address, vrf_secret, behaviour, self.learner.worker(i, behaviour, colluders))

    # -- the run -------------------------------------------------------------------------

    def run(self) -> SimResult:
        started = time.perf_counter()
        joiners = [(n.key, vrf.public_key(n.vrf_secret)) for n in self.nodes]
        self.task_id = self.chain.create_task(self.nodes[0].key, self.params, joiners, self.cfg.stake)
        participants = tuple(bytes.fromhex(a[2:]) for a in self.chain.view("get_participants", self.task_id))
        self.participants = participants
        self.result.initial_malicious_stake_share = self._malicious_stake_share()
        for node in self.nodes:
            config = rnd.TaskConfig(
                task_id=self.task_id, me=node.address, participants=participants, rounds=self.cfg.rounds,
                propose_blocks=self.cfg.propose_blocks, commit_blocks=self.cfg.commit_blocks,
                reveal_blocks=self.cfg.reveal_blocks, max_proposals=self.cfg.max_proposals,
                vote_mode=rnd.VoteMode(self.params.vote_mode), model_init_hash=self.init_hash,
            )
            node.adapter = TaskAdapter(config, node.salt, SimActions(self, node))
            self.queue.append((node, rnd.ModelReady(-1, self.init_hash)))
        first = self.chain.head + 1
        per_round = self.cfg.propose_blocks + self.cfg.commit_blocks + self.cfg.reveal_blocks + 8
        limit = first + self.cfg.rounds * per_round + 16
        while not all(n.final is not None for n in self.nodes):
            if self.chain.head >= limit:
                raise SimError(f"the task stalled: not finished after {limit - first} blocks")
            self._slot(self.chain.seal())
        self.result.blocks = self.chain.head - first + 1
        self._finish()
        self.result.wall_seconds = round(time.perf_counter() - started, 3)
        return self.result

    def _slot(self, block: Sealed) -> None:
        failed: dict[bytes, list[rnd.Event]] = defaultdict(list)
        self.result.max_block_gas = max(self.result.max_block_gas, block.gas_used)
        for tag, tx in block.results:
            self.result.transactions += 1
            if tag is None:
                continue  # start_task
            address, r, kind = tag
            self.ledger.gas(r, tx.gas_used)
            if not tx.ok:
                self.result.reverted += 1
                failed[address].append(rnd.TxFailed(r, kind, revert_reason(tx.computation), reverted=True))
        events: list[rnd.Event] = []
        for name, args in block.logs:
            if args.get("task_id") != self.task_id:
                continue
            opened = self.chain.block_hash(args["open_block"]) if name == "RoundOpened" else None
            self.ledger.log(name, args, block.number)
            if name in ("Slashed", "Rewarded"):  # this participant's stake changed
                self._stake_of.pop(as_address(args["participant"]), None)
            events.extend(round_events(name, args, opened))
        for node in self.nodes:
            for event in [*events, *failed.get(node.address, ()), rnd.BlockSealed(block.number)]:
                self.queue.append((node, event))
        self._drain()

    def _drain(self) -> None:
        queue = self.queue
        while queue:
            node, event = queue.popleft()
            assert node.adapter is not None
            if node.adapter.handle(event) is not None:  # refused, as the daemon's runner does
                self.result.refused_events += 1

    def stakes(self, node: Node) -> Stakes:
        """What the runner reads for an election (get_participant, get_state), from the chain."""
        head = self.chain.head
        if self._total_stake is None or self._total_stake[0] != head:
            self._total_stake = (head, int(self.chain.view("get_state", self.task_id)[3]))
        if node.address not in self._stake_of:
            self._stake_of[node.address] = int(self.chain.view("get_participant", self.task_id, node.address)[2])
        total, unit = self._total_stake[1], self.params.stake_unit
        return Stakes(self._stake_of[node.address], total, unit, self.params.expected_proposers)

    def _round_done(self, figures: RoundFigures) -> None:
        figures.malicious_stake_share = self._malicious_stake_share()
        self.result.rounds.append(figures)
        if self.on_round is not None:
            self.on_round(figures)

    def _malicious_stake_share(self) -> float | None:
        if not self.cfg.malicious:
            return None
        cartel = [self.nodes[i].address for i in self.cfg.malicious]
        return stake_share(self.chain, self.task_id, cartel, self.participants)

    def _finish(self) -> None:
        last = self.cfg.rounds - 1
        chain_hash = bytes(self.chain.view("get_round", self.task_id, last)[8])
        for node in self.nodes:
            assert node.adapter is not None
            if node.final != chain_hash or node.adapter.machine.model_hash != chain_hash:
                raise SimError(f"node {node.index} finished on {(node.final or b'').hex()}, "
                               f"the chain recorded {chain_hash.hex()}")
        held = pools(self.chain, self.task_id, [node.address for node in self.nodes])
        self.result.final_stakes = {node.index: held[node.address][0] for node in self.nodes}
        metrics = self.learner.evaluate(chain_hash)
        self.result.final_accuracy, self.result.final_loss = metrics["accuracy"], metrics["loss"]
        self.result.final_model_hash = self.result.chain_model_hash = "0x" + chain_hash.hex()


def run_simulation(cfg: SimConfig, on_round: OnRound | None = None) -> SimResult:
    """Run the task to its end; raises SimError unless every node's TaskMachine finished on
    the model hash the chain recorded."""
    return Simulation(cfg, on_round).run()
