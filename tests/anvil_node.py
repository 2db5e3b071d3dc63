"""A real anvil on 127.0.0.1 for the tests (scripts/test installs it from npm)."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

TOOLS_ANVIL = Path(__file__).resolve().parents[1] / ".tools/node_modules/@foundry-rs/anvil-linux-amd64/bin/anvil"


def anvil_binary() -> str | None:
    for candidate in (os.environ.get("FLOCKD_ANVIL"), str(TOOLS_ANVIL)):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class AnvilNode:
    """A real anvil on 127.0.0.1, started on first use (so embedded-only runs never start it)."""

    def __init__(self, *extra_args: str) -> None:
        self.extra_args = extra_args
        self.proc: subprocess.Popen[bytes] | None = None
        self._url: str | None = None
        self._log = tempfile.NamedTemporaryFile(prefix="anvil-", suffix=".log")  # noqa: SIM115

    def url(self) -> str:
        if self._url is None:
            self._url = self._start()
        return self._url

    def _start(self) -> str:
        binary = anvil_binary()
        if binary is None:
            pytest.skip("anvil not found: set FLOCKD_ANVIL (scripts/test installs it from npm @foundry-rs/anvil)")
        # --port 0: anvil binds a free port itself and prints it, so no bind-then-release race.
        # Output goes to a file: a pipe nobody drains would block anvil once full.
        self.proc = subprocess.Popen(
            [binary, "--host", "127.0.0.1", "--port", "0", "--accounts", "1", "--hardfork", "prague", *self.extra_args],
            stdout=self._log, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            found = re.search(rb"Listening on 127\.0\.0\.1:(\d+)", Path(self._log.name).read_bytes())
            if found:
                url = f"http://127.0.0.1:{int(found.group(1))}"
                reply = httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}, timeout=5)
                assert "result" in reply.json()
                return url
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        output = Path(self._log.name).read_text(errors="replace")[-2000:]
        raise RuntimeError(f"anvil did not start: {output}")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
