"""What kept 32 daemons from holding a mesh: connections that come and go, pairs that
dial each other at once, and a held event loop.

A node keeps accepting peers however many connections came and went before: py-libp2p
0.8.1's swarm takes an inbound slot (a CapacityLimiter of max_connections -
min_connections tokens) for each accepted TCP connection and gives it back only when the
whole swarm stops (a successful inbound handler waits on `manager.wait_finished()`), so
after max_connections inbound connections in its lifetime a node closed every new one at
accept, whatever was still open.
"""

from __future__ import annotations

import time

import trio
from libp2p.peer.id import ID

from flockd.p2p.host import LOOP_STALL, LOOP_TICK, P2PService
from flockd.p2p.limits import P2PLimits

# max_peers=3 gives libp2p a max_connections of 3 * 2 + 8 = 14 (host._connection_config);
# three dialers, each with at most one connection open, stay within max_peers.
DIALERS = 3
SMALL = P2PLimits(max_peers=DIALERS)
# A dialer at one peer dials no peer it hears of from the listener (nor the listener again).
LONER = P2PLimits(max_peers=1)


def secret(i: int) -> bytes:
    return bytes([i + 1]) * 32


async def wait_until(condition: object, poll: float = 0.02) -> None:
    while not condition():  # type: ignore[operator]
        await trio.sleep(poll)


async def test_inbound_slots_come_back_when_connections_close() -> None:
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            listener = P2PService(secret(0), network_id="reconnect", limits=SMALL)
            await nursery.start(listener.run)
            dialers = [
                P2PService(secret(i), network_id="reconnect", limits=LONER)
                for i in range(1, DIALERS + 1)
            ]
            for dialer in dialers:
                await nursery.start(dialer.run)
            ceiling = listener._host.get_network().connection_config.max_connections
            cycles = ceiling // DIALERS + 1  # more connections in all than the ceiling

            def listener_sees(dialer: P2PService) -> bool:
                return dialer.peer_id in {p.peer_id for p in listener.peers()}

            async def come_and_go(dialer: P2PService) -> None:
                for _ in range(cycles):
                    await dialer.connect(listener.listen_addrs()[0])
                    await wait_until(lambda: listener_sees(dialer))
                    await dialer._host.disconnect(ID.from_base58(listener.peer_id))
                    await wait_until(lambda: not listener_sees(dialer))

            async with trio.open_nursery() as cycling:
                for dialer in dialers:
                    cycling.start_soon(come_and_go, dialer)
            for dialer in dialers:
                await dialer.connect(listener.listen_addrs()[0])
            await wait_until(lambda: len(listener.peers()) == DIALERS)
            nursery.cancel_scope.cancel()


def directions(node: P2PService, other: P2PService) -> list[str]:
    """The direction of each connection `node` holds to `other`."""
    conns = node._host.get_network().get_connections(ID.from_base58(other.peer_id))
    return sorted(str(getattr(conn, "direction", "")) for conn in conns)


async def test_peers_that_learn_of_each_other_at_once_connect_once() -> None:
    # Peer exchange tells both ends of a pair about each other at about the same moment;
    # if both dialed, the pair would hold two connections.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            low, high = sorted(
                (P2PService(secret(i), network_id="reconnect") for i in (4, 5)),
                key=lambda node: node.peer_id,
            )
            await nursery.start(low.run)
            await nursery.start(high.run)
            async with trio.open_nursery() as both:
                both.start_soon(low._peering._consider, high.peer_id, high._own_dial_addrs())
                both.start_soon(high._peering._consider, low.peer_id, low._own_dial_addrs())
            await wait_until(lambda: directions(high, low) and directions(low, high))
            assert directions(low, high) == ["outbound"]
            assert directions(high, low) == ["inbound"]
            nursery.cancel_scope.cancel()


async def test_a_held_event_loop_is_counted() -> None:
    # A handler that holds the loop (CPU work or sync I/O in a coroutine) stalls every
    # peer's stream negotiation in the process; the service counts such stalls.
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            node = P2PService(secret(6), network_id="reconnect")
            await nursery.start(node.run)
            await trio.sleep(LOOP_TICK)  # the watcher has started its first tick
            time.sleep(LOOP_STALL + 0.5)  # holds the event loop, as a blocking handler would
            await wait_until(lambda: node.counters.get("loop_stalls") >= 1)
            assert node.counters.get("loop_stall_ms") >= LOOP_STALL * 1000
            nursery.cancel_scope.cancel()


async def test_the_larger_peer_id_dials_when_the_smaller_does_not() -> None:
    # Only the larger id learned of the pair: it waits an exchange interval, then dials.
    quick = P2PLimits(peer_exchange_interval=0.3)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            low, high = sorted(
                (P2PService(secret(i), network_id="reconnect", limits=quick) for i in (7, 8)),
                key=lambda node: node.peer_id,
            )
            await nursery.start(low.run)
            await nursery.start(high.run)
            await high._peering._consider(low.peer_id, low._own_dial_addrs())
            assert directions(high, low) == []  # deferred, not dialed
            await wait_until(lambda: directions(high, low) == ["outbound"])
            await wait_until(lambda: directions(low, high) == ["inbound"])
            nursery.cancel_scope.cancel()
