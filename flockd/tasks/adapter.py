"""The one adapter around a task's round machine, shared by the daemon and the simulation.

`TaskAdapter` owns one node's `TaskMachine`: it feeds it events, refuses what the machine
refuses (and says why), and hands every action the machine returns to an `ActionHost`,
the typed seam behind which a host carries actions out. Transactions are translated
here (`bridge.transaction`), the proposers of a scoring are looked up here, and the
task's final model is kept here, so the daemon and `flockd.sim` do all of that the same
way. What differs is only how the work is carried:

    daemon (`tasks/executor.py`)   trio tasks: worker threads, libp2p, the TaskChain seam,
                                   answers posted to the runner's inbox later
    simulation (`sim/actions.py`)  computed at once; answers queued for the same slot;
                                   transactions signed into the next block

Synchronous and free of I/O, so the simulation stays deterministic and fast. A host's
method starts the work and returns; its answer (an event) comes back through
`TaskAdapter.handle`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from typing import Any

from flockd import round as rnd
from flockd.tasks.bridge import Submission, transaction

Call = tuple[rnd.TxKind, str, tuple[Any, ...]]  # (kind, registry function, args after task and round)


class ActionHost(ABC):
    """How a node carries out its round machine's actions. Every answer named below is
    an event for `TaskAdapter.handle`; a documented failure is answered with the
    failure event the action names (TrainingFailed, AggregateFailed, DeltaFetchFailed,
    ModelFetchFailed, TxFailed)."""

    @abstractmethod
    def elect(self, action: rnd.RunElection) -> None:
        """Read this node's stake and the task's, draw -> ElectionDone."""

    @abstractmethod
    def train(self, action: rnd.StartTraining) -> None:
        """-> TrainingDone, or TrainingFailed."""

    @abstractmethod
    def push_delta(self, action: rnd.PushDelta) -> None:
        """Send the delta to every other participant; no answer."""

    @abstractmethod
    def fetch_delta(self, action: rnd.FetchDelta) -> None:
        """-> DeltaReceived, or DeltaFetchFailed."""

    @abstractmethod
    def score(self, action: rnd.ScoreProposals, proposers: tuple[bytes, ...]) -> None:
        """Score ``action.deltas`` (proposed by ``proposers``, in the same order)
        -> ScoresReady."""

    @abstractmethod
    def aggregate(self, action: rnd.Aggregate) -> None:
        """-> ModelReady, or AggregateFailed."""

    @abstractmethod
    def fetch_model(self, action: rnd.FetchModel) -> None:
        """-> ModelReady, or ModelFetchFailed."""

    @abstractmethod
    def commit(self, action: rnd.SubmitCommit, call: Call) -> None:
        """Keep the ballot (votes and salt) where a restarted node finds it, then send
        ``call`` as `transact` does."""

    @abstractmethod
    def transact(self, action: Submission, call: Call) -> None:
        """Send registry call ``call`` for ``action.round``; a failure -> TxFailed."""

    @abstractmethod
    def delta_rejected(self, action: rnd.DeltaRejected) -> None:
        """A peer's delta was refused; no answer."""

    @abstractmethod
    def round_complete(self, action: rnd.RoundComplete) -> None:
        """The round's model is held and recorded (its history line); no answer."""


class TaskAdapter:
    """One node's TaskMachine and the host that carries out its actions."""

    def __init__(self, config: rnd.TaskConfig, salt_source: rnd.SaltSource, host: ActionHost) -> None:
        self.config = config
        self.salt_source = salt_source
        self.host = host
        self.machine = rnd.TaskMachine(config, salt_source)
        self.final_model_hash: bytes | None = None
        self._routes: dict[type[Any], Callable[[Any], None]] = {
            rnd.RunElection: host.elect,
            rnd.StartTraining: host.train,
            rnd.PushDelta: host.push_delta,
            rnd.FetchDelta: host.fetch_delta,
            rnd.ScoreProposals: self._score,
            rnd.Aggregate: host.aggregate,
            rnd.FetchModel: host.fetch_model,
            rnd.SubmitCommit: self._commit,
            rnd.SubmitPropose: self._transact,
            rnd.SubmitDecline: self._transact,
            rnd.SubmitReveal: self._transact,
            rnd.SubmitFinalise: self._transact,
            rnd.SubmitRecordModel: self._transact,
            rnd.DeltaRejected: host.delta_rejected,
            rnd.RoundComplete: host.round_complete,
            rnd.TaskComplete: self._task_complete,
        }

    @property
    def finished(self) -> bool:
        return self.machine.finished

    def handle(self, event: rnd.Event) -> rnd.RoundError | None:
        """Feed ``event`` and carry out what the machine answers. An event the machine
        refuses changes nothing and is returned (a ConflictingEvent means the chain
        contradicts what the machine was told: the caller rebuilds)."""
        try:
            actions = self.machine.handle(event)
        except rnd.RoundError as exc:
            return exc
        self.dispatch(actions)
        return None

    def replace(self, machine: rnd.TaskMachine, actions: Iterable[rnd.Action]) -> None:
        """Go on with ``machine``, replayed (`TaskMachine.replay`) at a start, restart or
        reorg, and carry out what its replay asked for."""
        self.machine = machine
        self.dispatch(actions)

    def dispatch(self, actions: Iterable[rnd.Action]) -> None:
        for action in actions:
            route = self._routes.get(type(action))
            if route is None:
                raise TypeError(f"no route for {type(action).__name__}")
            route(action)

    def _score(self, action: rnd.ScoreProposals) -> None:
        # The deltas are the first proposals in on-chain order (more may land meanwhile).
        proposers = self.machine.proposers(action.round)[: len(action.deltas)]
        self.host.score(action, proposers)

    def _commit(self, action: rnd.SubmitCommit) -> None:
        self.host.commit(action, transaction(action))

    def _transact(self, action: Submission) -> None:
        self.host.transact(action, transaction(action))

    def _task_complete(self, action: rnd.TaskComplete) -> None:
        self.final_model_hash = action.model_hash
