"""The embedded chain across real daemons (one process each): sealing in turn, agreement,
and a node killed with SIGKILL that restarts from its on-disk chain and catches up."""

import pytest

from flockd.testnet.cluster import Cluster, agree_at_least, heads

pytestmark = pytest.mark.slow


def test_four_daemons_agree_and_a_killed_one_catches_up(short_tmp):
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    try:
        cluster.start(timeout=180)  # a loaded 2-core machine takes over a minute to start four
        cluster.wait_full_mesh(timeout=60)
        cluster.wait_for(lambda: agree_at_least(cluster.daemons, 12), 90, "4 daemons to agree on block 12")
        sealers = {cluster.daemons[0].call("chain_status")["authorities"]}
        assert sealers == {4}

        victim, others = cluster.daemons[3], cluster.daemons[:3]
        cluster.kill(victim)
        killed_at = max(n for n, _ in heads(others))
        # The other three keep sealing (the victim's slots pass to the next authority).
        cluster.wait_for(lambda: agree_at_least(others, killed_at + 8), 90, "the survivors to seal on")

        cluster.start_daemon(victim, bootstrap=cluster.bootstrap_addr())
        cluster.wait_ready(victim, 180)
        target = max(n for n, _ in heads(others)) + 3
        cluster.wait_for(lambda: agree_at_least(cluster.daemons, target), 90, "the restarted node to catch up")
        status = victim.call("chain_status")
        assert status["authority"] and not status["syncing"]
    finally:
        codes = cluster.stop()
    assert codes == [0, 0, 0, 0]
