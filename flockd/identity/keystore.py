"""The node's keys on disk.

- The secp256k1 node key is an Ethereum V3 keystore (eth-account), so any Ethereum
  wallet can import it; it signs transactions, seals blocks and is the libp2p identity.
- The Ed25519 VRF seed is sealed with the same password (argon2id + XSalsa20-Poly1305,
  PyNaCl) in a small JSON file: it is not an Ethereum key, so it gets no V3 file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nacl.exceptions
import nacl.pwhash
import nacl.secret
import nacl.utils
from eth_account import Account
from eth_keys import keys
from eth_keys.datatypes import PrivateKey

from flockd.files import write_new_file

NODE_KEYSTORE = "keystore.json"
VRF_KEYFILE = "vrf-key.json"
# geth's --lightkdf: fast enough for a 50-node local testnet, not for real money.
LIGHT_SCRYPT_N = 4096


class IdentityError(Exception):
    """A key file is missing, corrupt, or the password does not open it."""


@dataclass(frozen=True)
class Identity:
    node_secret: bytes  # 32-byte secp256k1 secret: Ethereum account and libp2p identity
    vrf_secret: bytes  # 32-byte Ed25519 seed for the ECVRF

    @property
    def private_key(self) -> PrivateKey:
        return keys.PrivateKey(self.node_secret)

    @property
    def address(self) -> str:
        return self.private_key.public_key.to_checksum_address()

    @property
    def peer_id(self) -> str:
        from flockd.identity.peerid import peer_id_from_secret

        return peer_id_from_secret(self.node_secret)

    @property
    def vrf_public_key(self) -> bytes:
        import nacl.signing

        return bytes(nacl.signing.SigningKey(self.vrf_secret).verify_key)


def create_identity(datadir: Path, password: str, *, light_kdf: bool = False) -> Identity:
    """Generate both keys and write them; refuses to overwrite an existing key."""
    for name in (NODE_KEYSTORE, VRF_KEYFILE):
        if (datadir / name).exists():
            raise IdentityError(f"{datadir / name} already exists; refusing to overwrite a key")
    identity = Identity(node_secret=_new_secp256k1_secret(), vrf_secret=os.urandom(32))
    kdf_args: dict[str, Any] = {"kdf": "scrypt"}
    if light_kdf:
        kdf_args["iterations"] = LIGHT_SCRYPT_N
    v3 = Account.encrypt(identity.node_secret, password, **kdf_args)
    write_new_file(datadir / NODE_KEYSTORE, json.dumps(v3, indent=2).encode())
    sealed = _seal_vrf_seed(identity.vrf_secret, password, light_kdf=light_kdf)
    write_new_file(datadir / VRF_KEYFILE, json.dumps(sealed, indent=2).encode())
    return identity


def load_identity(datadir: Path, password: str) -> Identity:
    node_secret = _open_node_keystore(datadir / NODE_KEYSTORE, password)
    vrf_secret = _open_vrf_keyfile(datadir / VRF_KEYFILE, password)
    return Identity(node_secret=node_secret, vrf_secret=vrf_secret)


def _new_secp256k1_secret() -> bytes:
    # A 32-byte string is a valid key unless it is 0 or >= the curve order: retry.
    while True:
        secret = os.urandom(32)
        try:
            keys.PrivateKey(secret)
            return secret
        except Exception:
            continue


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise IdentityError(f"{path} not found: run `flockd init --datadir {path.parent}` first")
    try:
        data = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise IdentityError(f"{path} is corrupt: {exc}") from None
    if not isinstance(data, dict):
        raise IdentityError(f"{path} is corrupt: not a JSON object")
    return data


def _open_node_keystore(path: Path, password: str) -> bytes:
    v3 = _read_json(path)
    if v3.get("version") != 3:
        raise IdentityError(f"{path} is corrupt or unsupported: not an Ethereum V3 keystore")
    try:
        secret = bytes(Account.decrypt(v3, password))
    except ValueError as exc:
        if "MAC mismatch" in str(exc):
            raise IdentityError(f"wrong password for {path}") from None
        raise IdentityError(f"{path} is corrupt: {exc}") from None
    except (KeyError, TypeError) as exc:
        raise IdentityError(f"{path} is corrupt: missing or bad field {exc}") from None
    address = v3.get("address")
    actual = keys.PrivateKey(secret).public_key.to_address()
    if isinstance(address, str) and address.lower().removeprefix("0x") != actual[2:].lower():
        raise IdentityError(f"{path} is corrupt: its address does not match its key")
    return secret


def _seal_vrf_seed(seed: bytes, password: str, *, light_kdf: bool) -> dict[str, Any]:
    argon = nacl.pwhash.argon2id
    ops = argon.OPSLIMIT_MIN if light_kdf else argon.OPSLIMIT_MODERATE
    mem = argon.MEMLIMIT_MIN if light_kdf else argon.MEMLIMIT_MODERATE
    salt = nacl.utils.random(argon.SALTBYTES)
    key = argon.kdf(nacl.secret.SecretBox.KEY_SIZE, password.encode(), salt, opslimit=ops, memlimit=mem)
    box = nacl.secret.SecretBox(key)
    return {
        "version": 1,
        "kind": "ed25519-vrf-seed",
        "kdf": {"name": "argon2id", "salt": salt.hex(), "opslimit": ops, "memlimit": mem},
        "ciphertext": bytes(box.encrypt(seed)).hex(),
    }


def _open_vrf_keyfile(path: Path, password: str) -> bytes:
    data = _read_json(path)
    try:
        if data["version"] != 1 or data["kind"] != "ed25519-vrf-seed":
            raise IdentityError(f"{path}: unsupported key file version or kind")
        kdf = data["kdf"]
        if kdf["name"] != "argon2id":
            raise IdentityError(f"{path}: unsupported kdf {kdf['name']!r}")
        salt = bytes.fromhex(kdf["salt"])
        key = nacl.pwhash.argon2id.kdf(
            nacl.secret.SecretBox.KEY_SIZE,
            password.encode(),
            salt,
            opslimit=int(kdf["opslimit"]),
            memlimit=int(kdf["memlimit"]),
        )
        ciphertext = bytes.fromhex(data["ciphertext"])
    except IdentityError:
        raise
    except (KeyError, TypeError, ValueError, nacl.exceptions.CryptoError) as exc:
        raise IdentityError(f"{path} is corrupt: {exc!r}") from None
    try:
        seed = nacl.secret.SecretBox(key).decrypt(ciphertext)
    except nacl.exceptions.CryptoError:
        raise IdentityError(f"wrong password for {path}") from None
    if len(seed) != 32:
        raise IdentityError(f"{path} is corrupt: seed is {len(seed)} bytes, expected 32")
    return bytes(seed)
