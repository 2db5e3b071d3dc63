"""One secp256k1 key names a participant twice: as an Ethereum address and a libp2p peer id."""

from __future__ import annotations

from eth_keys import keys
from libp2p.crypto.secp256k1 import Secp256k1PublicKey, create_new_key_pair
from libp2p.peer.id import ID


def peer_id_from_secret(secret: bytes) -> str:
    return ID.from_pubkey(create_new_key_pair(secret).public_key).to_base58()


def address_from_peer_id(peer_id: str) -> str:
    """The Ethereum address of a secp256k1 peer id (raises ValueError for other key types)."""
    pub = ID.from_base58(peer_id).extract_public_key()
    if not isinstance(pub, Secp256k1PublicKey):
        raise ValueError(f"peer id {peer_id} does not carry a secp256k1 key")
    uncompressed = pub.impl.format(compressed=False)[1:]
    return keys.PublicKey(uncompressed).to_checksum_address()
