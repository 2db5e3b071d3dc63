"""Admitting delta pushes (`fl.delta.1`) before they cost this node anything.

A push is the only way a peer can make a node hold a model-sized buffer it did not ask
for, so the checks run cheapest first, before the delta is hashed or queued:

1. the blob layer refuses a push longer than the largest delta any running task accepts;
2. the task is one this node runs, and the sender is one of its participants (not us);
3. the sender pushes its own delta (a relay of another's goes by fetch);
4. the delta fits the task's model (`max_delta_bytes` of its layout);
5. the round is the node's current one or the next (a push can outrun our chain view);
6. per round, at most one push per sender and `per_round` in all, and the bytes admitted
   over the two rounds held stay within `2 * per_round * max_delta`.

Only then is the delta hashed, once, in a worker thread, and handed to the round machine
with its digest. A refused push is counted and dropped; an honest proposer's delta that
was refused here is fetched once its proposal lands.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import trio

from flockd import round as rnd
from flockd.identity.peerid import address_from_peer_id
from flockd.logs import get_logger
from flockd.p2p.abc import P2PNetwork
from flockd.round.base import delta_hash
from flockd.stats import Counters
from flockd.tasks.exchange import DELTA_KIND, PUSH_OVERHEAD, DeltaPush, ExchangeError, decode_push

log = get_logger("flockd.tasks")


class PushRefused(ExchangeError):
    """A well-formed push this node will not take (wrong sender, size, round, or too many)."""


@dataclass
class TaskPushes:
    """One task's admission rules and what it admitted in the rounds it still holds."""

    participants: frozenset[bytes]
    me: bytes
    max_delta: int  # max_delta_bytes of the task's model layout
    per_round: int  # pushes admitted per round, at most one of them per sender
    current_round: Callable[[], int | None]  # the node's view of the task's round
    deliver: Callable[[rnd.DeltaReceived], None]  # to the task's round machine
    _admitted: dict[int, dict[bytes, int]] = field(default_factory=dict)  # round -> sender -> bytes

    @property
    def budget(self) -> int:
        return 2 * self.per_round * self.max_delta

    def admit(self, push: DeltaPush, sender: bytes) -> None:
        """Record the push as admitted, or raise PushRefused (nothing recorded)."""
        if sender not in self.participants or sender == self.me:
            raise PushRefused("the sender is not a participant of this task")
        if push.proposer != sender:
            raise PushRefused("a push carries the sender's own delta")
        if len(push.delta) > self.max_delta:
            raise PushRefused(f"{len(push.delta)} bytes exceed this model's {self.max_delta}")
        current = self.current_round()
        first = 0 if current is None else current
        if not first <= push.round <= first + 1:
            raise PushRefused(f"round {push.round} is outside {first}..{first + 1}")
        for old in [r for r in self._admitted if r < first]:
            del self._admitted[old]
        senders = self._admitted.setdefault(push.round, {})
        if sender in senders:
            raise PushRefused(f"already took a push from this sender in round {push.round}")
        if len(senders) >= self.per_round:
            raise PushRefused(f"round {push.round} already took {self.per_round} pushes")
        held = sum(sum(s.values()) for s in self._admitted.values())
        if held + len(push.delta) > self.budget:
            raise PushRefused("the task's push buffer is full")
        senders[sender] = len(push.delta)


class PushInbox:
    """The node's handler for `fl.delta.1`: routes each push to its task's TaskPushes, and
    keeps the blob layer's size cap at the largest push a running task accepts."""

    def __init__(self, network: P2PNetwork, counters: Counters) -> None:
        self._network = network
        self._counters = counters
        self._tasks: dict[int, TaskPushes] = {}

    def listen(self) -> None:
        self._network.handle_blob_buffers(DELTA_KIND, self.on_push, max_size=self.max_push())

    def open_task(self, task_id: int, pushes: TaskPushes) -> None:
        self._tasks[task_id] = pushes
        self.listen()

    def close_task(self, task_id: int) -> None:
        self._tasks.pop(task_id, None)
        self.listen()

    def max_push(self) -> int:
        """Zero while no task runs: every push is then refused from its header alone."""
        return max((t.max_delta + PUSH_OVERHEAD for t in self._tasks.values()), default=0)

    async def on_push(self, peer_id: str, kind: str, data: bytes | bytearray) -> None:
        try:
            push = decode_push(data)
            task = self._tasks.get(push.task_id)
            if task is None:
                raise PushRefused(f"this node runs no task {push.task_id}")
            sender = bytes.fromhex(address_from_peer_id(peer_id)[2:])
            task.admit(push, sender)
        except ExchangeError as exc:
            self._counters.incr("pushes_refused")
            log.info("delta push refused", peer=peer_id, reason=str(exc))
            return
        self._counters.incr("pushes_admitted")
        digest = await trio.to_thread.run_sync(delta_hash, push.delta)
        task.deliver(rnd.DeltaReceived(push.round, push.proposer, push.delta, sender, digest))
