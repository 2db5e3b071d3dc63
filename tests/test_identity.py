import json
import os
import subprocess
import sys
import time

import pytest
from eth_account import Account

from flockd.identity.keystore import (
    NODE_KEYSTORE,
    VRF_KEYFILE,
    IdentityError,
    create_identity,
    load_identity,
)
from flockd.identity.peerid import address_from_peer_id


@pytest.fixture
def datadir(tmp_path):
    return tmp_path


def test_round_trip_and_one_key_two_names(datadir):
    created = create_identity(datadir, "pw", light_kdf=True)
    loaded = load_identity(datadir, "pw")
    assert loaded == created
    assert address_from_peer_id(loaded.peer_id) == loaded.address
    assert loaded.peer_id.startswith("16Uiu2")
    assert (datadir / NODE_KEYSTORE).stat().st_mode & 0o777 == 0o600
    assert (datadir / VRF_KEYFILE).stat().st_mode & 0o777 == 0o600


def test_keystore_is_standard_v3(datadir):
    created = create_identity(datadir, "pw", light_kdf=True)
    v3 = json.loads((datadir / NODE_KEYSTORE).read_text())
    assert v3["version"] == 3
    assert bytes(Account.decrypt(v3, "pw")) == created.node_secret


def test_refuses_to_overwrite(datadir):
    first = create_identity(datadir, "pw", light_kdf=True)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        create_identity(datadir, "other", light_kdf=True)
    assert load_identity(datadir, "pw") == first


def test_wrong_password(datadir):
    create_identity(datadir, "pw", light_kdf=True)
    with pytest.raises(IdentityError, match="wrong password"):
        load_identity(datadir, "nope")


def test_missing_keystore(datadir):
    with pytest.raises(IdentityError, match="not found"):
        load_identity(datadir, "pw")


@pytest.mark.parametrize("name", [NODE_KEYSTORE, VRF_KEYFILE])
@pytest.mark.parametrize(
    "corruption",
    [b"", b"{not json", b"[]", b'{"version": 3}', b'{"version": 1, "kind": "ed25519-vrf-seed"}'],
)
def test_corrupt_files_give_clear_errors(datadir, name, corruption):
    create_identity(datadir, "pw", light_kdf=True)
    (datadir / name).write_bytes(corruption)
    with pytest.raises(IdentityError, match="corrupt|unsupported|version"):
        load_identity(datadir, "pw")


def test_flipped_ciphertext_byte_is_not_accepted(datadir):
    create_identity(datadir, "pw", light_kdf=True)
    data = json.loads((datadir / VRF_KEYFILE).read_text())
    ct = bytearray(bytes.fromhex(data["ciphertext"]))
    ct[-1] ^= 1
    data["ciphertext"] = ct.hex()
    (datadir / VRF_KEYFILE).write_text(json.dumps(data))
    with pytest.raises(IdentityError):
        load_identity(datadir, "pw")


def test_keys_survive_kill_9_during_init(tmp_path):
    """A killed `init` leaves either no key or a whole one, never a torn file."""
    code = (
        "import sys; from pathlib import Path; from flockd.identity.keystore import create_identity;"
        "create_identity(Path(sys.argv[1]), 'pw', light_kdf=True); print('done', flush=True);"
        "import time; time.sleep(60)"
    )
    for delay in (0.0, 0.3, 0.8):
        d = tmp_path / f"d{delay}"
        d.mkdir()
        proc = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE)
        time.sleep(delay)
        proc.kill()
        proc.wait()
        leftovers = [p.name for p in d.iterdir() if p.name.startswith(".")]
        assert leftovers in ([], [f".{NODE_KEYSTORE}.{proc.pid}.tmp"], [f".{VRF_KEYFILE}.{proc.pid}.tmp"])
        if (d / VRF_KEYFILE).exists():
            load_identity(d, "pw")  # whole and readable
        elif (d / NODE_KEYSTORE).exists():
            assert json.loads((d / NODE_KEYSTORE).read_text())["version"] == 3
        assert os.listdir(d) is not None
