"""The daemon: wires the services into one trio nursery, in order, and stops them in reverse.

Start order: p2p (so the node has an identity on the network), the chain (embedded:
sealing and sync over p2p; or a backend for an external node), the learning tasks
(they need both), then the control socket
(so a client never reaches a node that cannot answer). Stop order is the reverse: the
socket closes first, so no request arrives at a half-stopped node.
"""

from __future__ import annotations

import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

    from flockd.chain.backends import ChainBackend
    from flockd.chain.service import ChainService

from flockd import __version__
from flockd.config import Config
from flockd.datadir import IPC_SOCKET
from flockd.identity.keystore import Identity
from flockd.logs import get_logger
from flockd.rpc.dispatch import Dispatcher

log = get_logger("flockd.node")


class Node:
    def __init__(self, config: Config, identity: Identity, datadir: Path) -> None:
        from flockd.p2p.host import P2PService
        from flockd.p2p.limits import P2PLimits

        self.config = config
        self.identity = identity
        self.datadir = datadir
        self.version = __version__
        self.address = identity.address
        self.peer_id = identity.peer_id
        self.started_at = time.time()
        self.p2p = P2PService(
            identity.node_secret,
            network_id=config.node.network,
            listen=config.p2p.listen,
            bootstrap=config.p2p.bootstrap,
            limits=P2PLimits(max_peers=config.p2p.max_peers),
        )
        self._stop = trio.Event()
        self._open_chain()
        self._open_tasks()

    def _open_tasks(self) -> None:
        from eth_account import Account

        from flockd.chain.client import ContractClient, TxPolicy
        from flockd.chain.deploy import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
        from flockd.chain.registry import Registry, Token
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
            confirmations=self.config.chain.confirmations,
        )
        behaviour = self.config.attack.parsed()
        if not behaviour.is_honest:  # a research tool: nobody should run one by accident
            log.warning(
                f"this node is MALICIOUS: it will {describe(behaviour)} ([attack] in config.toml)",
                behaviour=str(behaviour),
                colluders=len(self.config.attack.colluders),
            )
        self.tasks = TaskService(
            context, Token(client, token), behaviour=behaviour, colluders=self.config.attack.colluder_addresses()
        )

    def _open_chain(self) -> None:
        from flockd.chain.backends import HttpBackend, InProcessBackend

        self.chain_service: ChainService | None = None
        if self.config.chain.rpc_url:
            self.chain_backend: ChainBackend = HttpBackend(self.config.chain.rpc_url)
            return
        from flockd.chain.embedded import EmbeddedChain
        from flockd.chain.genesis import Genesis
        from flockd.chain.network import GENESIS_FILE
        from flockd.chain.service import ChainService

        genesis = Genesis.load(self.datadir / GENESIS_FILE)
        (self.datadir / "chain").mkdir(exist_ok=True)
        chain = EmbeddedChain(
            genesis,
            self.datadir / "chain" / "chain.sqlite",
            sealer_key=self.identity.private_key,
            confirmations=self.config.chain.confirmations,
        )
        self.chain_service = ChainService(chain, self.p2p, http_port=self.config.chain.http_port)
        self.chain_backend = InProcessBackend(self.chain_service.api)

    # -- NodeControl (what the node_* RPC namespace needs) --------------------
    def listen_addrs(self) -> list[str]:
        return self.p2p.listen_addrs()

    def request_stop(self) -> None:
        self._stop.set()

    # -- lifecycle -----------------------------------------------------------
    async def run(self) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._watch_signals)
            async with AsyncExitStack() as services:
                await self._start(services, "p2p", self.p2p.run)
                if self.chain_service is not None:
                    await self._start(services, "chain", self.chain_service.run)
                await self._start(services, "tasks", self.tasks.run)
                await self._start(services, "rpc", self._serve_control_socket)
                log.info(
                    "node started",
                    address=self.address,
                    peer_id=self.peer_id,
                    listen=self.listen_addrs(),
                )
                await self._stop.wait()
                log.info("node stopping")
            nursery.cancel_scope.cancel()
        log.info("node stopped")

    async def _start(self, stack: AsyncExitStack, name: str, service: object) -> None:
        # One nursery per service, entered in start order; the exit stack unwinds them
        # in reverse, cancelling each before the one it depends on.
        nursery = await stack.enter_async_context(trio.open_nursery())
        stack.callback(nursery.cancel_scope.cancel)
        await nursery.start(service)  # type: ignore[arg-type]
        log.debug("service started", service=name)

    async def _serve_control_socket(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        from flockd.rpc.server import serve_ipc

        await serve_ipc(
            self.datadir / IPC_SOCKET,
            self._dispatcher(),
            max_request_bytes=self.config.rpc.max_request_bytes,
            max_clients=self.config.rpc.max_clients,
            task_status=task_status,
        )

    def _dispatcher(self) -> Dispatcher:
        from flockd.rpc.chain import ChainNamespace
        from flockd.rpc.meta import RPCNamespace
        from flockd.rpc.net import NetNamespace
        from flockd.rpc.node import NodeNamespace
        from flockd.rpc.task import ModelNamespace, RoundNamespace, TaskNamespace

        namespaces: list[object] = [
            NodeNamespace(self),
            NetNamespace(self.p2p),
            ChainNamespace(self.chain_backend, self.chain_service, confirmations=self.config.chain.confirmations),
            TaskNamespace(self.tasks, self.config.policy),
            RoundNamespace(self.tasks),
            ModelNamespace(self.tasks, self.datadir / "exports"),
        ]
        dispatcher = Dispatcher(namespaces)
        dispatcher.add_namespace(RPCNamespace(dispatcher))
        return dispatcher

    async def _watch_signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.info("signal received", signal=signal.Signals(signum).name)
                self.request_stop()
