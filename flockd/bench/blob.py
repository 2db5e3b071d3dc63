"""`scripts/bench blob`: blob-stream throughput between two processes on 127.0.0.1.

The sender (this process) pushes a payload to a receiver in another process
(`python -m flockd.bench.blob --serve`), in one run: over a plain trio TCP socket with the
same request/reply shape (the baseline); over `/flock/blob/1` as a node sends it (blobs of
`bulk_min` bytes or more negotiated on the stream and carried by the bulk channel:
AES-256-GCM chunks on a plain TCP socket); the same, with the receiver's handler checking
each blob's keccak256 in a worker thread before it replies, as a delta's consumer checks
it against the hash on chain; and over the libp2p stream alone (TCP + Noise + Yamux,
keccak-checked frames), the path before the bulk channel. The first three take turns, a
quarter of the blobs each per round, so that a change of the machine's load hits them
alike; the stream alone runs after them.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING

import trio

if TYPE_CHECKING:
    from flockd.p2p.limits import P2PLimits

MiB = 1024 * 1024
NETWORK = "bench"
KIND = "bench"
CHECKED_KIND = "bench.checked"  # the handler hashes the blob before it replies


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="scripts/bench blob", description=__doc__)
    parser.add_argument("--total-mib", type=int, default=64, help="bytes sent per transport")
    parser.add_argument("--blob-mib", type=int, default=4, help="size of one blob")
    parser.add_argument(
        "--bulk-chunk-kib", type=int, help="the bulk channel's AES-GCM chunk on both sides (a lever; default P2PLimits')"
    )
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    limits = bulk_limits(args.bulk_chunk_kib)
    if args.serve:
        trio.run(serve, args.blob_mib * MiB, limits)
        return 0
    trio.run(measure, args.total_mib * MiB, args.blob_mib * MiB, args.bulk_chunk_kib)
    return 0


def bulk_limits(chunk_kib: int | None) -> P2PLimits:
    from flockd.p2p.limits import P2PLimits

    return P2PLimits() if chunk_kib is None else P2PLimits(bulk_chunk=chunk_kib * 1024)


def keccak_rate(payload: bytes) -> float:
    """MB/s of keccak256 over `payload` on one core, in this process, now."""
    from flockd.p2p.blobs import digest

    started = time.perf_counter()
    for _ in range(4):
        digest(payload)
    return 4 * len(payload) / (time.perf_counter() - started) / 1e6


# --- receiver process ---


async def serve(blob_size: int, limits: P2PLimits) -> None:
    from flockd.p2p.blobs import digest
    from flockd.p2p.host import P2PService

    host = P2PService(os.urandom(32), network_id=NETWORK, limits=limits)

    async def on_blob(peer_id: str, kind: str, data: bytearray) -> bytes:
        return len(data).to_bytes(8, "big")

    async def on_checked_blob(peer_id: str, kind: str, data: bytearray) -> bytes:
        await trio.to_thread.run_sync(digest, data)  # as a consumer checks a delta against its on-chain hash
        return len(data).to_bytes(8, "big")

    host.handle_blob_buffers(KIND, on_blob, max_size=blob_size)
    host.handle_blob_buffers(CHECKED_KIND, on_checked_blob, max_size=blob_size)
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


async def receive_exactly(stream: trio.SocketStream, size: int) -> bytearray:
    """Into one buffer allocated at the size, handed over as it is, as the bulk channel
    reads (a fair baseline: receive_some's per-read allocations and joins, or a copy of the
    buffer, cost more than the socket)."""
    buffer = bytearray(size)
    view = memoryview(buffer)
    filled = 0
    while filled < size:
        got = await stream.socket.recv_into(view[filled : filled + MiB])
        if not got:
            return bytearray()
        filled += got
    return buffer


async def wait_for_stdin_eof() -> None:
    stdin = trio.lowlevel.FdStream(os.dup(sys.stdin.fileno()))
    async with stdin:
        while await stdin.receive_some(4096):
            pass


# --- sender process ---


async def measure(total: int, blob_size: int, chunk_kib: int | None) -> None:
    from flockd.p2p.host import P2PService
    from flockd.p2p.limits import P2PLimits

    count = max(1, total // blob_size)
    payloads = [os.urandom(blob_size) for _ in range(2)]  # alternated: no blob is sent twice in a row
    receiver = subprocess.Popen(
        [
            sys.executable, "-m", "flockd.bench.blob", "--serve", "--blob-mib", str(blob_size // MiB),
            *(["--bulk-chunk-kib", str(chunk_kib)] if chunk_kib else []),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    sent = 0

    def next_payload() -> bytes:
        nonlocal sent
        sent += 1
        return payloads[sent % 2]

    ok = blob_size.to_bytes(8, "big")
    try:
        assert receiver.stdout is not None
        libp2p_addr, tcp_port = (await trio.to_thread.run_sync(receiver.stdout.readline)).split()
        host = P2PService(os.urandom(32), network_id=NETWORK, limits=bulk_limits(chunk_kib))
        stream_only = P2PService(os.urandom(32), network_id=NETWORK, limits=P2PLimits(bulk_min=2**62))
        async with trio.open_nursery() as nursery:
            await nursery.start(host.run)
            await nursery.start(stream_only.run)
            peer_id = await host.connect(libp2p_addr)
            await stream_only.connect(libp2p_addr)

            async def send_bulk() -> None:
                assert await host.send_blob(peer_id, KIND, next_payload()) == ok

            async def send_bulk_checked() -> None:
                assert await host.send_blob(peer_id, CHECKED_KIND, next_payload()) == ok

            async def send_stream_only() -> None:
                assert await stream_only.send_blob(peer_id, KIND, next_payload()) == ok

            tcp = await trio.open_tcp_stream("127.0.0.1", int(tcp_port))

            async def send_tcp() -> None:
                await tcp.send_all(blob_size.to_bytes(8, "big"))
                await tcp.send_all(next_payload())
                assert await receive_exactly(tcp, 8) == ok

            rounds = await interleaved([send_tcp, send_bulk, send_bulk_checked], count)
            stream_rate = await throughput(send_stream_only, count, blob_size)
            hash_rate = keccak_rate(payloads[0])
            await tcp.aclose()
            nursery.cancel_scope.cancel()
    finally:
        assert receiver.stdin is not None
        receiver.stdin.close()
        receiver.wait(timeout=30)

    chunk = f"{chunk_kib} KiB" if chunk_kib else f"{P2PLimits().bulk_chunk // 1024} KiB (default)"
    print(f"blob throughput: {count} x {blob_size // MiB} MiB, sender and receiver in two processes, 127.0.0.1")
    tcp_rate, bulk_rate, checked_rate = (rate(seconds, blob_size) for seconds in rounds)
    tcp_rounds = [blob_size * len(times) / sum(times) / 1e6 for times in rounds[0]]
    bulk_ratios = [sum(tcp) / sum(bulk) for tcp, bulk in zip(rounds[0], rounds[1], strict=True)]
    baseline = tcp_rate
    print(f"  load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; bulk chunk {chunk}; {len(rounds[0])} rounds")
    print(f"  keccak256 alone, one core                      {hash_rate:8.1f} MB/s")
    print(
        f"  plain TCP socket (trio), same request/reply    {baseline:8.1f} MB/s  (rounds {min(tcp_rounds):.1f} to {max(tcp_rounds):.1f})"
    )
    print(
        f"  /flock/blob/1 + bulk channel (aes-gcm)          {bulk_rate:8.1f} MB/s  ratio {bulk_rate / baseline:.3f}"
        f"  (rounds {min(bulk_ratios):.3f} to {max(bulk_ratios):.3f})"
    )
    print(f"  ... and the receiver checks each blob's keccak  {checked_rate:8.1f} MB/s  ratio {checked_rate / baseline:.3f}")
    print(f"  /flock/blob/1 stream only (noise+yamux+keccak)  {stream_rate:8.1f} MB/s  ratio {stream_rate / baseline:.3f}")


async def interleaved(sends: list[Callable[[], Awaitable[None]]], count: int) -> list[list[list[float]]]:
    """Seconds per blob, per round, per transport: after one warm-up blob each, round after
    round each transport sends its share of `count` blobs in turn, so that they all see the
    same load (on a shared machine plain TCP alone moved by up to 5x within one run when
    each transport ran once, one after the other)."""
    for send_one in sends:
        await send_one()
    rounds = min(count, 4)
    per_round = count // rounds
    timed: list[list[list[float]]] = [[] for _ in sends]
    for _ in range(rounds):
        for send_one, transport_rounds in zip(sends, timed, strict=True):
            times = []
            for _ in range(per_round):
                started = time.perf_counter()
                await send_one()
                times.append(time.perf_counter() - started)
            transport_rounds.append(times)
    return timed


def rate(rounds: list[list[float]], blob_size: int) -> float:
    """MB/s (10^6 bytes) over every timed blob of every round."""
    return blob_size * sum(len(times) for times in rounds) / sum(sum(times) for times in rounds) / 1e6


async def throughput(send_one: Callable[[], Awaitable[None]], count: int, blob_size: int) -> float:
    """MB/s (10^6 bytes) over `count` sequential request/reply round trips, after one warm-up."""
    await send_one()
    started = time.perf_counter()
    for _ in range(count):
        await send_one()
    return count * blob_size / (time.perf_counter() - started) / 1e6


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
