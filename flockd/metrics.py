"""Prometheus metrics on 127.0.0.1:`[metrics] port`, read from the node's state at scrape time.

One custom Collector (`NodeCollector`) turns what the services already hold into metric
families: peers, the chain head, sync state, pending transactions, each task's round, the
control socket's and the eth endpoint's errors, and every counter a service keeps
(`service.counters`, flockd.stats.Counters: reorgs, peers_banned, stream_bytes_in, ...),
each as `flockd_<name>_total{service, task}`, so a service that counts something new shows
up without editing this file.

Two figures need awaiting, so each scrape first refreshes them (bounded in time): the
chain head (through the same chain backend the contract client uses, embedded or
external) and the task events on chain (rounds finalised, proposals accepted and
rejected, votes revealed, slashes), tallied from the confirmed blocks since the last
scrape, at most MAX_SCAN_BLOCKS a scrape. Tallies are exported for the tasks this node
runs only, so nobody can grow the label set by creating tasks.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import trio
from prometheus_client import make_asgi_app
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from flockd.asgi import (
    Receive,
    Scope,
    Send,
    header_values,
    host_allowed,
    lifespan,
    respond,
    serve_asgi,
)
from flockd.logs import get_logger

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

    from flockd.chain.client.backends import ChainBackend
    from flockd.chain.node.service import ChainService
    from flockd.tasks.service import TaskService

log = get_logger("flockd.metrics")

REFRESH_TIMEOUT = 5.0  # seconds a scrape waits for the chain figures before using the last ones
MAX_SCAN_BLOCKS = 5_000  # blocks of task events tallied per scrape (a long chain catches up over scrapes)
TASK_EVENTS = ("RoundFinalised", "VoteRevealed", "Slashed")
_METRIC_NAME = re.compile(r"[a-z][a-z0-9_]*")


class PeerSource(Protocol):
    def peers(self) -> Sequence[object]: ...


class MetricsSource(Protocol):
    """What the collector reads of a node (flockd.node.Node); read-only members."""

    @property
    def p2p(self) -> PeerSource: ...

    @property
    def chain_service(self) -> ChainService | None: ...

    @property
    def chain_backend(self) -> ChainBackend: ...

    @property
    def tasks(self) -> TaskService: ...

    def rpc_error_counts(self) -> dict[tuple[str, int], int]: ...


@dataclass
class TaskTally:
    """A task's figures from its events on chain."""

    rounds_finalised: int = 0
    proposals_accepted: int = 0
    proposals_rejected: int = 0
    votes_revealed: int = 0
    slashes: int = 0

    def count(self, name: str, args: dict[str, Any]) -> None:
        if name == "RoundFinalised":
            accepted = bin(args["accepted_mask"]).count("1")
            self.rounds_finalised += 1
            self.proposals_accepted += accepted
            self.proposals_rejected += max(0, args["n_proposals"] - accepted)
        elif name == "VoteRevealed":
            self.votes_revealed += 1
        elif name == "Slashed":
            self.slashes += 1


@dataclass
class ChainFigures:
    """What a scrape awaits before collecting: the head, and task tallies up to `scanned`."""

    head: int | None = None
    scanned: int = -1  # the last block whose task events are tallied
    tallies: dict[int, TaskTally] = field(default_factory=dict)


class NodeCollector(Collector):
    def __init__(self, node: MetricsSource, confirmations: int) -> None:
        self.node = node
        self.confirmations = confirmations
        self.figures = ChainFigures()
        self._refreshing = trio.Lock()

    async def refresh(self) -> None:
        """Bring the chain figures up to date (one scrape at a time; bounded in time)."""
        async with self._refreshing:
            with trio.move_on_after(REFRESH_TIMEOUT):
                try:
                    await self._refresh_chain_figures()
                except Exception as exc:  # a scrape must answer with what it has
                    log.info("metrics: chain figures not refreshed", error=f"{type(exc).__name__}: {exc}")

    async def _refresh_chain_figures(self) -> None:
        head = int(await self.node.chain_backend.request("eth_blockNumber", []), 16)
        self.figures.head = head
        confirmed = head - self.confirmations
        first = self.figures.scanned + 1
        if confirmed < first:
            return
        last = min(confirmed, first + MAX_SCAN_BLOCKS - 1)
        for event in await self.node.tasks.registry.events(first, last, TASK_EVENTS):
            task_id = event.args.get("task_id")
            if isinstance(task_id, int):
                self.figures.tallies.setdefault(task_id, TaskTally()).count(event.name, event.args)
        self.figures.scanned = last

    def collect(self) -> Iterator[Metric]:
        yield _gauge("flockd_peers", "Connected peers.", len(self.node.p2p.peers()))
        if self.figures.head is not None:
            yield _gauge("flockd_chain_head", "The chain head's block number.", self.figures.head)
        service = self.node.chain_service
        if service is not None:
            yield _gauge("flockd_chain_syncing", "1 while catching up with peers, else 0.", int(service.syncing))
            yield _gauge(
                "flockd_chain_pending_transactions", "Transactions in this node's pool.", len(service.chain.mempool)
            )
        yield from self._task_families()
        errors = CounterMetricFamily(
            "flockd_rpc_errors", "JSON-RPC error replies, by endpoint and code.", labels=["endpoint", "code"]
        )
        for (endpoint, code), count in sorted(self.node.rpc_error_counts().items()):
            errors.add_metric([endpoint, str(code)], count)
        yield errors
        yield from self._service_counters()

    def _task_families(self) -> Iterator[Metric]:
        runners = self.node.tasks.runners
        current = GaugeMetricFamily("flockd_task_round", "The round a task is in.", labels=["task"])
        finished = GaugeMetricFamily("flockd_task_finished", "1 once a task has finished, else 0.", labels=["task"])
        tallied = {
            name: CounterMetricFamily(f"flockd_task_{name}", help_text, labels=["task"])
            for name, help_text in (
                ("rounds_finalised", "Rounds finalised on chain."),
                ("proposals_accepted", "Proposals accepted by the vote."),
                ("proposals_rejected", "Proposals rejected by the vote."),
                ("votes_revealed", "Votes revealed on chain."),
                ("slashes", "Stake slashings on chain."),
            )
        }
        for task_id in sorted(runners):
            label = [str(task_id)]
            machine = runners[task_id].machine
            if machine.current_round is not None:
                current.add_metric(label, machine.current_round)
            finished.add_metric(label, int(machine.finished))
            tally = self.figures.tallies.get(task_id, TaskTally())
            for name, family in tallied.items():
                family.add_metric(label, getattr(tally, name))
        yield current
        yield finished
        yield from tallied.values()

    def _service_counters(self) -> Iterator[Metric]:
        samples: dict[str, list[tuple[list[str], int]]] = {}
        for service, task, counters in _counting_services(self.node):
            for name, value in counters.items():
                samples.setdefault(name, []).append(([service, task], value))
        for name in sorted(samples):
            if not _METRIC_NAME.fullmatch(name) or name in _OWN_NAMES:
                continue  # not a metric name, or it would shadow one of ours
            family = CounterMetricFamily(f"flockd_{name}", f"{name} (a service's event counter).", labels=["service", "task"])
            for labels, value in samples[name]:
                family.add_metric(labels, value)
            yield family


_OWN_NAMES = frozenset({
    "peers", "chain_head", "chain_syncing", "chain_pending_transactions", "rpc_errors", "task_round",
    "task_finished", "task_rounds_finalised", "task_proposals_accepted", "task_proposals_rejected",
    "task_votes_revealed", "task_slashes",
})


def _counting_services(node: MetricsSource) -> Iterable[tuple[str, str, dict[str, int]]]:
    """(service label, task label, counter snapshot) for every service that keeps counters."""
    # [serve] is optional: a node without it has no serve_app (None); the market and the
    # arena exist once the chain client is open.
    services: tuple[tuple[str, object], ...] = (
        ("p2p", node.p2p), ("chain", node.chain_service), ("tasks", node.tasks),
        ("serve", getattr(node, "serve_app", None)), ("market", getattr(node, "market", None)),
        ("arena", getattr(node, "arena", None)),
    )
    for label, service in services:
        counters = getattr(service, "counters", None)
        if counters is not None:
            yield label, "", counters.snapshot()
    for task_id, runner in sorted(node.tasks.runners.items()):
        counters = getattr(runner, "counters", None)
        if counters is not None:
            yield "runner", str(task_id), counters.snapshot()


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


class MetricsApp:
    """The ASGI app: GET only, local Host names only, then prometheus_client's exposition."""

    def __init__(self, collector: NodeCollector) -> None:
        self.collector = collector
        registry = CollectorRegistry(auto_describe=False)
        registry.register(collector)
        self._exposition = make_asgi_app(registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        hosts = header_values(scope, b"host")
        if len(hosts) != 1 or not host_allowed(hosts[0].decode("latin-1"), ("localhost",)):
            await respond(send, 403, b"invalid host specified\n")
            return
        if scope["method"] != "GET":
            await respond(send, 405, b"GET only\n", [(b"allow", b"GET")])
            return
        await self.collector.refresh()
        await self._exposition(scope, receive, send)


async def serve_metrics(
    port: int,
    node: MetricsSource,
    *,
    confirmations: int,
    task_status: TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve until cancelled; reports the bound port (useful with port=0)."""
    app = MetricsApp(NodeCollector(node, confirmations))
    async with trio.open_nursery() as nursery:
        bound: int = await nursery.start(serve_asgi, app, port)  # type: ignore[arg-type]
        log.info("metrics listening", url=f"http://127.0.0.1:{bound}/metrics")
        task_status.started(bound)
