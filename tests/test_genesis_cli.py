"""`flockd genesis`: a network's genesis from the parties' addresses, and `flockd init
--genesis` on a datadir that already holds the party's keys."""

import json
import os
import subprocess
import sys

import pytest
from eth_utils import to_checksum_address
from hypothesis import given
from hypothesis import strategies as st

from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS
from flockd.chain.node.genesis import Genesis, GenesisError, parse_amount
from flockd.chain.node.network import parties_genesis, read_parties
from flockd.chain.node.poa import genesis_hash

A = to_checksum_address("0x" + "11" * 20)
B = to_checksum_address("0x" + "2a" * 20)
C = to_checksum_address("0x" + "3b" * 20)
E24 = 10**24


def flockd(*args, password="pw"):
    env = {**os.environ, "FLOCKD_PASSWORD": password}
    return subprocess.run([sys.executable, "-m", "flockd.cli", *args], env=env, capture_output=True, text=True, timeout=120)


def build(**kw):
    args = {"authorities": [A], "gas": [(A, "1e24")], "stake": [(A, "1e24")], "chain_id": 4242, "block_period": 1, "timestamp": 1_700_000_000}
    args.update(kw)
    return parties_genesis(**args)


def test_amounts_are_exact_integers():
    assert parse_amount("x", "1000") == 1000
    assert parse_amount("x", "25e18") == 25 * 10**18
    assert parse_amount("x", 7) == 7
    for bad in ("0", "-5", "1.5", "1e", "e18", "", "0x10", "1e100", True, 2**256):
        with pytest.raises(GenesisError, match="x"):
            parse_amount("x", bad)


@given(st.one_of(st.text(max_size=80), st.integers(), st.floats(), st.none(), st.booleans()))
def test_any_amount_input_is_a_valid_amount_or_a_genesis_error(value):
    try:
        amount = parse_amount("amount", value)
    except GenesisError as exc:
        assert str(exc).startswith("amount: ")
    else:
        assert type(amount) is int and 0 < amount < 2**256


def test_parties_get_gas_and_minted_stake():
    g = build(authorities=[A, B], gas=[(A, "5e18"), (C, 7)], stake=[(B, "3e18"), (C, "1")])
    assert g.authorities == (bytes.fromhex(A[2:]), bytes.fromhex(B[2:]))
    assert g.alloc[bytes.fromhex(A[2:])].balance == 5 * 10**18
    assert g.alloc[bytes.fromhex(C[2:])].balance == 7
    assert bytes.fromhex(B[2:]) not in g.alloc  # no gas asked for B: no account
    assert STAKE_TOKEN_ADDRESS in g.alloc  # the token, minted to the stake holders at genesis
    # same inputs, same genesis: parties can each build it and compare
    assert genesis_hash(g) == genesis_hash(Genesis.from_json(g.to_json()))


@pytest.mark.parametrize(("kw", "message"), [
    ({"authorities": []}, "at least one authority"),
    ({"authorities": [A, A.lower()]}, f"authority {A} is listed twice"),
    ({"gas": [(A, 1), (A, 2)]}, f"gas holder {A} is listed twice"),
    ({"stake": [(B, 1), (B.lower(), 2)]}, f"stake holder {B} is listed twice"),
    ({"authorities": ["0x1234"]}, "authority '0x1234' is not an address"),
    ({"authorities": [B[:-1] + B[-1].swapcase(), A]}, "bad EIP-55 checksum"),
    ({"gas": [(A, "0")]}, "must be > 0"),
    ({"stake": [(A, "-1")]}, "not a whole number"),
    ({"stake": [(to_checksum_address(STAKE_TOKEN_ADDRESS), 1)]}, "is a contract's address"),
    ({"chain_id": 0}, "chain_id"),
    ({"stake": [(A, 2**255), (B, 2**255)]}, "total stake"),
])
def test_invalid_input_is_a_clear_error(kw, message):
    with pytest.raises(GenesisError, match=message.replace("(", r"\(")):
        build(**kw)


def test_cli_builds_from_toml_and_flags_and_prints_the_hash(tmp_path):
    parties = tmp_path / "parties.toml"
    parties.write_text(f'chain_id = 4242\nblock_period = 2\nauthorities = ["{A}"]\n'
                       f'[gas]\n"{A}" = "1e24"\n[stake]\n"{A}" = "1e24"\n')
    out = tmp_path / "genesis.json"
    done = flockd("genesis", "--from", str(parties), "--authority", B, "--gas", f"{B}=1e21", "--stake", f"{C}=5e18",
                  "--timestamp", "1700000000", "--out", str(out))
    assert done.returncode == 0, done.stderr
    g = Genesis.load(out)
    assert (g.chain_id, g.block_period, len(g.authorities)) == (4242, 2, 2)
    fields = dict(line.split(None, 1) for line in done.stdout.splitlines())
    assert fields["hash"].strip() == "0x" + genesis_hash(g).hex()
    # a second run never overwrites the network's genesis
    again = flockd("genesis", "--authority", A, "--out", str(out))
    assert again.returncode == 1 and "exists" in again.stderr
    bad = flockd("genesis", "--authority", A, "--authority", A, "--out", str(tmp_path / "x.json"))
    assert bad.returncode == 1
    assert bad.stderr.strip() == f"flockd: error: authority {A} is listed twice"
    assert not (tmp_path / "x.json").exists()


def test_init_genesis_on_an_existing_datadir_replaces_only_the_chain_side(tmp_path):
    d = tmp_path / "party"
    first = flockd("init", "--datadir", str(d), "--light-kdf")
    assert first.returncode == 0, first.stderr
    address = dict(line.split(None, 1) for line in first.stdout.splitlines())["address"].strip()
    keystore = (d / "keystore.json").read_bytes()
    network = tmp_path / "genesis.json"
    build(authorities=[address, A]).write(network)
    joined = flockd("init", "--datadir", str(d), "--genesis", str(network))
    assert joined.returncode == 0, joined.stderr
    assert (d / "keystore.json").read_bytes() == keystore
    assert json.loads((d / "genesis.json").read_text()) == json.loads(network.read_text())
    # once the node has built a chain on a genesis, swapping it would fork the node away
    (d / "chain").mkdir()
    refused = flockd("init", "--datadir", str(d), "--genesis", str(network))
    assert refused.returncode == 1 and "chain exists" in refused.stderr


@pytest.mark.parametrize(("text", "message"), [
    ('chain_id = 1\nauthority = ["0x00"]\n', r"unknown key\(s\) authority"),
    ('authorities = "0xabc"\n', "authorities must be a list"),
    ('gas = 5\n', r"\[gas\] must be a table"),
    ('chain_id = \n', "not valid TOML"),
])
def test_a_bad_parties_file_is_named_with_its_fault(tmp_path, text, message):
    path = tmp_path / "parties.toml"
    path.write_text(text)
    with pytest.raises(GenesisError, match=message):
        read_parties(path)


def test_at_most_64_stake_holders():
    holders = [(to_checksum_address(i.to_bytes(20, "big")), 1) for i in range(1, 66)]
    with pytest.raises(GenesisError, match="at most 64 stake holders"):
        build(stake=holders)
