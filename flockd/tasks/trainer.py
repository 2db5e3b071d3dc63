"""A task's training in a child process of its own (``TrainingProcess``), for recipes that
ask for it (``Recipe.train_in_child``: the language models).

Why: a small transformer's training loop is many small torch calls, each taking the GIL
between kernels. Inside the daemon it shares the GIL with the event loop, libp2p and the
py-evm chain, and ran ~30% slower than the same training in a bare script (docs/lm.md).
A child process has a GIL of its own.

The child is this node's own code, started with ``python -m flockd.tasks.trainer``, and
talks over its stdin and stdout: frames of a 4-byte big-endian length and a msgpack map.
Nothing is pickled: the base model goes as safetensors bytes (its hash rechecked in the
child), the delta comes back as the codec's bytes. The child builds the same ``Worker``
(task spec, node index, data path, behaviour), so its deltas are byte for byte what an
in-process training would send. It stays up between rounds (the recipe, its data and the
base model load once) and ends with the task or when its stdin closes. If it fails or
dies, ``train`` raises ``TrainingProcessFailed`` (an FLError: the round machine declines
the round) and the next round starts a new child.
"""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO, Any

import msgpack

from flockd.fl.attacks import HONEST, Behaviour, parse_behaviour
from flockd.fl.checkpoint import checkpoint_bytes, load_checkpoint_bytes
from flockd.fl.errors import FLError
from flockd.fl.recipe import Metrics
from flockd.fl.tensors import Tensors
from flockd.logs import get_logger
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

log = get_logger("flockd.tasks")

_LENGTH = struct.Struct(">I")
MAX_FRAME = 1 << 31  # a base model's checkpoint; both ends are this node's own code


class TrainingProcessFailed(FLError):
    """The training process reported an error, or ended."""


def write_frame(stream: IO[bytes], message: dict[str, Any]) -> None:
    body = msgpack.packb(message, use_bin_type=True)
    stream.write(_LENGTH.pack(len(body)) + body)
    stream.flush()


def read_frame(stream: IO[bytes]) -> dict[str, Any]:
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError("the stream ended")
    (size,) = _LENGTH.unpack(head)
    if size > MAX_FRAME:
        raise ValueError(f"a frame of {size} bytes")
    body = stream.read(size)
    if len(body) < size:
        raise EOFError("the stream ended inside a frame")
    message = msgpack.unpackb(body, raw=False, strict_map_key=True)
    if not isinstance(message, dict):
        raise ValueError("a frame is not a map")
    return message


class TrainingProcess:
    """``train(base, round)`` of a ``Worker`` for this node, run in a child process.
    Blocking: call it from a worker thread. One training at a time."""

    def __init__(
        self, spec: TaskSpec, node_index: int, data_path: str | None, behaviour: Behaviour = HONEST
    ) -> None:
        self._hello = {"spec": spec.to_json(), "node": node_index, "data": data_path, "behaviour": str(behaviour)}
        self._child: subprocess.Popen[bytes] | None = None
        self._lock = threading.Lock()  # one training at a time
        self._closed = False

    def train(self, base: Tensors, round_number: int) -> bytes:
        with self._lock:
            try:
                child = self._running()
                assert child.stdin is not None and child.stdout is not None
                write_frame(child.stdin, {"round": round_number, "base": checkpoint_bytes(base)})
                reply = read_frame(child.stdout)
            except (OSError, EOFError, ValueError) as exc:
                self._stop()
                raise TrainingProcessFailed(f"the training process ended: {exc}") from None
        wire = reply.get("wire")
        if not isinstance(wire, bytes):
            raise TrainingProcessFailed(str(reply.get("error", "the training process sent no delta")))
        return wire

    def close(self) -> None:
        """End the child now, without waiting for a training in progress (whose thread
        then gets TrainingProcessFailed); no child starts after this."""
        self._closed = True
        child = self._child
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()

    def _running(self) -> subprocess.Popen[bytes]:
        if self._closed:
            raise TrainingProcessFailed("the task's training process was closed")
        if self._child is None or self._child.poll() is not None:
            # stderr is the daemon's own: the child's log lines go where the daemon's go. A
            # session of its own: a Ctrl-C meant for the daemon reaches the daemon, which
            # ends the child; if the daemon dies, the child ends at its stdin's EOF.
            self._child = subprocess.Popen(
                [sys.executable, "-m", "flockd.tasks.trainer"],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True,
            )
            assert self._child.stdin is not None
            write_frame(self._child.stdin, self._hello)
        return self._child

    def _stop(self) -> None:
        child, self._child = self._child, None
        if child is None:
            return
        if child.stdin is not None:
            child.stdin.close()  # the child's loop ends at EOF
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


class ChildTrainedWork:
    """A task's ``TaskWork``: the ``Worker``'s own scoring, aggregation and evaluation,
    and its training in a ``TrainingProcess`` (which it owns: ``close`` ends it)."""

    def __init__(self, worker: Worker, behaviour: Behaviour = HONEST) -> None:
        self.worker = worker
        self.trainer = TrainingProcess(worker.spec, worker.node_index, worker.data_path, behaviour)

    def initial_model(self) -> Tensors:
        return self.worker.initial_model()

    def train(self, base: Tensors, round_number: int) -> bytes:
        return self.trainer.train(base, round_number)

    def score(
        self, base: Tensors, deltas: Sequence[bytes | None], proposers: Sequence[bytes], whole_round: bool,
        round_number: int,
    ) -> tuple[int, ...]:
        return self.worker.score(base, deltas, proposers, whole_round, round_number)

    def aggregate(self, base: Tensors, deltas: Sequence[bytes]) -> Tensors:
        return self.worker.aggregate(base, deltas)

    def evaluate_test(self, state: Tensors) -> Metrics:
        return self.worker.evaluate_test(state)

    def close(self) -> None:
        self.trainer.close()


def serve(inp: IO[bytes], out: IO[bytes]) -> None:
    """The child's loop: the hello, then one reply per training request, until EOF."""
    hello = read_frame(inp)
    spec = TaskSpec.from_json(hello["spec"])
    worker = Worker(spec, int(hello["node"]), hello["data"], behaviour=parse_behaviour(hello["behaviour"]))
    while True:
        try:
            request = read_frame(inp)
        except EOFError:
            return
        try:
            base = load_checkpoint_bytes(request["base"])
            reply: dict[str, Any] = {"wire": worker.train(base, int(request["round"]))}
        except (FLError, MemoryError, KeyError, ValueError, TypeError) as exc:
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        write_frame(out, reply)


def main() -> None:
    from flockd.logs import configure_logging

    configure_logging("info")
    # The frames get the real stdout; anything a library prints goes to stderr, the log.
    frames = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    os.dup2(sys.stderr.fileno(), sys.stdout.fileno())
    serve(sys.stdin.buffer, frames)


if __name__ == "__main__":
    main()
