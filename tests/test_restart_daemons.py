"""Restart as specified, across real daemons: a voter killed with SIGKILL after its vote
commit landed is restarted, reads its saved ballot back and reveals it in time.

Roles come from the VRF, so the test cannot pick the victim in advance: it watches the
two nodes other than the bootstrap (which the restarted node dials) round by round, and
kills the first one whose commit has landed while its reveal is not yet sent. A fourth
participant is stopped once the task starts: a silent node holds every window open to
its full length, so a voter's commit is not the one that closes the commit window (the
reveal would go out in the same tick) and there is time to catch it between commit and
reveal. The reveal window is long (60 blocks) so a restart fits inside it. The proof is on
chain: the victim's ballot for that round is revealed, and the restarted process's log
shows that it sent the reveal.
"""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import trio

from flockd.chain.client.addresses import TASK_REGISTRY_ADDRESS
from flockd.chain.client.backends import HttpBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.registry import Registry
from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.task import TaskPlan, create_and_join

pytestmark = pytest.mark.slow

PLAN = TaskPlan(recipe="digits-mlp", rounds=6, expected_proposers=2, propose_blocks=8, commit_blocks=10, reveal_blocks=60)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def revealed_on_chain(url: str, task_id: int, r: int, voter: str) -> bool:
    async def read() -> bool:
        async with HttpBackend(url, timeout=10) as backend:
            registry = Registry(ContractClient(backend), TASK_REGISTRY_ADDRESS)
            return bool((await registry.get_ballot(task_id, r, bytes.fromhex(voter[2:]))).revealed)

    return trio.run(read)


def reveal_logged(log: str, r: int) -> bool:
    return any("transaction sent" in line and "fn=reveal_vote" in line and f"round={r} " in line + " "
               for line in log.splitlines())


def log_since(d: Daemon, offset: int) -> str:
    return Path(d.log_path).read_bytes()[offset:].decode(errors="replace")


def test_a_voter_killed_after_its_commit_reveals_after_restart(short_tmp: Path) -> None:
    cluster = Cluster(short_tmp, 4)
    cluster.init()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    try:
        first = cluster.daemons[0]
        cluster.start_daemon(first, bootstrap=None, extra_args=("--chain-http", str(port)))
        cluster.wait_ready(first, 60)
        for d in cluster.daemons[1:]:
            cluster.start_daemon(d, bootstrap=cluster.bootstrap_addr())
        for d in cluster.daemons[1:]:
            cluster.wait_ready(d, 60)
        cluster.wait_full_mesh(timeout=60)
        task_id = create_and_join(cluster, PLAN)
        silent = cluster.daemons[3]
        cluster.kill(silent)

        victim: Daemon | None = None
        victim_round = -1
        offset = 0

        def committed_not_revealing() -> bool:
            nonlocal victim, victim_round
            for d in cluster.daemons[1:3]:
                rs = d.call("round_status", {"task_id": task_id})
                if rs.get("step") == "committed":
                    victim, victim_round = d, rs["round"]
                    return True
            return False

        for _attempt in range(PLAN.rounds - 1):
            cluster.wait_for(committed_not_revealing, 300, "a voter other than the bootstrap to commit")
            assert victim is not None
            before = log_since(victim, offset)
            cluster.kill(victim)
            offset = Path(victim.log_path).stat().st_size
            if not reveal_logged(before, victim_round):
                break
            # It sent its reveal between our look and the kill: not the case under test.
            cluster.start_daemon(victim, bootstrap=cluster.bootstrap_addr())
            cluster.wait_ready(victim, 60)
            cluster.wait_for(lambda: victim is not None and
                             victim.call("round_status", {"task_id": task_id})["round"] > victim_round,
                             300, "the next round")
        else:
            pytest.fail("every candidate revealed before it could be killed")
        assert victim is not None
        cluster.start_daemon(victim, bootstrap=cluster.bootstrap_addr())
        cluster.wait_ready(victim, 60)
        voter = victim.address
        cluster.wait_for(lambda: revealed_on_chain(url, task_id, victim_round, voter), 240,
                         f"node{victim.index}'s ballot of round {victim_round} to be revealed")
        assert reveal_logged(log_since(victim, offset), victim_round), "the reveal was not sent by the restarted node"
    finally:
        codes = cluster.stop()
    assert all(code == 0 for code in codes[:3]), codes  # the fourth was killed on purpose
