"""The chaos testnet's plan and scheduler: pure logic, no processes, no clock of its own.

`plan_chaos` draws, from one seed, which non-bootstrap daemons to kill -9 in which round,
how long after the round began and for how long, and which node to cut off the mesh in
which round. `ChaosScheduler` turns that plan into actions as rounds begin and time
passes (the caller feeds both in), and keeps the rule the plan cannot keep by itself:
never more than a third of the nodes down or cut off at once, and never the bootstrap
node (the others find each other again through it). A kill that would break the rule
waits for a restart; one still waiting when its round is over is dropped and counted.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

BOOTSTRAP = 0
KILL_DELAY = (2.0, 15.0)  # seconds after its round began
DOWN_FOR = (4.0, 20.0)  # seconds a killed daemon stays down before its restart
PARTITION_DELAY = (2.0, 8.0)
PARTITION_MIN_SECONDS = 60.0  # rounds took 25-80 s on a loaded 2-core machine
PARTITION_ROUNDS = 1.5  # a partition lasts this many of the longest round seen so far


@dataclass(frozen=True)
class PlannedKill:
    round: int
    delay: float
    node: int
    down_for: float


@dataclass(frozen=True)
class PlannedPartition:
    round: int
    delay: float
    node: int


@dataclass(frozen=True)
class ChaosPlan:
    seed: int
    nodes: int
    rounds: int
    kills: tuple[PlannedKill, ...]
    partition: PlannedPartition | None


@dataclass(frozen=True)
class Kill:
    node: int


@dataclass(frozen=True)
class Restart:
    node: int


@dataclass(frozen=True)
class Isolate:
    node: int
    seconds: float


Action = Kill | Restart | Isolate


def max_down(nodes: int) -> int:
    """How many nodes may be down or cut off at once: a third, rounded down."""
    return nodes // 3


def plan_chaos(nodes: int, rounds: int, seed: int) -> ChaosPlan:
    """Up to `max_down(nodes)` kills per round, and one partition in a middle round: after
    two whole rounds (so its length can go by the rounds seen) and, where there are
    enough, before the last two (so the task finishes with the node back)."""
    rng = random.Random(f"flockd-chaos:{seed}:{nodes}:{rounds}")
    others = list(range(1, nodes))
    cap = max_down(nodes)
    kills: list[PlannedKill] = []
    for r in range(rounds):
        count = rng.randint(0, cap) if cap else 0
        for node in rng.sample(others, count):
            kills.append(PlannedKill(r, round(rng.uniform(*KILL_DELAY), 1), node, round(rng.uniform(*DOWN_FOR), 1)))
    partition = None
    if cap and rounds >= 2:
        first = min(2, rounds - 1)
        partition = PlannedPartition(
            rng.randint(first, max(first, rounds - 3)), round(rng.uniform(*PARTITION_DELAY), 1), rng.choice(others),
        )
    return ChaosPlan(seed, nodes, rounds, tuple(sorted(kills, key=lambda k: (k.round, k.delay))), partition)


@dataclass
class ChaosScheduler:
    plan: ChaosPlan
    pending: list[PlannedKill] = field(init=False)
    partition_pending: PlannedPartition | None = field(init=False)
    down: dict[int, float] = field(default_factory=dict)  # node -> when its restart is due
    restarting: set[int] = field(default_factory=set)  # restarted, not answering yet
    isolated: dict[int, float] = field(default_factory=dict)  # node -> when it is back
    round_started: dict[int, float] = field(default_factory=dict)
    current_round: int = -1
    dropped_kills: int = 0

    def __post_init__(self) -> None:
        self.pending = list(self.plan.kills)
        self.partition_pending = self.plan.partition

    # -- what the caller tells us ----------------------------------------------------
    def round_seen(self, round_: int, now: float) -> None:
        """The task is in `round_` (0-based; the round count once it finished) as of `now`."""
        if round_ > self.current_round:
            self.current_round = round_
            self.round_started.setdefault(round_, now)

    def back(self, node: int) -> None:
        """A restarted node answers again: it no longer counts as down."""
        self.down.pop(node, None)
        self.restarting.discard(node)

    # -- what to do now ----------------------------------------------------------------
    def unavailable(self, now: float) -> set[int]:
        return set(self.down) | {n for n, until in self.isolated.items() if now < until}

    def longest_round(self) -> float:
        starts = sorted(self.round_started.items())
        spans = [b[1] - a[1] for a, b in zip(starts, starts[1:], strict=False)]
        return max(spans, default=0.0)

    def partition_seconds(self) -> float:
        return max(PARTITION_MIN_SECONDS, PARTITION_ROUNDS * self.longest_round())

    def step(self, now: float) -> list[Action]:
        actions: list[Action] = []
        for node, due in sorted(self.down.items()):
            if now >= due and node not in self.restarting:
                self.restarting.add(node)
                actions.append(Restart(node))
        self.isolated = {n: until for n, until in self.isolated.items() if now < until}
        partition = self.partition_pending
        if partition is not None and self._due(partition.round, partition.delay, now):
            cut = self._target(partition.node, now)
            if cut is not None:
                seconds = self.partition_seconds()
                self.isolated[cut] = now + seconds
                self.partition_pending = None
                actions.append(Isolate(cut, seconds))
        for kill in list(self.pending):
            if kill.round < self.current_round:  # its round is over: too late to matter
                self.pending.remove(kill)
                self.dropped_kills += 1
            elif self._due(kill.round, kill.delay, now):
                victim = self._target(kill.node, now)
                if victim is not None:
                    self.pending.remove(kill)
                    self.down[victim] = now + kill.down_for
                    actions.append(Kill(victim))
        return actions

    def _due(self, round_: int, delay: float, now: float) -> bool:
        started = self.round_started.get(round_)
        return started is not None and now >= started + delay

    def _target(self, wanted: int, now: float) -> int | None:
        """`wanted`, or failing that the next node after it that is up and connected;
        None when one more would exceed the cap."""
        out = self.unavailable(now)
        if len(out) >= max_down(self.plan.nodes):
            return None
        n = self.plan.nodes
        for step in range(n - 1):
            node = 1 + (wanted - 1 + step) % (n - 1)
            if node not in out:
                return node
        return None
