"""The chaos plan played against live daemons while the task runs, and what it did.

`ChaosDriver.tick` is called at every progress poll: it tells the scheduler which round
the task is in, carries out what it says (kill -9, restart, `net_isolate`), notices when
a restarted daemon answers again and when the cut-off node has peers again, and records
every node's chain head. Nothing exposes reorgs yet, so they are counted from those
heads: a head seen during the run that is not on the final chain (node0's, which every
node must end on) was reorganised away, and a node whose heads go from such a block
back onto the final chain went through one reorg.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from flockd.testnet.chaos import ChaosScheduler, Isolate, Kill, Restart
from flockd.testnet.cluster import Cluster, ClusterError, Daemon, heads

Head = tuple[int, str]  # (number, hash)


@dataclass(frozen=True)
class ChaosEvent:
    seconds: float  # since the task started
    round: int
    kind: str  # kill | restart | back | isolate | reconnected
    node: int
    detail: str = ""


@dataclass
class ChaosDriver:
    cluster: Cluster
    scheduler: ChaosScheduler
    started: float = field(default_factory=time.monotonic)
    events: list[ChaosEvent] = field(default_factory=list)
    heads_seen: dict[int, list[Head]] = field(default_factory=dict)
    partition_seconds: list[float] = field(default_factory=list)
    _restarted: set[int] = field(default_factory=set)
    _cut_until: dict[int, float] = field(default_factory=dict)
    on_event: Callable[[ChaosEvent], None] = lambda event: None
    _bootstrap: str = ""

    def tick(self, statuses: Sequence[Mapping[str, Any] | None]) -> None:
        now = time.monotonic()
        self.scheduler.round_seen(self._round(statuses), now)
        self._watch_restarted()
        self._watch_reconnected(now)
        for action in self.scheduler.step(now):
            if isinstance(action, Kill):
                self.cluster.kill(self.cluster.daemons[action.node])
                self._record("kill", action.node, "SIGKILL")
            elif isinstance(action, Restart):
                self._restart(action.node)
            elif isinstance(action, Isolate):
                self._isolate(action.node, action.seconds, now)
        self._observe_heads()

    # -- actions ---------------------------------------------------------------------
    def _restart(self, node: int) -> None:
        if not self._bootstrap:
            self._bootstrap = self.cluster.bootstrap_addr()
        self.cluster.start_daemon(self.cluster.daemons[node], bootstrap=self._bootstrap)
        self._restarted.add(node)
        self._record("restart", node)

    def _isolate(self, node: int, seconds: float, now: float) -> None:
        try:
            reply = self.cluster.daemons[node].call("net_isolate", {"seconds": seconds})
        except Exception as exc:
            raise ClusterError(f"node{node}: net_isolate failed: {exc}") from None
        self._cut_until[node] = now + seconds
        self.partition_seconds.append(round(seconds, 1))
        self._record("isolate", node, f"{seconds:.0f}s, {reply['dropped']} peers dropped")

    def _watch_restarted(self) -> None:
        for node in sorted(self._restarted):
            try:
                self.cluster.daemons[node].call("node_info", timeout=2.0)
            except Exception:  # not up yet
                continue
            self._restarted.discard(node)
            self.scheduler.back(node)
            self._record("back", node)

    def _watch_reconnected(self, now: float) -> None:
        for node, until in list(self._cut_until.items()):
            if now < until:
                continue
            try:
                peers = self.cluster.daemons[node].call("net_peers", timeout=2.0)
            except Exception:
                continue
            if peers:
                del self._cut_until[node]
                self._record("reconnected", node, f"{now - until:.0f}s after the cut ended, {len(peers)} peers")

    def _observe_heads(self) -> None:
        for d in self.cluster.daemons:
            if not d.alive() or d.index in self._restarted:
                continue
            try:
                head = d.call("chain_head", timeout=3.0)
            except Exception:
                continue
            seen = self.heads_seen.setdefault(d.index, [])
            current = (int(head["number"]), str(head["hash"]).lower())
            if not seen or seen[-1] != current:
                seen.append(current)

    def _record(self, kind: str, node: int, detail: str = "") -> None:
        event = ChaosEvent(round(time.monotonic() - self.started, 1), self.scheduler.current_round, kind, node, detail)
        self.events.append(event)
        self.on_event(event)

    @staticmethod
    def _round(statuses: Sequence[Mapping[str, Any] | None]) -> int:
        status = statuses[0] or {}  # node0 is never killed or cut off
        value = status.get("rounds") if status.get("state") == "finished" else status.get("round")
        return value if isinstance(value, int) else -1

    # -- the end -----------------------------------------------------------------------
    def unfinished(self) -> bool:
        """A restart not answering yet, or a cut-off node not reconnected yet."""
        return bool(self._restarted or self._cut_until or self.scheduler.down)

    def settle(self, timeout: float) -> None:
        """After the task: nothing new (what had not happened yet is dropped), restarts
        carried out when due; wait until every node answers, the cut-off node has peers
        again, and every node is on one chain."""
        scheduler = self.scheduler
        scheduler.dropped_kills += len(scheduler.pending)
        scheduler.pending.clear()
        scheduler.partition_pending = None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            now = time.monotonic()
            for action in scheduler.step(now):
                if isinstance(action, Restart):
                    self._restart(action.node)
            self._watch_restarted()
            self._watch_reconnected(now)
            self._observe_heads()
            if not self.unfinished() and self.one_chain():
                return
            time.sleep(1.0)
        raise ClusterError(f"the nodes did not settle on one chain within {timeout:.0f}s after the task")

    def http_port(self, d: Daemon) -> int:
        flags = self.cluster.node_args.get(d.index, ())
        return int(flags[flags.index("--chain-http") + 1])

    def one_chain(self) -> bool:
        """Every node holds the same block at the lowest of their heads. (Equal heads are
        no test: blocks keep coming, and the nodes are asked one after another.)"""
        try:
            lowest = min(number for number, _ in heads(self.cluster.daemons))
            hashes = {canonical_hashes(self.http_port(d), [lowest]).get(lowest) for d in self.cluster.daemons}
        except Exception:  # a node not answering yet
            return False
        return len(hashes) == 1 and None not in hashes

    def summary(self, canonical: Mapping[int, str]) -> dict[str, Any]:
        """The report's chaos figures; `canonical` maps heights to the final chain's hashes."""
        kinds = [e.kind for e in self.events]
        return {
            "seed": self.scheduler.plan.seed,
            "kills": kinds.count("kill"),
            "restarts": kinds.count("restart"),
            "partitions": kinds.count("isolate"),
            "partition_seconds": self.partition_seconds,
            "kills_dropped": self.scheduler.dropped_kills,
            "affected_rounds": affected_rounds(self.events, self.scheduler.plan.rounds),
            **count_reorgs(self.heads_seen, canonical),
            "events": [asdict(e) for e in self.events],
        }


def affected_rounds(events: Sequence[ChaosEvent], rounds: int) -> list[int]:
    """Rounds (of the task's `rounds`) during which some node was down or cut off: from a
    kill to the node's `back`, from an isolation to its `reconnected` (to the end when never)."""
    last_round = rounds - 1
    opened: dict[tuple[str, int], int] = {}
    hit: set[int] = set()
    ends = {"back": "kill", "reconnected": "isolate"}
    for e in events:
        if e.kind in ("kill", "isolate"):
            opened[(e.kind, e.node)] = e.round
        elif e.kind in ends and (ends[e.kind], e.node) in opened:
            start = opened.pop((ends[e.kind], e.node))
            hit.update(range(max(start, 0), min(e.round, last_round) + 1))
    for start in opened.values():
        hit.update(range(max(start, 0), last_round + 1))
    return sorted(hit)


def count_reorgs(heads_seen: Mapping[int, Sequence[Head]], canonical: Mapping[int, str]) -> dict[str, Any]:
    """Reorgs seen from outside: a head not on the final chain was reorganised away; a node
    whose heads go from such blocks back onto the final chain went through one reorg
    (its depth: at least the span of heights of the blocks it left)."""
    orphaned: set[Head] = set()
    by_node: dict[str, int] = {}
    deepest = 0
    for node, seen in sorted(heads_seen.items()):
        count, run = 0, []
        for number, block_hash in seen:
            final = canonical.get(number)
            if final is None:
                continue  # not looked up: neither on nor off the final chain
            if final.lower() != block_hash.lower():
                orphaned.add((number, block_hash))
                run.append(number)
            elif run:
                count += 1
                deepest = max(deepest, max(run) - min(run) + 1)
                run = []
        if count:
            by_node[f"node{node}"] = count
    return {
        "reorgs": sum(by_node.values()),
        "reorgs_by_node": by_node,
        "orphaned_heads": len(orphaned),
        "deepest_reorg_at_least": deepest,
    }


def canonical_hashes(http_port: int, numbers: Sequence[int], timeout: float = 10.0) -> dict[int, str]:
    """Block hashes of the final chain at `numbers`, read over node0's chain JSON-RPC."""
    out: dict[int, str] = {}
    for number in sorted(set(numbers)):
        body = json.dumps({"jsonrpc": "2.0", "id": number, "method": "eth_getBlockByNumber",
                           "params": [hex(number), False]}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{http_port}/", data=body, headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (127.0.0.1 only)
            block = json.loads(response.read()).get("result")
        if isinstance(block, dict) and isinstance(block.get("hash"), str):
            out[number] = block["hash"].lower()
    return out
