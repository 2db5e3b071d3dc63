"""`flockd serve`: refuses what cannot work with one line, serves a model until SIGINT
stops it cleanly."""

import signal
import socket
import subprocess
import sys
import time

import httpx
from serve_tiny import tiny_model_dir

from flockd.cli import flockd_main


def test_a_public_bind_without_a_key_is_refused(capsys, monkeypatch):
    monkeypatch.delenv("FLOCKD_SERVE_API_KEY", raising=False)
    assert flockd_main(["serve", "--model", "somewhere", "--host", "0.0.0.0"]) == 1
    assert "needs an API key" in capsys.readouterr().err
    assert flockd_main(["serve"]) == 1
    assert "nothing to serve" in capsys.readouterr().err
    assert flockd_main(["serve", "--classifier", "digits-mlp"]) == 1
    assert "RECIPE:CHECKPOINT" in capsys.readouterr().err


def test_a_missing_model_is_one_line(capsys, tmp_path):
    assert flockd_main(["serve", "--model", str(tmp_path / "none"), "--index", str(tmp_path / "i.sqlite")]) == 1
    assert "flockd: error:" in capsys.readouterr().err


def test_flockd_serve_serves_until_interrupted(tmp_path_factory, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    model = tiny_model_dir(tmp_path_factory)
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys; from flockd.cli import flockd_main; sys.exit(flockd_main())",
         "serve", "--model", str(model), "--name", "tiny", "--port", str(port), "--index", str(tmp_path / "i.sqlite")],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=tmp_path,
    )
    try:
        deadline = time.monotonic() + 120  # a bound on waiting for the imports, not a speed assertion
        while True:
            try:
                models = httpx.get(f"http://127.0.0.1:{port}/v1/models").json()
                break
            except httpx.TransportError:
                assert proc.poll() is None and time.monotonic() < deadline
                time.sleep(0.2)
        assert [m["id"] for m in models["data"]] == ["tiny"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0  # a clean stop
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
