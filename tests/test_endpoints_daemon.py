"""A daemon's local endpoints cannot freeze it, and it stops on SIGTERM whatever it runs."""

from __future__ import annotations

import socket
import subprocess
import sys
import threading

import httpx
import pytest

from flockd.node import EXIT_STOP_TIMEOUT
from flockd.testnet.cluster import Cluster, Daemon

LOOPING_CALL = {
    "jsonrpc": "2.0", "id": 1, "method": "eth_call",
    "params": [{"data": "0x5b600056", "gas": "0xffffffffff"}, "latest"],  # JUMPDEST PUSH1 0 JUMP
}
EXIT_BOUND = 60  # seconds: generous, only so a broken daemon fails the test instead of hanging it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LoopingCall(threading.Thread):
    """Posts the looping eth_call and keeps its reply (or the error that ended it)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}"
        self.reply: dict | None = None
        self.error: Exception | None = None

    def run(self) -> None:
        try:
            self.reply = httpx.post(self.url, json=LOOPING_CALL, timeout=EXIT_BOUND).json()
        except Exception as exc:  # noqa: BLE001 - the test looks at it
            self.error = exc


def answers_while(call: LoopingCall, d: Daemon) -> list[int]:
    """Control-socket answers (chain heads) received while the call was still running."""
    heads = []
    while call.is_alive():
        status = d.call("chain_status", timeout=10)
        if call.is_alive():
            heads.append(status["head"])
    return heads


@pytest.mark.slow
def test_a_looping_eth_call_neither_freezes_the_daemon_nor_outlives_sigterm(short_tmp):
    cluster = Cluster(short_tmp, 1)
    cluster.init()
    d = cluster.daemons[0]
    port = free_port()
    cluster.start_daemon(d, bootstrap=None, extra_args=("--chain-http", str(port)))
    try:
        cluster.wait_ready(d, 60)
        call = LoopingCall(port)
        call.start()
        heads = answers_while(call, d)
        call.join(EXIT_BOUND)
        assert call.reply is not None, call.error
        assert call.reply["error"]["code"] == -32000 and "execution aborted" in call.reply["error"]["message"]
        assert heads, "the control socket answered nothing while the call ran"
        assert heads[-1] > heads[0], "the chain sealed nothing while the call ran"

        # SIGTERM while another looping call runs: the daemon exits, cleanly.
        second = LoopingCall(port)
        second.start()
        d.call("node_info")
        assert d.process is not None
        d.process.terminate()
        assert d.process.wait(timeout=EXIT_BOUND) == 0
        second.join(EXIT_BOUND)
        log = d.log_path.read_text()
        assert log.index("node stopping") < log.index("node stopped")
    finally:
        cluster.stop()


def test_the_stop_watchdog_ends_a_process_whose_thread_will_not_stop():
    # Work in a worker thread cannot be cancelled (a training step, a block import): the
    # watchdog ends the process anyway once a stop has waited `grace` seconds.
    script = (
        "import time, trio\n"
        "from flockd.node import StopWatchdog\n"
        "async def main():\n"
        "    watchdog = StopWatchdog(0.5)\n"
        "    watchdog.stop_requested()\n"
        "    await trio.to_thread.run_sync(time.sleep, 600)\n"
        "trio.run(main)\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=EXIT_BOUND)
    assert proc.returncode == EXIT_STOP_TIMEOUT
    assert "stop is taking too long" in proc.stderr + proc.stdout
