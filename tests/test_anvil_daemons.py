"""Daemons on an external EVM node (a real anvil, mining a block a second): `flockd deploy`
puts the contracts there, and two daemons run a learning task on it to the end."""

import os
import subprocess
import sys

import httpx
import pytest
from anvil_node import AnvilNode

from flockd.datadir import record_deployment
from flockd.testnet.cluster import PASSWORD, Cluster
from flockd.testnet.task import TaskPlan, create_and_join

pytestmark = [pytest.mark.slow, pytest.mark.anvil]


@pytest.fixture
def anvil():
    node = AnvilNode("--block-time", "1")
    yield node
    node.stop()


def test_daemons_run_a_task_on_anvil(short_tmp, anvil):
    url = anvil.url()
    cluster = Cluster(short_tmp, 2)
    cluster.init()
    for d in cluster.daemons:  # gas money on the external chain
        httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [d.address, hex(10**21)]})
    first = cluster.daemons[0]
    deployed = subprocess.run(
        [sys.executable, "-m", "flockd.cli", "deploy", "--datadir", str(first.datadir), "--chain-rpc", url,
         *[f"--holder={d.address}=1000" for d in cluster.daemons]],
        env={**os.environ, "FLOCKD_PASSWORD": PASSWORD}, capture_output=True, text=True, timeout=180,
    )
    assert deployed.returncode == 0, deployed.stderr
    fields = dict(line.split(None, 1) for line in deployed.stdout.splitlines())
    record_deployment(cluster.daemons[1].datadir, url, fields["registry"].strip(), fields["token"].strip())
    try:
        cluster.start()
        cluster.wait_full_mesh(timeout=60)
        status = first.call("chain_status")
        assert status["kind"] == "external" and status["chain_id"] == 31337
        plan = TaskPlan(recipe="cancer-logreg", rounds=2, expected_proposers=2, propose_blocks=6, commit_blocks=5, reveal_blocks=8)
        task_id = create_and_join(cluster, plan)

        def finished():
            sts = [d.call("task_status", {"task_id": task_id}) for d in cluster.daemons]
            return all(
                s["state"] == "finished" and len(s["history"]) == plan.rounds and s["model_hash"] == s["chain_model_hash"]
                for s in sts
            )

        cluster.wait_for(finished, 300, "the task to finish on anvil")
        hashes = {d.call("task_status", {"task_id": task_id})["model_hash"] for d in cluster.daemons}
        assert len(hashes) == 1
        verified = [d.call("model_verify", {"task_id": task_id}) for d in cluster.daemons]
        assert all(v["ok"] and v["complete"] for v in verified), verified
    finally:
        codes = cluster.stop()
    assert codes == [0, 0]
