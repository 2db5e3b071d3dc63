"""`flockd init` and `flockd run` start-up errors, through the real command line."""

import os
import subprocess
import sys

from flockd.identity.keystore import load_identity
from flockd.identity.peerid import address_from_peer_id


def flockd(*args, password="pw", **kw):
    env = {k: v for k, v in os.environ.items() if k != "FLOCKD_PASSWORD"}
    if password is not None:
        env["FLOCKD_PASSWORD"] = password
    return subprocess.run(
        [sys.executable, "-m", "flockd.cli", *args], env=env, capture_output=True, text=True, timeout=120, **kw
    )


def test_init_prints_one_participant_twice_and_refuses_overwrite(tmp_path):
    d = tmp_path / "node"
    first = flockd("init", "--datadir", str(d), "--light-kdf")
    assert first.returncode == 0, first.stderr
    fields = dict(line.split(None, 1) for line in first.stdout.splitlines())
    assert fields["address"].strip() == address_from_peer_id(fields["peer"].split()[-1])
    keystore = (d / "keystore.json").read_bytes()
    again = flockd("init", "--datadir", str(d), "--light-kdf")
    assert again.returncode == 1
    assert again.stderr.strip() == f"flockd: error: {d}/keystore.json already exists; refusing to overwrite a key"
    assert (d / "keystore.json").read_bytes() == keystore
    assert load_identity(d, "pw").address == fields["address"].strip()


def test_init_with_password_file_and_bad_flag(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("secret\n")
    bad = flockd("init", "--datadir", str(tmp_path / "a"), "--listen", "nonsense", password=None)
    assert bad.returncode == 1 and "p2p.listen" in bad.stderr
    assert not (tmp_path / "a").exists()  # nothing written for a bad value
    ok = flockd("init", "--datadir", str(tmp_path / "b"), "--light-kdf", "--password-file", str(pw), password=None)
    assert ok.returncode == 0, ok.stderr
    load_identity(tmp_path / "b", "secret")


def test_no_password_source_is_a_clear_error(tmp_path):
    result = flockd("init", "--datadir", str(tmp_path / "c"), password=None, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "no password" in result.stderr


def test_run_with_bad_config_or_no_datadir(tmp_path):
    missing = flockd("run", "--datadir", str(tmp_path / "none"))
    assert missing.returncode == 1 and "config.toml not found" in missing.stderr
    d = tmp_path / "node"
    assert flockd("init", "--datadir", str(d), "--light-kdf").returncode == 0
    config = (d / "config.toml").read_text()
    (d / "config.toml").write_text(config.replace("max_peers = 50", "max_peers = -3"))
    result = flockd("run", "--datadir", str(d))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == ["flockd: error: p2p.max_peers: -3 is out of range [1, 10000]"]
    (d / "keystore.json").write_text("{")
    (d / "config.toml").write_text(config)
    corrupt = flockd("run", "--datadir", str(d))
    assert corrupt.returncode == 1 and "keystore.json is corrupt" in corrupt.stderr
