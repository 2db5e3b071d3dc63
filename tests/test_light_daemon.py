"""A daemon with no task does not load torch or transformers (issue 16: light daemons).

The whole `flockd run` start path runs in a child process; once its control socket
answers node_info (every service up), a thread in that process records which of the heavy modules are loaded and
stops the daemon with SIGTERM, as an operator would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CHILD = r"""
import json, os, signal, sys, threading, time
from flockd.cli import flockd_main
from flockd.rpc.client import IPCClient
from flockd.rpc.errors import RPCError

datadir, report = sys.argv[1], sys.argv[2]

def watch():
    client = IPCClient(os.path.join(datadir, "flockd.ipc"), timeout=5.0)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            info = client.call("node_info")
            break
        except (ConnectionError, OSError, RPCError):  # no socket yet, or the node is starting
            time.sleep(0.05)
    else:
        info = None
    loaded = sorted(m for m in ("torch", "transformers", "peft") if m in sys.modules)
    with open(report, "w") as f:
        json.dump({"answered": info is not None, "loaded": loaded}, f)
    os.kill(os.getpid(), signal.SIGTERM)

threading.Thread(target=watch, daemon=True).start()
sys.exit(flockd_main(["run", "--datadir", datadir]))
"""


def test_a_daemon_with_no_task_does_not_import_torch(short_tmp: Path) -> None:
    env = {**os.environ, "FLOCKD_PASSWORD": "pw"}
    datadir, report = short_tmp / "d", short_tmp / "report.json"
    cli = [sys.executable, "-m", "flockd.cli"]
    subprocess.run([*cli, "init", "--datadir", str(datadir), "--light-kdf"], env=env, check=True, capture_output=True)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(datadir), str(report)], env=env, capture_output=True, timeout=180
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert json.loads(report.read_text()) == {"answered": True, "loaded": []}
