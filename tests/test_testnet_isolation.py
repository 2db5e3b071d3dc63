"""`net_isolate`, the chaos testnet's partition: a node cut off drops its peers and
refuses connections both ways until the time is up, then rejoins by itself."""

from __future__ import annotations

import pytest
import trio

from flockd.p2p.abc import P2PError
from flockd.p2p.host import P2PService
from flockd.p2p.limits import P2PLimits
from flockd.rpc.errors import RPCError
from flockd.rpc.net import NetNamespace

LIMITS = P2PLimits(peer_exchange_interval=0.3, bootstrap_backoff_max=0.5, dial_timeout=3.0)
CUT = 3.0  # seconds of isolation


def secret(i: int) -> bytes:
    return bytes([0x40 + i]) * 32


async def wait_until(condition: object, poll: float = 0.05) -> None:
    while not condition():  # type: ignore[operator]
        await trio.sleep(poll)


async def test_isolated_node_refuses_both_ways_then_rejoins() -> None:
    seed = P2PService(secret(0), network_id="isotest", limits=LIMITS)
    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            await nursery.start(seed.run)
            cut = P2PService(secret(1), network_id="isotest", bootstrap=[seed.listen_addrs()[0]], limits=LIMITS)
            other = P2PService(secret(2), network_id="isotest", limits=LIMITS)
            await nursery.start(cut.run)
            await nursery.start(other.run)
            await wait_until(lambda: len(cut.peers()) == 1 and len(seed.peers()) == 1)

            reply = await NetNamespace(cut).net_isolate(CUT)
            assert reply == {"dropped": 1, "seconds": CUT}
            until = trio.current_time() + CUT
            await wait_until(lambda: not seed.peers() and not cut.peers())
            # Neither way in: not an inbound dial, not an outbound one, not the seed's retries.
            with pytest.raises(P2PError, match="cannot reach|timed out"):
                await other.connect(cut.listen_addrs()[0])
            with pytest.raises(P2PError, match="cannot reach|timed out"):
                await cut.connect(other.listen_addrs()[0])
            await trio.sleep(max(0.0, until - trio.current_time() - 0.5))
            assert not cut.peers() and not seed.peers()

            # Time is up: the bootstrap loop dials the seed again without being told.
            await wait_until(lambda: len(cut.peers()) >= 1 and len(seed.peers()) >= 1)
            assert trio.current_time() >= until
            # (the other way may wait out libp2p's negative dial cache: the cut node dials out)
            await cut.connect(other.listen_addrs()[0])
            nursery.cancel_scope.cancel()


@pytest.mark.parametrize("seconds", [0, -1, 3601, float("inf")])
async def test_isolation_time_is_bounded(seconds: float) -> None:
    node = P2PService(secret(3), network_id="isotest", limits=LIMITS)
    with pytest.raises(RPCError, match="seconds must be"):
        await NetNamespace(node).net_isolate(seconds)


async def test_isolation_needs_a_running_host() -> None:
    node = P2PService(secret(4), network_id="isotest", limits=LIMITS)
    with pytest.raises(RPCError, match="not running"):
        await NetNamespace(node).net_isolate(5)
