"""Peer exchange `/flock/peers/1` (sans-I/O part): the messages and their strict decoders.

libp2p bootstrap is not transitive (nodes that share a seed never learn of each other), so
each node asks its peers whom they know. One stream = one request frame and one reply frame
(blob frames, see blobs.py):

  request  kind "peers.req": {"addrs": [multiaddr, ...]}  the asker's own listen addresses
  reply    kind "peers":     {"peers": [[peer_id, [multiaddr, ...]], ...]}

Multiaddrs are TCP (`/ip4|ip6|dns*/.../tcp/N`) without a `/p2p` part; peer ids must carry a
secp256k1 key (every flock node's id does). Any malformed entry rejects the whole message.
"""

from __future__ import annotations

import functools
from typing import Any

import msgpack
import multiaddr
from multiaddr.exceptions import Error as MultiaddrError

from flockd.identity.peerid import address_from_peer_id
from flockd.p2p.abc import P2PError

PROTOCOL = "/flock/peers/1"
REQUEST = "peers.req"
REPLY = "peers"
MAX_MESSAGE = 64 * 1024
MAX_PEERS = 64
MAX_ADDRS = 8
MAX_ADDR_LEN = 256
_HOST_PROTOCOLS = frozenset({"ip4", "ip6", "dns", "dns4", "dns6"})

PeerList = list[tuple[str, list[str]]]


class PeerExchangeError(P2PError):
    """A peer-exchange message was malformed."""


class MalformedPeerList(PeerExchangeError): ...


class TooManyPeers(PeerExchangeError): ...


class BadPeerEntry(PeerExchangeError): ...


def size_cap(kind: str) -> int | None:
    return MAX_MESSAGE if kind in (REQUEST, REPLY) else None


def encode_request(own_addrs: list[str]) -> bytes:
    return msgpack.packb({"addrs": own_addrs[:MAX_ADDRS]}, use_bin_type=True)


def encode_reply(peers: PeerList) -> bytes:
    entries = [[peer_id, addrs[:MAX_ADDRS]] for peer_id, addrs in peers[:MAX_PEERS]]
    return msgpack.packb({"peers": entries}, use_bin_type=True)


def decode_request(data: bytes) -> list[str]:
    fields = _unpack_map(data, "addrs")
    return _addr_list(fields["addrs"])


def decode_reply(data: bytes) -> PeerList:
    fields = _unpack_map(data, "peers")
    entries = fields["peers"]
    if not isinstance(entries, list):
        raise MalformedPeerList("peers must be a list")
    if len(entries) > MAX_PEERS:
        raise TooManyPeers(f"{len(entries)} peers; at most {MAX_PEERS}")
    peers: PeerList = []
    for entry in entries:
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)):
            raise BadPeerEntry("each peer must be [peer_id: str, addrs: list]")
        check_peer_id(entry[0])
        peers.append((entry[0], _addr_list(entry[1])))
    return peers


@functools.lru_cache(maxsize=4096)
def check_peer_id(peer_id: str) -> str:
    """The checksummed Ethereum address behind a flock peer id; BadPeerEntry otherwise.
    Cached (failures are not): decoding the key costs ~0.2 ms, and every peer-list reply
    names up to MAX_PEERS peers, mostly the same ones each time."""
    try:
        return address_from_peer_id(peer_id)
    except Exception as exc:  # libp2p's id parsing raises assorted types on garbage
        raise BadPeerEntry(f"peer id {peer_id[:64]!r} is not a secp256k1 peer id") from exc


def check_dial_addr(addr: str) -> multiaddr.Multiaddr:
    """A TCP multiaddr without a /p2p part (the peer id travels next to it)."""
    if len(addr) > MAX_ADDR_LEN:
        raise BadPeerEntry(f"multiaddr longer than {MAX_ADDR_LEN} characters")
    try:
        parsed = multiaddr.Multiaddr(addr)
    except (MultiaddrError, ValueError, TypeError) as exc:
        raise BadPeerEntry(f"invalid multiaddr {addr[:64]!r}") from exc
    names = [p.name for p in parsed.protocols()]
    if len(names) != 2 or names[0] not in _HOST_PROTOCOLS or names[1] != "tcp":
        raise BadPeerEntry(f"multiaddr {addr[:64]!r} is not /<ip|dns>/<host>/tcp/<port>")
    return parsed


def _addr_list(addrs: Any) -> list[str]:
    if not isinstance(addrs, list) or not all(isinstance(a, str) for a in addrs):
        raise BadPeerEntry("addrs must be a list of strings")
    if len(addrs) > MAX_ADDRS:
        raise BadPeerEntry(f"{len(addrs)} addrs; at most {MAX_ADDRS}")
    for addr in addrs:
        check_dial_addr(addr)
    return list(addrs)


def _unpack_map(data: bytes, key: str) -> dict[str, Any]:
    if len(data) > MAX_MESSAGE:
        raise MalformedPeerList(f"message is {len(data)} bytes; at most {MAX_MESSAGE}")
    try:
        fields = msgpack.unpackb(
            data,
            raw=False,
            strict_map_key=True,
            max_bin_len=0,
            max_ext_len=0,
            max_str_len=MAX_ADDR_LEN,
            max_array_len=len(data),  # counts are checked below, with specific errors
            max_map_len=1,
        )
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise MalformedPeerList(f"not valid msgpack: {exc}") from exc
    if not isinstance(fields, dict) or set(fields) != {key}:
        raise MalformedPeerList(f"message must be a map with the single key {key!r}")
    return fields
