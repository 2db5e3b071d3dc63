"""flockctl against a real control socket: the server runs in the test's trio loop, main() in a thread."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import trio
import trio.testing
from test_rpc_dispatch import GOOD_ADDR, PEER_A
from test_rpc_server import Served, start_server

from flockd.ctl import main, parse_params


async def flockctl(*argv: str) -> int:
    return await trio.to_thread.run_sync(main, list(argv))


@pytest.fixture
async def served(short_tmp: Path, nursery: trio.Nursery, capsys: pytest.CaptureFixture[str]) -> Served:
    served = await start_server(nursery, short_tmp)
    capsys.readouterr()  # the server's start-up log line (unconfigured structlog prints to stdout)
    return served


async def test_node_info_prints_key_value_lines(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert await flockctl("--datadir", str(served.path.parent), "node_info") == 0
    lines = capsys.readouterr().out.splitlines()
    assert f"peer_id         {PEER_A}" in lines
    assert "listen_addrs    /ip4/127.0.0.1/tcp/4001" in lines


async def test_json_prints_the_raw_result(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert await flockctl("--datadir", str(served.path.parent), "--json", "net_peers") == 0
    peers = json.loads(capsys.readouterr().out)
    assert peers == [
        {
            "peer_id": PEER_A,
            "address": "0x00000000000000000000000000000000000000Bb",
            "addrs": [GOOD_ADDR],
            "direction": "outbound",
            "latency_ms": 1.5,
        }
    ]


async def test_lists_of_objects_print_as_a_table(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert await flockctl("--datadir", str(served.path.parent), "rpc_methods") == 0
    out = capsys.readouterr().out
    for text in ("name", "params", "doc", "node_info", "net_connect", "multiaddr"):
        assert text in out


async def test_params_by_name_and_by_position(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    datadir = str(served.path.parent)
    assert await flockctl("--datadir", datadir, "net_connect", f"multiaddr={GOOD_ADDR}") == 0
    assert await flockctl("--datadir", datadir, "--json", "net_connect", GOOD_ADDR) == 0
    assert served.network.dialled == [GOOD_ADDR, GOOD_ADDR]
    out = capsys.readouterr().out
    assert out.startswith(f"peer_id  {PEER_A}\n")
    assert json.loads(out.split("\n", 1)[1]) == {"peer_id": PEER_A}


async def test_error_reply_exits_1_with_the_message_on_stderr(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert await flockctl("--datadir", str(served.path.parent), "net_connect", "multiaddr=7") == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.strip() == "flockctl: error -32602: net_connect: param 'multiaddr' expected str, got int"
    assert await flockctl("--datadir", str(served.path.parent), "node__secret") == 1
    assert "error -32601: method not found" in capsys.readouterr().err


async def test_node_stop(served: Served, capsys: pytest.CaptureFixture[str]) -> None:
    assert await flockctl("--datadir", str(served.path.parent), "node_stop") == 0
    assert capsys.readouterr().out.strip() == "true"
    await trio.testing.wait_all_tasks_blocked()
    assert served.node.stop_requests == 1


async def test_datadir_defaults_to_the_environment(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOCKD_DATADIR", str(served.path.parent))
    assert await flockctl("--json", "node_info") == 0
    assert json.loads(capsys.readouterr().out)["peer_id"] == PEER_A


def test_no_daemon_exits_2(short_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--datadir", str(short_tmp), "node_info"]) == 2
    assert capsys.readouterr().err.strip() == f"flockctl: no daemon at {short_tmp / 'flockd.ipc'}: is flockd running?"


@pytest.mark.parametrize("argv", [[], ["--bogus", "node_info"], ["net_connect", "a=1", "2"], ["m", "a=1", "a=2"]])
def test_usage_errors_exit_2(short_tmp: Path, argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--datadir", str(short_tmp), *argv]) == 2
    assert capsys.readouterr().err


def test_parse_params() -> None:
    assert parse_params([]) is None
    assert parse_params(["a=1", "b=true", "c=null", 'd=[1, "x"]', "e=hello", 'f="7"', "g="]) == {
        "a": 1,
        "b": True,
        "c": None,
        "d": [1, "x"],
        "e": "hello",
        "f": "7",
        "g": "",
    }
    assert parse_params(["x=y=z"]) == {"x": "y=z"}
    # Bare values, including ones with "=" that is not after a name; JSON quotes force a string.
    assert parse_params(["/ip4/1.2.3.4/tcp/1", "3", "/p?q=1", '"a=b"']) == ["/ip4/1.2.3.4/tcp/1", 3, "/p?q=1", "a=b"]
