"""A federation formed by hand, as docs/network.md tells three organisations to: each party
inits its own datadir, `flockd genesis` is built from their addresses, each re-inits with it
and runs; they mesh by bootstrap and run a task to the end through flockctl. Then a fourth
party joins the running network from the same genesis, catches up, is funded by
account_transfer (gas and stake), and takes part in a second task. web3.py reads the
balances over --chain-http. Then the founders vote the fourth party in as an authority: it
seals and every node keeps its blocks; and they vote one founder out: it stops sealing and
follows. Never touches flockd.testnet: only the commands a user types."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flockd.chain.client.artifacts import STAKE_TOKEN, load
from flockd.rpc.client import IPCClient

pytestmark = pytest.mark.slow

PASSWORD = "federation-test"
ENV = {**os.environ, "FLOCKD_PASSWORD": PASSWORD}
TASK = ["recipe=digits-mlp", "rounds=2", "expected_proposers=2", "propose_blocks=6", "commit_blocks=5", "reveal_blocks=8"]
LONG = 600.0  # a whole task on a shared 2-core machine


def flockd(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "flockd.cli", *args], env=ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"flockd {' '.join(args)}: {done.stderr}"
    return done.stdout


def flockctl(datadir: Path, method: str, *params: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", "import sys; from flockd.cli import flockctl_main; sys.exit(flockctl_main())",
         "--datadir", str(datadir), "--timeout", "300", "--json", method, *params],
        env=ENV, capture_output=True, text=True, timeout=320,
    )
    assert done.returncode == 0, f"flockctl {method} {params}: {done.stderr}"
    return json.loads(done.stdout)


def fields(output: str) -> dict[str, str]:
    return {k: v.strip() for k, _, v in (line.partition(" ") for line in output.splitlines())}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Party:
    def __init__(self, root: Path, name: str) -> None:
        self.datadir = root / name
        self.name = name
        self.address = ""
        self.process: subprocess.Popen[bytes] | None = None

    def init(self, *extra: str) -> None:
        self.address = fields(flockd("init", "--datadir", str(self.datadir), "--light-kdf", *extra))["address"]

    def run(self, *extra: str) -> None:
        with open(self.datadir / "flockd.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "flockd.cli", "run", "--datadir", str(self.datadir), *extra],
                env=ENV, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )

    def call(self, method: str, params: Any = None) -> Any:
        with IPCClient(self.datadir / "flockd.ipc", timeout=20) as client:
            return client.call(method, params)

    def stop(self) -> int | None:
        if self.process is None:
            return None
        if self.process.poll() is None:
            try:
                self.call("node_stop")
            except Exception:
                self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def log_tail(self) -> str:
        return "\n".join((self.datadir / "flockd.log").read_text(errors="replace").splitlines()[-15:])


def wait_for(parties: list[Party], check: Callable[[], bool], what: str, timeout: float = LONG) -> None:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        for p in parties:
            if p.process is not None and p.process.poll() is not None:
                raise AssertionError(f"{p.name} exited with {p.process.returncode}:\n{p.log_tail()}")
        try:
            if check():
                return
        except Exception as exc:  # a socket not there yet, a task not seen yet
            last = exc
        time.sleep(1.0)
    raise AssertionError(f"timed out waiting for {what} (last error: {last})")


def run_task(parties: list[Party], creator: Party) -> None:
    n = str(len(parties))
    created = flockctl(creator.datadir, "task_create", *TASK, f"num_nodes={n}", f"min_participants={n}")
    task_id, spec = created["task_id"], json.dumps(created["spec"])
    wait_for(parties, lambda: all(p.call("task_status", {"task_id": task_id}) for p in parties), "every node to see the task")
    for p in parties:  # one after the other, as people would
        assert flockctl(p.datadir, "task_join", f"task_id={task_id}", f"spec={spec}")["joined"] is True
    flockctl(creator.datadir, "task_start", f"task_id={task_id}")

    def finished() -> bool:
        statuses = [p.call("task_status", {"task_id": task_id}) for p in parties]
        return all(s["state"] == "finished" and len(s["history"]) == 2 and s["model_hash"] == s["chain_model_hash"]
                   for s in statuses)

    wait_for(parties, finished, f"task {task_id} to finish on every node")
    final = [flockctl(p.datadir, "task_status", f"task_id={task_id}") for p in parties]
    assert len({s["model_hash"] for s in final}) == 1
    assert sorted(final[0]["participants"]) == sorted(p.address for p in parties)


def test_three_parties_form_a_network_and_a_fourth_joins_it_later(short_tmp: Path) -> None:
    from web3 import Web3

    founders = [Party(short_tmp, f"org{i}") for i in range(3)]
    late = Party(short_tmp, "org3")
    everyone = [*founders, late]
    try:
        for p in founders:
            p.init()
        network = short_tmp / "genesis.json"
        args = ["genesis", "--chain-id", "4321", "--out", str(network)]
        for p in founders:
            args += ["--authority", p.address, "--gas", f"{p.address}=1e24", "--stake", f"{p.address}=1e24"]
        genesis_hash = fields(flockd(*args))["hash"]
        for p in founders:
            assert fields(flockd("init", "--datadir", str(p.datadir), "--genesis", str(network)))["genesis"] == genesis_hash

        http_port = free_port()
        founders[0].run("--chain-http", str(http_port))
        wait_for(founders[:1], lambda: founders[0].call("node_info") is not None, "org0's control socket", 120)
        info = flockctl(founders[0].datadir, "node_info")
        seed = info["listen_addrs"][0]
        seed = seed if "/p2p/" in seed else f"{seed}/p2p/{info['peer_id']}"
        for p in founders[1:]:
            p.run("--bootstrap", seed)
        wait_for(founders, lambda: all(len(p.call("net_peers")) >= 2 for p in founders), "a full mesh of three", 120)
        assert {p.call("chain_status")["genesis_hash"] for p in founders} == {genesis_hash}

        run_task(founders, founders[0])

        # A fourth organisation, later: the same genesis, a bootstrap address, no funds yet.
        late.init("--genesis", str(network))
        late.run("--bootstrap", seed)
        height = founders[0].call("chain_head")["number"]
        wait_for(everyone, lambda: late.call("chain_head")["number"] >= height, "org3 to catch up")
        broke = flockctl(founders[0].datadir, "account_balance", f"address={late.address}")
        assert (broke["gas_wei"], broke["stake"]) == (0, 0)
        gas = flockctl(founders[0].datadir, "account_transfer", f"to={late.address}", "amount=1000e18", "asset=gas")
        stake = flockctl(founders[0].datadir, "account_transfer", f"to={late.address}", "amount=5000e18", "asset=stake")
        assert (gas["asset"], stake["asset"]) == ("gas", "stake")
        wait_for(everyone, lambda: late.call("chain_head")["number"] >= stake["block"], "org3 to see the transfers")
        funded = flockctl(late.datadir, "account_balance")
        assert (funded["address"], funded["gas_wei"], funded["stake"]) == (late.address, 1000 * 10**18, 5000 * 10**18)

        # A wallet's view: web3.py over --chain-http reads the same balances.
        w3 = Web3(Web3.HTTPProvider(f"http://localhost:{http_port}"))
        assert w3.eth.chain_id == 4321
        assert w3.eth.get_balance(Web3.to_checksum_address(late.address)) == 1000 * 10**18
        token = w3.eth.contract(address=Web3.to_checksum_address(funded["token"]), abi=load(STAKE_TOKEN).abi)
        assert token.functions.balanceOf(Web3.to_checksum_address(late.address)).call() == 5000 * 10**18

        wait_for(everyone, lambda: all(len(p.call("net_peers")) >= 3 for p in everyone), "a full mesh of four", 120)
        run_task(everyone, founders[1])
        vote_the_late_party_in_and_a_founder_out(founders, late)
    finally:
        codes = [p.stop() for p in everyone]
    assert codes == [0, 0, 0, 0]


def sealed_by(party: Party, blocks: int = 64) -> dict[int, tuple[str, str]]:
    """block number -> (hash, sealer) of party's last canonical blocks."""
    return {r["block"]: (r["hash"], r["sealer"]) for r in flockctl(party.datadir, "authority_sealers", f"blocks={blocks}")}


def vote(party: Party, candidate: Party, action: str) -> dict[str, Any]:
    return flockctl(party.datadir, "authority_propose", f"address={candidate.address}", f"action={action}")


def vote_the_late_party_in_and_a_founder_out(founders: list[Party], late: Party) -> None:
    everyone = [*founders, late]
    assert late.call("authority_list")["this_node_seals"] is False
    first = vote(founders[0], late, "add")
    assert (first["decided"], first["votes"], first["votes_needed"]) == (False, 1, 2)  # 1 of 3: nothing yet
    assert [p["candidate"] for p in flockctl(founders[2].datadir, "authority_votes")] == [late.address]
    second = vote(founders[1], late, "add")
    assert second["decided"] is True
    added_from = second["effective_from_block"]

    def late_sealed_and_kept() -> bool:
        # Blocks the newcomer sealed, on every node's canonical chain with the same hashes.
        views = [sealed_by(p) for p in everyone]
        ours = {n: h for n, (h, sealer) in views[0].items() if sealer == late.address and n >= added_from}
        return len(ours) >= 2 and all(all(view.get(n, (h,))[0] == h for n, h in ours.items()) for view in views[1:])

    wait_for(everyone, late_sealed_and_kept, "blocks sealed by org3 on every node", 180)
    for p in everyone:
        listed = flockctl(p.datadir, "authority_list")
        assert listed["authorities"] == [*(f.address for f in founders), late.address]
    assert flockctl(late.datadir, "authority_list")["this_node_seals"] is True

    # Voting founder 0 out takes 3 of the 4 now.
    outgoing, voters = founders[0], [founders[1], founders[2], late]
    results = [vote(p, outgoing, "remove") for p in voters]
    assert [r["decided"] for r in results] == [False, False, True]
    removed_from = results[-1]["effective_from_block"]
    remaining = [f.address for f in founders[1:]] + [late.address]

    def sealed_on_without_org0() -> bool:
        view = sealed_by(founders[1], 32)
        after = {n: s for n, (_, s) in view.items() if n >= removed_from}
        return len(after) >= 12
    wait_for(everyone, sealed_on_without_org0, "a dozen blocks after org0's removal", 180)
    after = {n: s for n, (_, s) in sealed_by(founders[1], 64).items() if n >= removed_from}
    assert outgoing.address not in after.values() and set(after.values()) <= set(remaining)
    for p in everyone:
        listed = flockctl(p.datadir, "authority_list")
        assert listed["authorities"] == remaining
        assert listed["this_node_seals"] == (p is not outgoing)
    head = founders[1].call("chain_head")["number"]
    wait_for(everyone, lambda: outgoing.call("chain_head")["number"] >= head, "org0 to follow the others' blocks", 120)
