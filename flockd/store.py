"""What a node keeps of the learning on disk: models, deltas and each task's round history.

Models and deltas are content-addressed (the file name is the keccak-256 the chain
records), written whole or not at all (a temp file of the write's own, fsync, link), and
checked against their name when read back, so neither a crash nor a bit flip can pass a
wrong model off as right. A write that returns has its file in place, even while another
write of the same file is under way (two rounds with the same model, a rebuilt machine's
action beside the replaced one's). A file that does not hash to its name is removed when
read, so the node fetches or computes it again and can keep the good copy.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from flockd.files import TEMP_SUFFIX, write_new_file
from flockd.fl.checkpoint import (
    CheckpointError,
    checkpoint_bytes,
    load_checkpoint_bytes,
    model_hash,
)
from flockd.fl.codec import delta_hash
from flockd.fl.tensors import Tensors


class StoreError(Exception):
    """A stored file is missing or does not match its content address."""


class Store:
    """One per node, opened before its first write (it clears the temp files of writes a
    kill cut short)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        for sub in ("models", "deltas", "tasks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for sub in ("models", "deltas"):
            for leftover in (root / sub).glob(f".*{TEMP_SUFFIX}"):
                leftover.unlink(missing_ok=True)

    # -- deltas: the exact bytes a proposer committed to on chain --------------------------

    def put_delta(self, data: bytes) -> bytes:
        digest = delta_hash(data)
        self._put(self.root / "deltas" / f"{digest.hex()}.delta", data)
        return digest

    def get_delta(self, digest: bytes) -> bytes | None:
        path = self.root / "deltas" / f"{digest.hex()}.delta"
        if not path.exists():
            return None
        data = path.read_bytes()
        if delta_hash(data) != digest:
            path.unlink(missing_ok=True)
            raise StoreError(f"{path} does not hash to its name: removed, to be fetched again")
        return data

    # -- models: safetensors checkpoints named by model hash ------------------------------

    def put_model(self, state: Mapping[str, np.ndarray], metadata: Mapping[str, str] | None = None) -> bytes:
        digest = model_hash(state)
        self._put(self.model_path(digest), checkpoint_bytes(state, metadata))
        return digest

    def put_model_bytes(self, data: bytes, digest: bytes) -> Tensors:
        """Store a checkpoint received from a peer, after checking it is the model `digest`."""
        state = load_checkpoint_bytes(data, expected_hash=digest)
        self._put(self.model_path(digest), data)
        return state

    def model_path(self, digest: bytes) -> Path:
        return self.root / "models" / f"{digest.hex()}.safetensors"

    def has_model(self, digest: bytes) -> bool:
        return self.model_path(digest).exists()

    def get_model_bytes(self, digest: bytes) -> bytes | None:
        path = self.model_path(digest)
        return path.read_bytes() if path.exists() else None

    def load_model(self, digest: bytes) -> Tensors:
        """StoreError when the model is not held, or its file is not that model (then the
        file is removed, to be fetched or computed again)."""
        data = self.get_model_bytes(digest)
        if data is None:
            raise StoreError(f"model {digest.hex()} is not in {self.root / 'models'}")
        try:
            return load_checkpoint_bytes(data, expected_hash=digest)
        except CheckpointError as exc:
            self.model_path(digest).unlink(missing_ok=True)
            raise StoreError(f"{self.model_path(digest)} is not model {digest.hex()} ({exc}): removed") from exc

    # -- round history: one JSON line per finished round ----------------------------------

    def append_history(self, task_id: int, record: Mapping[str, Any], log: str = "history") -> None:
        """Append one record to a task's log ("history": finished rounds; "ballots": the
        votes and salt behind each vote commit, needed to reveal after a restart)."""
        path = self.root / "tasks" / f"{task_id}.{log}.jsonl"
        line = json.dumps(record, sort_keys=True) + "\n"
        with open(path, "a") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def history(self, task_id: int, log: str = "history") -> list[dict[str, Any]]:
        path = self.root / "tasks" / f"{task_id}.{log}.jsonl"
        if not path.exists():
            return []
        records = []
        for line in path.read_text().splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                break  # a line torn by a crash is the last one; the chain has the truth
        return records

    @staticmethod
    def _put(path: Path, data: bytes) -> None:
        # Content-addressed: a file already in place holds these bytes.
        with contextlib.suppress(FileExistsError):
            write_new_file(path, data, mode=0o644)
