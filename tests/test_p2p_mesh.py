"""Five in-process hosts on 127.0.0.1, all bootstrapped to one seed: they find each other
through peer exchange, gossip reaches everyone exactly once, and hosts shut down cleanly."""

from __future__ import annotations

import socket
from collections import Counter

import pytest
import trio
from eth_keys.datatypes import PrivateKey
from trio_typing import TaskStatus  # trio's own is hidden from mypy by trio-stubs

from flockd.identity.peerid import peer_id_from_secret
from flockd.p2p.abc import GossipMessage, P2PError
from flockd.p2p.envelope import EnvelopeTooLarge
from flockd.p2p.host import P2PService
from flockd.p2p.limits import P2PLimits

N = 5
LIMITS = P2PLimits(peer_exchange_interval=0.3, bootstrap_backoff_max=1.0)


def secret(i: int) -> bytes:
    return bytes([i + 1]) * 32


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_until(condition: object, poll: float = 0.05) -> None:
    while not condition():  # type: ignore[operator]
        await trio.sleep(poll)


async def test_mesh_forms_and_gossip_arrives_exactly_once() -> None:
    baseline = running_tasks()
    seed = P2PService(secret(0), network_id="meshtest", limits=LIMITS)
    inboxes: dict[int, list[GossipMessage]] = {i: [] for i in range(N)}
    leave, left = trio.Event(), trio.Event()
    unreachable = f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{peer_id_from_secret(secret(0x76))}"

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(seed.run)
            nodes = [seed] + [
                P2PService(
                    secret(i),
                    network_id="meshtest",
                    bootstrap=[seed.listen_addrs()[0]] + ([unreachable] if i == 1 else []),
                    limits=LIMITS,
                )
                for i in range(1, N)
            ]
            for i, node in enumerate(nodes):

                async def collect(message: GossipMessage, i: int = i) -> None:
                    inboxes[i].append(message)

                node.subscribe("news", collect)
            for node in nodes[1:4]:
                await nursery.start(node.run)
            await nursery.start(run_until, nodes[4], leave, left)

            # Bootstrap alone gives a star; peer exchange must complete it to a full mesh.
            await wait_until(lambda: all(len(n.peers()) == N - 1 for n in nodes))
            for node in nodes:
                others = {n.peer_id for n in nodes} - {node.peer_id}
                assert {p.peer_id for p in node.peers()} == others
            seed_view = {p.peer_id: p for p in seed.peers()}
            assert {p.direction for p in seed_view.values()} == {"inbound"}
            assert {p.direction for p in nodes[1].peers() if p.peer_id == seed.peer_id} == {
                "outbound"
            }
            expected_address = PrivateKey(secret(2)).public_key.to_checksum_address()
            assert seed_view[nodes[2].peer_id].address == expected_address
            await wait_until(lambda: all(p.latency_ms is not None for p in seed.peers()))

            # Gossip meshes form on the subscription announcements; retry the first publish
            # until it is seen everywhere, then count a fresh one exactly.
            await wait_until_gossip_flows(nodes, inboxes)
            for inbox in inboxes.values():
                inbox.clear()
            await nodes[3].publish("news", "headline", {"n": 1})
            await nodes[3].publish("news", "marker", {"n": 2})
            # Late warm-ups may arrive meanwhile, so wait for the two kinds, not a count.
            await wait_until(
                lambda: all(
                    {"headline", "marker"} <= {m.kind for m in inboxes[i]} for i in range(N) if i != 3
                )
            )
            await trio.sleep(0.5)  # give any duplicate the chance to show up
            sender = PrivateKey(secret(3)).public_key.to_checksum_address()
            for i in range(N):
                # Late warm-ups (sent before the mesh was complete) may still trickle in.
                kinds = Counter(m.kind for m in inboxes[i] if m.kind != "warmup")
                if i == 3:
                    assert kinds == Counter()  # own messages are not delivered back
                else:
                    assert kinds == Counter({"headline": 1, "marker": 1})
                    counted = [m for m in inboxes[i] if m.kind != "warmup"]
                    assert all(m.sender == sender and m.topic == "news" for m in counted)
            assert [m.payload for m in inboxes[0] if m.kind == "headline"] == [{"n": 1}]
            with pytest.raises(EnvelopeTooLarge):  # refused loudly, not dropped by libp2p
                await nodes[3].publish("news", "huge", b"x" * LIMITS.max_envelope)

            # One host leaves: its run() returns, its port closes, every other host drops it.
            leaving = nodes[4]
            port = int(leaving.listen_addrs()[0].split("/tcp/")[1].split("/")[0])
            leave.set()
            await left.wait()
            with pytest.raises(OSError):
                await trio.open_tcp_stream("127.0.0.1", port)
            await wait_until(lambda: all(len(n.peers()) == N - 2 for n in nodes[:4]))
            nursery.cancel_scope.cancel()
    # Clean shutdown: not one task (ours or libp2p's system tasks) outlives the hosts.
    assert running_tasks() == baseline


async def run_until(
    node: P2PService, leave: trio.Event, left: trio.Event, *, task_status: TaskStatus[None]
) -> None:
    async with trio.open_nursery() as nursery:
        await nursery.start(node.run)
        task_status.started()
        await leave.wait()
        nursery.cancel_scope.cancel()
    left.set()


async def wait_until_gossip_flows(
    nodes: list[P2PService], inboxes: dict[int, list[GossipMessage]]
) -> None:
    for attempt in range(100):
        await nodes[0].publish("news", "warmup", attempt)
        with trio.move_on_after(0.3):
            await wait_until(lambda: all(inboxes[i] for i in range(1, len(nodes))))
            return
    raise AssertionError("gossip never reached every node")


async def test_connect_validates_multiaddrs() -> None:
    node = P2PService(secret(9), network_id="meshtest", limits=LIMITS)
    with pytest.raises(P2PError, match="not running"):
        await node.connect("/ip4/127.0.0.1/tcp/1/p2p/" + node.peer_id)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(node.run)
            for bad, reason in [
                ("garbage", "invalid multiaddr"),
                ("/ip4/127.0.0.1/tcp/99999", "invalid multiaddr"),
                ("/ip4/127.0.0.1/tcp/4001", "must end in /p2p"),
                ("/ip4/127.0.0.1/udp/4001/p2p/" + peer_id_from_secret(secret(8)), "tcp"),
                (
                    "/ip4/127.0.0.1/tcp/4001/p2p/QmaCpDMGvV2BGHeYERUEnRQAwe3N8SzbUtfsmvsqQLuvuJ",
                    "secp256k1",
                ),
                (node.listen_addrs()[0], "ourselves"),
                (
                    f"/ip4/127.0.0.1/tcp/{closed_port()}/p2p/{peer_id_from_secret(secret(8))}",
                    "cannot reach",
                ),
            ]:
                with pytest.raises(P2PError, match=reason):
                    await node.connect(bad)
            nursery.cancel_scope.cancel()
    with pytest.raises(P2PError):
        P2PService(secret(9), network_id="meshtest", bootstrap=["/ip4/127.0.0.1/tcp/4001"])


def running_tasks() -> list[str]:
    """Every task in this trio run, libp2p's system tasks included."""

    def walk(task: trio.lowlevel.Task) -> list[str]:
        children = [c for nursery in task.child_nurseries for c in nursery.child_tasks]
        return [task.name] + [name for child in children for name in walk(child)]

    return walk(trio.lowlevel.current_root_task())
