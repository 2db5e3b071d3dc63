"""What scripts/testnet makes of a workdir before it starts anything (no daemons here)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flockd.chain.node.network import GENESIS_FILE, network_genesis
from flockd.config import CONFIG_FILE
from flockd.identity.keystore import NODE_KEYSTORE, VRF_KEYFILE
from flockd.testnet.cluster import backup_after_periods, mesh_shortfall
from flockd.testnet.deps import missing_modules
from flockd.testnet.main import TASK_TIMEOUT, parse_args
from flockd.testnet.task import scaled_windows
from flockd.testnet.workdir import WorkdirError, busy_port, check_reusable, running_daemons

ADDRESSES = [f"0x{i:040x}" for i in range(1, 5)]


def fake_network(workdir: Path, nodes: int, *, authorities: list[str] | None = None) -> None:
    """The files `Cluster.init` leaves per node (keys are not decrypted by the check)."""
    genesis = network_genesis(authorities or ADDRESSES[:nodes], timestamp=1).to_json()
    for i in range(nodes):
        d = workdir / f"node{i}"
        d.mkdir(parents=True)
        (d / NODE_KEYSTORE).write_text(json.dumps({"address": ADDRESSES[i][2:]}))
        (d / VRF_KEYFILE).write_text("{}")
        (d / CONFIG_FILE).write_text("")
        (d / GENESIS_FILE).write_text(genesis)


def test_missing_or_empty_workdir_is_fresh(tmp_path: Path) -> None:
    assert check_reusable(tmp_path / "absent", 3) is None
    assert check_reusable(tmp_path, 3) is None


def test_matching_network_is_reused(tmp_path: Path) -> None:
    fake_network(tmp_path, 3)
    (tmp_path / "report").mkdir()
    assert check_reusable(tmp_path, 3) is None
    assert running_daemons(tmp_path) == []


@pytest.mark.parametrize("asked", [2, 4])
def test_other_node_count_is_named(tmp_path: Path, asked: int) -> None:
    fake_network(tmp_path, 3)
    assert check_reusable(tmp_path, asked) == f"it holds a 3-node network (node0-node2), --nodes asks for {asked}"


def test_half_set_up_node(tmp_path: Path) -> None:
    fake_network(tmp_path, 3)
    (tmp_path / "node1" / GENESIS_FILE).unlink()
    assert check_reusable(tmp_path, 3) == "node1 has no genesis.json (a run stopped during set-up)"


def test_genesis_that_differs(tmp_path: Path) -> None:
    fake_network(tmp_path, 2)
    (tmp_path / "node1" / GENESIS_FILE).write_text(network_genesis(ADDRESSES[:2], timestamp=2).to_json())
    assert check_reusable(tmp_path, 2) == "node1's genesis differs from node0's"


def test_genesis_of_other_authorities(tmp_path: Path) -> None:
    fake_network(tmp_path, 2, authorities=ADDRESSES[2:4])
    assert check_reusable(tmp_path, 2) == "its genesis names other authorities than its nodes"


def test_foreign_directory_is_never_taken(tmp_path: Path) -> None:
    fake_network(tmp_path, 2)
    (tmp_path / "thesis.tex").write_text("years of work")
    with pytest.raises(WorkdirError, match="thesis.tex.*another --workdir"):
        check_reusable(tmp_path, 3)
    (tmp_path / "thesis.tex").unlink()
    (tmp_path / "afile").write_text("")
    with pytest.raises(WorkdirError, match="is not a directory"):
        check_reusable(tmp_path / "afile", 1)


def test_busy_port_found() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        assert busy_port(range(port - 1, port + 1)) in (port - 1, port)
        assert busy_port(range(port, port + 1)) == port


def test_a_port_left_in_time_wait_is_free() -> None:
    # A run just stopped leaves its connections in TIME_WAIT on its ports; the daemons bind
    # with SO_REUSEADDR and can listen there, so a rerun must not call the port busy.
    with socket.socket() as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = listener.accept()
        accepted.close()  # the listening side closes first: its end goes to TIME_WAIT
        client.close()
    assert busy_port(range(port, port + 1)) is None


def test_the_task_timeout_grows_with_the_square_of_the_nodes_above_16() -> None:
    args = ["--rounds", "0"]  # no task spec to build
    assert parse_args(args).task_timeout == TASK_TIMEOUT
    assert parse_args([*args, "--nodes", "16"]).task_timeout == TASK_TIMEOUT
    # 32 daemons with the scaled windows ran 62 min and were in their last round at 2 x
    assert parse_args([*args, "--nodes", "32"]).task_timeout == 4 * TASK_TIMEOUT
    assert parse_args([*args, "--nodes", "32", "--task-timeout", "60"]).task_timeout == 60


def test_big_testnets_give_a_late_sealer_more_slots() -> None:
    assert [backup_after_periods(n) for n in (1, 6, 16, 24, 32, 64)] == [2, 2, 2, 3, 4, 8]


def test_a_mesh_that_did_not_form_names_who_lacks_whom() -> None:
    ids = {"a": 0, "b": 1, "c": 2, "d": 3}
    seen: dict[int, list[str] | None] = {0: ["b", "c"], 1: ["a", "c"], 2: ["a", "b"], 3: None}
    assert mesh_shortfall(seen, ids) == (
        "node0 lacks node3; node1 lacks node3; node2 lacks node3; node3 did not answer"
    )
    assert mesh_shortfall({0: ["b"], 1: ["a"]}, {"a": 0, "b": 1}) == "every node now sees every peer"


def test_big_testnets_get_longer_windows() -> None:
    default = {"propose_blocks": 8, "commit_blocks": 6, "reveal_blocks": 8}
    assert scaled_windows(6) == scaled_windows(15) == default
    assert scaled_windows(32) == {"propose_blocks": 32, "commit_blocks": 24, "reveal_blocks": 32}


def test_missing_dependency_named() -> None:
    assert missing_modules(["trio", "no_such_package_xyz", "no.such.sub"]) == ["no_such_package_xyz", "no.such.sub"]
    assert missing_modules() == []


def run_testnet(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flockd.testnet", *args], capture_output=True, text=True, timeout=120
    )


@pytest.mark.parametrize("flags, message", [
    (["--nodes", "0"], "--nodes must be between 1 and 64"),
    (["--rounds", "-1"], "--rounds must be 0 or more"),
    (["--nodes", "x"], "invalid int value"),
    (["--port-base", "80"], "--port-base must leave room"),
    (["--rule", "krum:x"], "bad rule parameters"),
    (["--recipe", "nope"], "no recipe 'nope'"),
])
def test_bad_flag_is_one_line(flags: list[str], message: str, tmp_path: Path) -> None:
    done = run_testnet("--workdir", str(tmp_path / "w"), *flags)
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 2 and len(lines) == 1 and message in lines[0], lines
    assert not (tmp_path / "w").exists()


def test_busy_port_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        done = run_testnet("--workdir", str(tmp_path / "w"), "--nodes", "1", "--rounds", "0", "--port-base", str(port))
    lines = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 1 and len(lines) == 1, lines
    assert f"port {port} (node0) is in use" in lines[0]


# A stand-in for a daemon with no control socket (node_stop fails, so SIGTERM follows): told
# to stop, it takes a moment, writes when it was told and when it finished, and exits 0.
STAND_IN = """
import signal, sys, time
from pathlib import Path
out = Path(sys.argv[1])
def stop(*_):
    told = time.monotonic()
    time.sleep(0.3)
    out.write_text(f"{told!r} {time.monotonic()!r}")
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
out.write_text("up")
while True:
    time.sleep(0.05)
"""


def test_the_testnet_stops_its_daemons_a_batch_at_a_time(tmp_path: Path) -> None:
    from flockd.testnet.cluster import Cluster

    cluster = Cluster(tmp_path, 5)
    for d in cluster.daemons:
        d.datadir.mkdir()
        d.process = subprocess.Popen([sys.executable, "-c", STAND_IN, str(d.datadir / "state")])
    for d in cluster.daemons:
        while not (d.datadir / "state").exists():
            assert d.alive()
            time.sleep(0.01)
    assert cluster.stop(timeout=20.0, batch=2) == [0] * 5
    told, done = zip(*((float(t) for t in (d.datadir / "state").read_text().split()) for d in cluster.daemons), strict=True)
    # a batch is told to stop only once the one before it has finished
    assert max(done[0:2]) < min(told[2:4]) and max(done[2:4]) < told[4]


def test_a_crowded_testnet_acts_two_blocks_deep_unless_told() -> None:
    assert parse_args([]).confirmations == 0
    assert parse_args(["--nodes", "15"]).confirmations == 0
    assert parse_args(["--nodes", "32"]).confirmations == 2
    assert parse_args(["--nodes", "32", "--confirmations", "0"]).confirmations == 0
