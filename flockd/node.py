"""The daemon: wires the services into one trio nursery, in order, and stops them in reverse.

The control socket opens first, before the costly part of a start (unlocking the keys,
importing libp2p, py-evm and eth-account, opening the chain): a client reaches the node at
once, and `node_status` says what is up. Until every service runs, the socket answers only
`node_status`, `node_stop` and `rpc_methods`; everything else is refused with
NODE_NOT_READY, so no request reaches a service that is not there yet (or no longer).

Start order behind it: p2p (so the node has an identity on the network), the chain
(embedded: sealing and sync over p2p; or a backend for an external node), the learning
tasks (they need both), then the metrics endpoint when asked. Stop order is the reverse;
the socket refuses service requests from the moment a stop begins and closes last.

A stop must not hang on work that cannot be cancelled (a worker thread training a model,
importing a block): past `stop_grace` seconds a watchdog thread ends the process. Nothing
is lost: the chain database commits whole batches only and files are replaced atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

    from flockd.arena.service import ArenaService
    from flockd.chain.client.backends import ChainBackend
    from flockd.chain.client.contract import ContractClient
    from flockd.chain.client.registry import Token
    from flockd.chain.node.service import ChainService
    from flockd.identity.keystore import Identity
    from flockd.market.service import MarketService
    from flockd.p2p.host import P2PService
    from flockd.rpc.market import MarketNamespace
    from flockd.serve.app import ServeApp, ServedModel
    from flockd.tasks.context import NodeContext
    from flockd.tasks.service import TaskService

from flockd import __version__
from flockd.config import Config
from flockd.datadir import IPC_SOCKET
from flockd.lifecycle import Service, ServiceStack
from flockd.logs import get_logger
from flockd.rpc.dispatch import Dispatcher

log = get_logger("flockd.node")

MARKET_DIR = "market"  # the listed models this node fetched (flockd.market.held)
STOP_GRACE = 10.0  # seconds an orderly stop may take before the process exits anyway
EXIT_STOP_TIMEOUT = 3  # the exit status when the watchdog had to end the process


class StopWatchdog:
    """Ends the process with EXIT_STOP_TIMEOUT when a stop, once requested, is not finished
    within `grace` seconds. Its thread starts with the node, so a request only sets an event:
    safe from a signal handler, and it fires whatever the event loop is doing."""

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self._requested = threading.Event()
        self._finished = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="flockd-stop-watchdog", daemon=True)
        self._thread.start()

    def stop_requested(self) -> None:
        self._requested.set()

    def finished(self) -> None:
        self._finished.set()
        self._requested.set()

    def _watch(self) -> None:
        self._requested.wait()
        if self._finished.wait(self.grace):
            return
        log.error("stop is taking too long: exiting without waiting for running work", grace_seconds=self.grace)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os._exit(EXIT_STOP_TIMEOUT)


class NodeStartError(Exception):
    """The node cannot start (wrong password, bad genesis, unusable listen address): one
    line for the user."""


# What the control socket answers while services start or stop.
ALWAYS_ANSWERED = frozenset({"node_status", "node_stop", "rpc_methods"})


class Node:
    # Set while the node starts (_bring_up); the control socket refuses every method that
    # reads them until then.
    identity: Identity
    address: str
    peer_id: str
    p2p: P2PService
    chain_service: ChainService | None
    chain_backend: ChainBackend
    tasks: TaskService
    arena: ArenaService
    market: MarketService

    def __init__(self, config: Config, datadir: Path, password: str) -> None:
        """Cheap: no key is unlocked and no heavy module imported before `run`."""
        from flockd.rpc.meta import RPCNamespace
        from flockd.rpc.node import NodeNamespace

        self.config = config
        self.datadir = datadir
        self.version = __version__
        self.started_at = time.time()
        self.state = "starting"  # -> running -> stopping
        self.services_up: list[str] = []
        self.start_error: str | None = None  # why the node could not start, for the CLI
        self._password = password
        # started in order, stopped in reverse one at a time (request_stop, even before entry)
        self._services = ServiceStack(self.services_up)
        self._watchdog: StopWatchdog | None = None
        self.rpc_dispatcher = Dispatcher([NodeNamespace(self)])
        self.rpc_dispatcher.add_namespace(RPCNamespace(self.rpc_dispatcher))
        self.rpc_dispatcher.restrict("the node is starting", ALWAYS_ANSWERED)
        self.metrics_bound: int | None = None  # the metrics port, once served
        self.serve_app: ServeApp | None = None  # [serve], once served: its port and counters
        self.serve_bound: int | None = None

    def _open_services(self) -> None:
        """Unlock the keys and build the services: imports and file work only, no event
        loop, so it runs in a worker thread while the control socket answers."""
        from flockd.chain.node.genesis import GenesisError, GenesisMismatch
        from flockd.identity.keystore import IdentityError, load_identity
        from flockd.p2p.abc import P2PError
        from flockd.p2p.host import P2PService
        from flockd.p2p.limits import P2PLimits

        config = self.config
        try:
            self.identity = identity = load_identity(self.datadir, self._password)
            self._password = ""  # not kept once the keys are open
            self.address = identity.address
            self.peer_id = identity.peer_id
            self.p2p = P2PService(
                identity.node_secret,
                network_id=config.node.network,
                listen=config.p2p.listen,
                bootstrap=config.p2p.bootstrap,
                limits=P2PLimits(max_peers=config.p2p.max_peers),
            )
            self._open_chain()
        except (IdentityError, P2PError, GenesisError, GenesisMismatch) as exc:
            raise NodeStartError(str(exc)) from None
        self._open_tasks()
        if config.serve.enabled:
            self._open_serve()

    def _open_serve(self) -> None:
        """Load the served models and index the knowledge folder (seconds: in this thread)."""
        from flockd.serve import service

        try:
            settings = service.settings_from_section(self.config.serve)
            listed = self._held_market_models() if settings.market else []
            self.serve_app = service.build_app(settings, self.datadir / "serve", service.task_view(self.tasks), listed)
        except service.ServeConfigError as exc:
            raise NodeStartError(f"serve: {exc}") from None

    def _held_market_models(self) -> list[ServedModel]:
        from flockd.market.held import HeldModels, served_models

        return served_models(HeldModels(self.datadir / MARKET_DIR), self.tasks.ctx.store.model_path)

    def _open_tasks(self) -> None:
        from eth_account import Account

        from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
        from flockd.chain.client.contract import ContractClient, TxPolicy
        from flockd.chain.client.registry import Registry, Token
        from flockd.fl.attacks import describe
        from flockd.store import Store
        from flockd.tasks.runner import NodeContext
        from flockd.tasks.service import TaskService

        client = ContractClient(
            self.chain_backend,
            Account.from_key(self.identity.node_secret),
            TxPolicy(confirmations=self.config.chain.confirmations, poll_interval=0.2),
        )
        chain = self.config.chain
        registry = bytes.fromhex(chain.registry[2:]) if chain.registry else TASK_REGISTRY_ADDRESS
        token = bytes.fromhex(chain.token[2:]) if chain.token else STAKE_TOKEN_ADDRESS
        context = NodeContext(
            network=self.p2p,
            registry=Registry(client, registry),
            store=Store(self.datadir / "store"),
            address=bytes(self.identity.private_key.public_key.to_canonical_address()),
            vrf_secret=self.identity.vrf_secret,
            confirmations=self.config.chain.round_confirmations,
            # On an external node the chain does not depend on our peers: a lone daemon
            # cannot have sealed what it reads there.
            min_peers=0 if self.config.chain.rpc_url else 1,
            head_synced=self.chain_service.head_synced if self.chain_service is not None else None,
            head_moved=self.chain_service.wait_head_moved if self.chain_service is not None else None,
        )
        behaviour = self.config.attack.parsed()
        if not behaviour.is_honest:  # a research tool: nobody should run one by accident
            log.warning(
                f"this node is MALICIOUS: it will {describe(behaviour)} ([attack] in config.toml)",
                behaviour=str(behaviour),
                colluders=len(self.config.attack.colluders),
            )
        self.tasks = TaskService(
            context, Token(client, token), behaviour=behaviour, colluders=self.config.attack.colluder_addresses(),
            scoring=self.config.vote.parsed(),
        )
        self._open_arena(context, Token(client, token))

    def _open_arena(self, context: NodeContext, token: Token) -> None:
        from flockd.arena.handoff import Handoff
        from flockd.arena.service import ArenaService
        from flockd.chain.client.addresses import ARENA_ADDRESS
        from flockd.chain.client.arena import Arena

        self.arena = ArenaService(context, Arena(*self._place(token.client, "Arena", ARENA_ADDRESS)), token)
        self.tasks.handoff = Handoff(self.arena)  # tasks seeded by a competition's winner

    def _place(self, client: ContractClient, name: str, genesis: bytes) -> tuple[ContractClient, bytes]:
        """The client and address for the Arena or the Market: [chain] arena/market, else genesis."""
        from flockd.chain.client.placement import place_contract

        key = name.lower()
        return place_contract(client, external=bool(self.config.chain.rpc_url), configured=getattr(self.config.chain, key),
                              genesis=genesis, name=name, key=key)

    def _open_chain(self) -> None:
        from flockd.chain.client.backends import HttpBackend, InProcessBackend

        self.chain_service: ChainService | None = None
        if self.config.chain.rpc_url:
            self.chain_backend: ChainBackend = HttpBackend(self.config.chain.rpc_url)
            return
        from flockd.chain.ethrpc.eth_http import HTTPAccess
        from flockd.chain.node import evm_caches
        from flockd.chain.node.embedded import EmbeddedChain
        from flockd.chain.node.genesis import Genesis
        from flockd.chain.node.network import GENESIS_FILE
        from flockd.chain.node.service import ChainService

        # Every daemon re-executes every block: importing was half a daemon's CPU at 32
        # daemons (docs/benchmarks.md, "32 daemons"), and these caches are exact.
        evm_caches.install(evm_caches.DAEMON_SIZES)
        genesis = Genesis.load(self.datadir / GENESIS_FILE)
        (self.datadir / "chain").mkdir(exist_ok=True)
        chain = EmbeddedChain(
            genesis,
            self.datadir / "chain" / "chain.sqlite",
            sealer_key=self.identity.private_key,
            confirmations=self.config.chain.confirmations,
        )
        self.chain_service = ChainService(
            chain,
            self.p2p,
            http_port=self.config.chain.http_port,
            http_access=HTTPAccess(tuple(self.config.chain.http_vhosts), tuple(self.config.chain.http_corsdomain)),
        )
        self.chain_backend = InProcessBackend(self.chain_service.own_api)

    # -- NodeControl (what the node_* RPC namespace needs) --------------------
    def listen_addrs(self) -> list[str]:
        return self.p2p.listen_addrs()

    def request_stop(self) -> None:
        self._services.request_stop()

    # -- lifecycle -----------------------------------------------------------
    async def run(self, *, stop_grace: float | None = None) -> None:
        """Run until SIGINT, SIGTERM or request_stop; with `stop_grace` (seconds), a stop that
        takes longer ends the process (StopWatchdog). A start that fails leaves the reason
        in `start_error` and returns."""
        self._watchdog = StopWatchdog(stop_grace) if stop_grace is not None else None
        try:
            with self._stop_on_signals():
                await self._run_services()
        finally:
            if self._watchdog is not None:
                self._watchdog.finished()

    async def _run_services(self) -> None:
        async with trio.open_nursery() as control:
            await control.start(self._serve_control_socket)
            self.services_up.append("rpc")
            try:
                async with self._services:
                    try:
                        await self._bring_up()
                        await self._services.wait_for_stop()
                    finally:
                        self._begin_stop()
            except NodeStartError as exc:
                self.start_error = str(exc)
            finally:
                control.cancel_scope.cancel()
        if self.start_error is None:
            log.info("node stopped")

    async def _bring_up(self) -> None:
        # Not cancellable: a stop requested meanwhile waits for the imports (seconds).
        await trio.to_thread.run_sync(self._open_services)
        if self._services.stop_requested:
            return
        self._add_service_namespaces()
        starts: list[tuple[str, Service]] = [("p2p", self.p2p.run)]
        if self.chain_service is not None:
            starts.append(("chain", self.chain_service.run))
        starts += [("tasks", self.tasks.run), ("arena", self.arena.run)]
        if self.config.serve.enabled:
            starts.append(("serve", self._serve_models))
        if self.config.metrics.port:
            starts.append(("metrics", self._serve_metrics))
        for name, service in starts:
            if not await self._services.start(name, service):
                return
            log.debug("service started", service=name)
        self.state = "running"
        self.rpc_dispatcher.unrestrict()
        log.info("node started", address=self.address, peer_id=self.peer_id, listen=self.listen_addrs())

    def _begin_stop(self) -> None:
        self.rpc_dispatcher.restrict("the node is stopping", ALWAYS_ANSWERED)
        if self.state == "running":
            log.info("node stopping")
        self.state = "stopping"
        if self._watchdog is not None:
            self._watchdog.stop_requested()

    async def _serve_control_socket(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from flockd.rpc.server import serve_ipc

        await serve_ipc(
            self.datadir / IPC_SOCKET,
            self.rpc_dispatcher,
            max_request_bytes=self.config.rpc.max_request_bytes,
            max_clients=self.config.rpc.max_clients,
            task_status=task_status,
        )

    async def _serve_metrics(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from flockd.metrics import serve_metrics

        async with trio.open_nursery() as nursery:
            self.metrics_bound = await nursery.start(
                partial(serve_metrics, self.config.metrics.port, self, confirmations=self.config.chain.confirmations)
            )
            task_status.started()

    async def _serve_models(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from flockd.asgi import serve_asgi

        assert self.serve_app is not None  # built by _open_serve
        serve = self.config.serve
        async with trio.open_nursery() as nursery:
            self.serve_bound = await nursery.start(partial(serve_asgi, self.serve_app, serve.port, host=serve.host))
            task_status.started()

    def rpc_error_counts(self) -> dict[tuple[str, int], int]:
        """Error replies by (endpoint, code): the control socket's and the eth endpoint's."""
        counts = {("control", code): n for code, n in self.rpc_dispatcher.error_counts.items()}
        if self.chain_service is not None:
            counts.update({("eth", code): n for code, n in self.chain_service.api.error_counts.items()})
        return counts

    def _add_service_namespaces(self) -> None:
        from flockd.rpc.account import AccountNamespace
        from flockd.rpc.arena import ArenaNamespace
        from flockd.rpc.chain import ChainNamespace
        from flockd.rpc.net import NetNamespace
        from flockd.rpc.rewards import RewardsNamespace
        from flockd.rpc.stake import StakeNamespace
        from flockd.rpc.task import ModelNamespace, RoundNamespace, TaskNamespace

        for namespace in (
            NetNamespace(self.p2p),
            ChainNamespace(self.chain_backend, self.chain_service, confirmations=self.config.chain.confirmations),
            TaskNamespace(self.tasks, self.config.policy),
            RoundNamespace(self.tasks),
            ModelNamespace(self.tasks, self.datadir / "exports"),
            AccountNamespace(self.tasks.token),
            ArenaNamespace(self.arena),
            StakeNamespace(self.tasks.registry, self.tasks.token, self.arena.arena, self.arena.counters),
            RewardsNamespace(self.arena.arena, self.arena.counters),
        ):
            self.rpc_dispatcher.add_namespace(namespace)
        self.rpc_dispatcher.add_namespace(self._market_namespace())
        if self.serve_app is not None:
            from flockd.serve.rpc import ServeNamespace
            from flockd.serve.service import INDEX_FILE

            index_path = self.datadir / "serve" / INDEX_FILE
            self.rpc_dispatcher.add_namespace(ServeNamespace(self.serve_app, lambda: self.serve_bound, index_path))
        if self.chain_service is not None:  # votes exist on the embedded chain only
            from flockd.rpc.authority import AuthorityNamespace

            self.rpc_dispatcher.add_namespace(AuthorityNamespace(self.chain_service.chain, self.tasks.token.client))

    def _market_namespace(self) -> MarketNamespace:
        from flockd.chain.client.addresses import MARKET_ADDRESS
        from flockd.chain.client.market import Market
        from flockd.market.held import HeldModels
        from flockd.market.service import MarketService
        from flockd.rpc.market import MarketNamespace

        market = Market(*self._place(self.tasks.registry.client, "Market", MARKET_ADDRESS))
        self.market = MarketService(market, self.tasks, HeldModels(self.datadir / MARKET_DIR), lambda: self.serve_app)
        if self.serve_app is not None:  # the page's catalogue of every listing on chain
            from flockd.market.catalogue import attach_catalogue

            attach_catalogue(self.serve_app, self.market, self.arena.arena)
        return MarketNamespace(self.market)

    @contextlib.contextmanager
    def _stop_on_signals(self) -> Iterator[None]:
        # A plain signal handler, not trio.open_signal_receiver: it runs even while the event
        # loop is stuck in synchronous code, and starts the watchdog's clock at once.
        token = trio.lowlevel.current_trio_token()

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if self._watchdog is not None:
                self._watchdog.stop_requested()
            token.run_sync_soon(self._stop_by_signal, signum)

        previous = {signum: signal.signal(signum, on_signal) for signum in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)

    def _stop_by_signal(self, signum: int) -> None:
        log.info("signal received", signal=signal.Signals(signum).name)
        self.request_stop()
