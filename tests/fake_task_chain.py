"""Test doubles for the task adapter's seams (not the real thing, and never presented as
it): a scripted chain behind `flockd.tasks.abc.TaskChain`, a network of scripted peers
behind `P2PNetwork`, and a worker whose learning is arithmetic.

`ScriptedChain` keeps blocks (number -> hash, logs) that the test seals one at a time.
A transaction the runner sends is recorded and its log lands in the next sealed block,
as the registry would log it. `fork(at)` drops every block from `at` on and seals the
next ones on another branch (other hashes): a reorg.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from eth_utils import keccak

from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import MalformedDelta, NonFiniteDelta
from flockd.fl.tensors import Tensors
from flockd.p2p.abc import GossipHandler, P2PNetwork, PeerInfo
from flockd.store import Store
from flockd.tasks.abc import ChainReadFailed, RoundStart, TaskChain, TaskLog, TxReverted
from flockd.tasks.exchange import DELTA_KIND, FETCH_KIND, decode_fetch, decode_push


@dataclass
class Sent:
    fn: str
    task_id: int
    round: int
    args: tuple[Any, ...]


@dataclass
class ScriptedChain(TaskChain):
    me: bytes
    task_id: int = 1
    stake: tuple[int, int] = (0, 300)  # (ours, total): no stake units, so never elected
    blocks: list[tuple[bytes, list[tuple[str, dict[str, Any]]]]] = field(default_factory=list)
    pending: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    sent: list[Sent] = field(default_factory=list)
    reverts: dict[str, str] = field(default_factory=dict)  # fn -> revert reason
    branch: int = 0
    log_scans: list[tuple[int, int]] = field(default_factory=list)
    proposals: dict[int, int] = field(default_factory=dict)  # round -> proposals so far
    down: bool = False  # every read fails, as a node that does not answer
    failed_reads: int = 0

    def __post_init__(self) -> None:
        self.blocks.append((keccak(b"genesis"), []))

    # -- the test's side -------------------------------------------------------------------

    @property
    def height(self) -> int:
        return len(self.blocks) - 1

    def seal(self, *logs: tuple[str, dict[str, Any]]) -> int:
        number = len(self.blocks)
        digest = keccak(b"branch %d block %d" % (self.branch, number))
        self.blocks.append((digest, [*self.pending, *logs]))
        self.pending = []
        return number

    def seal_until(self, number: int) -> None:
        while self.height < number:
            self.seal()

    def fork(self, at: int) -> None:
        del self.blocks[at:]
        self.pending = []
        self.branch += 1

    def log(self, name: str, r: int, **args: Any) -> tuple[str, dict[str, Any]]:
        return name, {"task_id": self.task_id, "round": r, **args}

    def open_round(self, r: int, *also: tuple[str, dict[str, Any]]) -> int:
        number = len(self.blocks)
        return self.seal(*also, self.log("RoundOpened", r, open_block=number))

    def hash_of(self, number: int) -> bytes:
        return self.blocks[number][0]

    def sent_fns(self, r: int | None = None) -> list[str]:
        return [s.fn for s in self.sent if r is None or s.round == r]

    # -- TaskChain -------------------------------------------------------------------------

    async def head(self) -> int:
        if self.down:
            self.failed_reads += 1
            raise ChainReadFailed("connection refused")
        return self.height

    async def block_hash(self, number: int) -> bytes | None:
        return self.blocks[number][0] if 0 <= number < len(self.blocks) else None

    async def task_logs(self, task_id: int, first: int, last: int) -> list[TaskLog]:
        self.log_scans.append((first, last))
        out = []
        for number in range(first, min(last, self.height) + 1):
            digest, logs = self.blocks[number]
            out += [TaskLog(name, args, number, digest) for name, args in logs if args["task_id"] == task_id]
        return out

    async def round_start(self, task_id: int, round_number: int | None, at_block: int) -> RoundStart:
        opened: dict[int, int] = {}
        for number in range(min(at_block, self.height) + 1):
            for name, args in self.blocks[number][1]:
                if name == "RoundOpened" and args["task_id"] == task_id:
                    opened[args["round"]] = args["open_block"]
        current = max(opened, default=0)
        return RoundStart(current, opened.get(current if round_number is None else round_number))

    async def stakes(self, task_id: int, who: bytes) -> tuple[int, int]:
        return self.stake

    async def transact(self, fn: str, task_id: int, round_number: int, *args: Any) -> int:
        self.sent.append(Sent(fn, task_id, round_number, args))
        if fn in self.reverts:
            raise TxReverted(self.reverts[fn])
        me = "0x" + self.me.hex()
        if fn == "decline":
            self.pending.append(self.log("Declined", round_number, participant=me))
        elif fn == "propose":
            index = self.proposals.get(round_number, 0)
            self.proposals[round_number] = index + 1
            self.pending.append(self.log("Proposed", round_number, proposer=me, index=index, delta_hash=args[0]))
        elif fn == "commit_vote":
            self.pending.append(self.log("VoteCommitted", round_number, voter=me, digest=args[0]))
        elif fn == "reveal_vote":
            self.pending.append(self.log("VoteRevealed", round_number, voter=me, votes=list(args[0])))
        elif fn == "record_model":
            self.pending.append(self.log("ModelRecorded", round_number, model_hash=args[0]))
        return 21_000


class BlobOnlyPeers(P2PNetwork):
    """A P2PNetwork for adapter tests: blobs and penalties only (no gossip, no dialing)."""

    def __init__(self) -> None:
        self.penalties: list[tuple[str, str]] = []  # (peer or address, reason)

    def listen_addrs(self) -> list[str]:
        return []

    async def connect(self, multiaddr: str) -> str:
        raise NotImplementedError

    async def publish(self, topic: str, kind: str, payload: object) -> None:
        raise NotImplementedError

    def subscribe(self, topic: str, handler: GossipHandler) -> None:
        raise NotImplementedError

    def handle_blobs(self, kind: str, handler: Any, *, max_size: int) -> None:
        raise NotImplementedError

    def penalize_peer(self, peer_id: str, points: float, reason: str) -> None:
        self.penalties.append((peer_id, reason))

    def penalize_sender(self, address: str, points: float, reason: str) -> None:
        self.penalties.append((address, reason))


class ScriptedPeers(BlobOnlyPeers):
    """Peers by address, each answering fetches from its own Store (or withholding)."""

    def __init__(self) -> None:
        super().__init__()
        self.stores: dict[bytes, Store] = {}
        self.online: list[bytes] = []
        self.pushes: list[tuple[bytes, bytes]] = []  # (to address, delta)

    def add(self, address: bytes, store: Store) -> None:
        self.stores[address] = store
        self.online.append(address)

    @property
    def peer_id(self) -> str:
        return "me"

    def peers(self) -> list[PeerInfo]:
        return [PeerInfo(_peer_id(a), "0x" + a.hex(), [], "outbound", None) for a in self.online]

    async def send_blob(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        address = bytes.fromhex(peer_id[5:])
        if kind == DELTA_KIND:
            self.pushes.append((address, decode_push(data).delta))
            return None
        assert kind == FETCH_KIND
        request = decode_fetch(data)
        store = self.stores[address]
        if request.what == "delta":
            return store.get_delta(request.digest)
        return store.get_model_bytes(request.digest)


def _peer_id(address: bytes) -> str:
    return "peer-" + address.hex()


def initial_state() -> Tensors:
    return {"w": np.zeros(4, dtype=np.float32)}


INIT_HASH = model_hash(initial_state())


class ArithmeticWork:
    """Training adds the round number to the weights; a delta's bytes say how to vote on
    it ("good"/"bad"); aggregation adds how many deltas there were. Failures on demand."""

    def __init__(self) -> None:
        self.fail_training = False
        self.fail_aggregate = False
        self.score_bug = False
        self.scored: list[tuple[bytes | None, ...]] = []

    def initial_model(self) -> Tensors:
        return initial_state()

    def train(self, base: Tensors, round_number: int) -> bytes:
        if self.fail_training:
            raise NonFiniteDelta("loss went to NaN")
        return b"good delta of round %d" % round_number

    def score(
        self, base: Tensors, deltas: Sequence[bytes | None], proposers: Sequence[bytes], whole_round: bool,
        round_number: int,
    ) -> tuple[int, ...]:
        if self.score_bug:
            raise RuntimeError("a bug in the scorer")
        self.scored.append(tuple(deltas))
        return tuple(1 if d is not None and d.startswith(b"good") else -1 for d in deltas)

    def aggregate(self, base: Tensors, deltas: Sequence[bytes]) -> Tensors:
        if self.fail_aggregate:
            raise MalformedDelta("header does not unpack")
        return {"w": base["w"] + np.float32(len(deltas))}

    def evaluate_test(self, state: Tensors) -> dict[str, float]:
        return {"accuracy": 0.5, "loss": 1.0}
