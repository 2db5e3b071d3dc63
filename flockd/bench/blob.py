"""`scripts/bench blob`: blob-stream throughput between two processes on 127.0.0.1.

The sender (this process) pushes a payload to a receiver in another process
(`python -m flockd.bench.blob --serve`) three ways, in one run: over a plain trio TCP
socket with the same request/reply shape (the baseline); over `/flock/blob/1` as a node
sends it (blobs of `bulk_min` bytes or more negotiated on the stream and carried by the
bulk channel: AES-256-GCM chunks on a plain TCP socket, keccak-checked), once with the
same payload each time (as a delta pushed to every voter: the sender hashes it once) and
once with a new payload per blob (both sides hash every blob); and over the
libp2p stream alone (TCP + Noise + Yamux, keccak-checked frames), the path before the bulk
channel.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial

import trio

MiB = 1024 * 1024
NETWORK = "bench"
KIND = "bench"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench blob", description=__doc__)
    parser.add_argument("--total-mib", type=int, default=64, help="bytes sent per transport")
    parser.add_argument("--blob-mib", type=int, default=4, help="size of one blob")
    parser.add_argument(
        "--diagnose-without-keccak",
        action="store_true",
        help="diagnostic only: both processes skip the bulk channel's keccak check (flockd never runs so)",
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.diagnose_without_keccak:
        skip_bulk_keccak()
    if args.serve:
        trio.run(serve, args.blob_mib * MiB)
        return 0
    trio.run(measure, args.total_mib * MiB, args.blob_mib * MiB, args.diagnose_without_keccak)
    return 0


def skip_bulk_keccak() -> None:
    """Measures what the keccak check costs the bulk channel: its hasher becomes a no-op
    in this process (the receiver is started with the same flag)."""
    from flockd.p2p import bulk

    class NoHash:
        def update(self, data: object) -> None:
            pass

        def digest(self) -> bytes:
            return bytes(32)

    bulk.hasher = NoHash  # type: ignore[assignment]


def keccak_rate(payload: bytes) -> float:
    """MB/s of keccak256 over `payload` on one core, in this process, now."""
    from flockd.p2p.blobs import digest

    started = time.perf_counter()
    for _ in range(4):
        digest(payload)
    return 4 * len(payload) / (time.perf_counter() - started) / 1e6


# --- receiver process ---


async def serve(blob_size: int) -> None:
    from flockd.p2p.host import P2PService

    host = P2PService(os.urandom(32), network_id=NETWORK)

    async def on_blob(peer_id: str, kind: str, data: bytes) -> bytes:
        return len(data).to_bytes(8, "big")

    host.handle_blobs(KIND, on_blob, max_size=blob_size)
    async with trio.open_nursery() as nursery:
        await nursery.start(host.run)
        listeners = await nursery.start(
            partial(trio.serve_tcp, serve_plain_tcp, 0, host="127.0.0.1")
        )
        tcp_port = listeners[0].socket.getsockname()[1]
        print(host.listen_addrs()[0], tcp_port, flush=True)
        await wait_for_stdin_eof()  # the parent closes our stdin when it is done
        nursery.cancel_scope.cancel()


async def serve_plain_tcp(stream: trio.SocketStream) -> None:
    async with stream:
        while header := await receive_exactly(stream, 8):
            size = int.from_bytes(header, "big")
            await receive_exactly(stream, size)
            await stream.send_all(size.to_bytes(8, "big"))


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytes:
    buffer = bytearray()
    while len(buffer) < size:
        chunk = await stream.receive_some(min(size - len(buffer), MiB))
        if not chunk:
            return b""
        buffer += chunk
    return bytes(buffer)


async def wait_for_stdin_eof() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


# --- sender process ---


async def measure(total: int, blob_size: int, without_keccak: bool) -> None:
    from flockd.p2p.host import P2PService
    from flockd.p2p.limits import P2PLimits

    count = max(1, total // blob_size)
    payload = os.urandom(blob_size)
    receiver = subprocess.Popen(
        [
            sys.executable, "-m", "flockd.bench.blob", "--serve", "--blob-mib", str(blob_size // MiB),
            *(["--diagnose-without-keccak"] if without_keccak else []),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert receiver.stdout is not None
        libp2p_addr, tcp_port = (await trio.to_thread.run_sync(receiver.stdout.readline)).split()
        host = P2PService(os.urandom(32), network_id=NETWORK)
        stream_only = P2PService(os.urandom(32), network_id=NETWORK, limits=P2PLimits(bulk_min=2**62))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            await nursery.start(stream_only.run)
            peer_id = await host.connect(libp2p_addr)
            await stream_only.connect(libp2p_addr)

            async def send_libp2p() -> None:
                reply = await host.send_blob(peer_id, KIND, payload)
                assert reply == blob_size.to_bytes(8, "big")

            fresh = [os.urandom(blob_size) for _ in range(count + 1)]

            async def send_libp2p_fresh() -> None:
                reply = await host.send_blob(peer_id, KIND, fresh.pop())
                assert reply == blob_size.to_bytes(8, "big")

            async def send_stream_only() -> None:
                reply = await stream_only.send_blob(peer_id, KIND, payload)
                assert reply == blob_size.to_bytes(8, "big")

            tcp = await trio.open_tcp_stream("127.0.0.1", int(tcp_port))

            async def send_tcp() -> None:
                await tcp.send_all(blob_size.to_bytes(8, "big") + payload)
                assert await receive_exactly(tcp, 8) == blob_size.to_bytes(8, "big")

            tcp_rate = await throughput(send_tcp, count, blob_size)
            libp2p_rate = await throughput(send_libp2p, count, blob_size)
            fresh_rate = await throughput(send_libp2p_fresh, count, blob_size)
            stream_rate = await throughput(send_stream_only, count, blob_size)
            tcp_rate_again = await throughput(send_tcp, count, blob_size)
            hash_rate = keccak_rate(payload)
            await tcp.aclose()
            nursery.cancel_scope.cancel()
    finally:
        assert receiver.stdin is not None
        receiver.stdin.close()
        receiver.wait(timeout=30)

    print(
        f"blob throughput: {count} x {blob_size // MiB} MiB, sender and receiver in two processes, 127.0.0.1"
    )
    baseline = (tcp_rate + tcp_rate_again) / 2  # measured before and after the others
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    if without_keccak:
        print("  DIAGNOSTIC: the bulk channel's keccak check is switched off in both processes")
    print(f"  keccak256 alone, one core                    {hash_rate:8.1f} MB/s")
    print(f"  plain TCP socket (trio), same request/reply  {baseline:8.1f} MB/s  ({tcp_rate:.1f} before, {tcp_rate_again:.1f} after)")
    print(f"  /flock/blob/1 + bulk channel (aes-gcm+keccak) {libp2p_rate:8.1f} MB/s  ratio {libp2p_rate / baseline:.3f}  (one payload again and again: hashed once by the sender)")
    print(f"  ... a new payload per blob                    {fresh_rate:8.1f} MB/s  ratio {fresh_rate / baseline:.3f}  (hashed by both sides)")
    print(f"  /flock/blob/1 stream only (noise+yamux+keccak) {stream_rate:8.1f} MB/s  ratio {stream_rate / baseline:.3f}")


async def throughput(send_one: Callable[[], Awaitable[None]], count: int, blob_size: int) -> float:
    """MB/s (10^6 bytes) over `count` sequential request/reply round trips, after one warm-up."""
    await send_one()
    started = time.perf_counter()
    for _ in range(count):
        await send_one()
    return count * blob_size / (time.perf_counter() - started) / 1e6


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
