"""What a node keeps on disk of each competition it takes part in: its role, the spec,
and the secrets it must still reveal after a restart (salts, its scores), plus the
evaluation set's bytes once it holds them. One JSON file per competition, replaced whole."""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

from flockd.files import write_new_file

Role = Literal["creator", "trainer", "validator"]
ROLES: tuple[Role, ...] = ("creator", "trainer", "validator")


class RecordError(Exception):
    """A competition record on disk is unreadable."""


@dataclass(frozen=True)
class Membership:
    competition_id: int
    role: Role
    spec: dict[str, Any]
    eval_salt: str | None = None  # creator: hex
    eval_set_hash: str | None = None  # creator: hex
    model_hash: str | None = None  # trainer: its submission
    submission_salt: str | None = None  # trainer: hex
    scores: list[int] | None = None  # validator: the vector it committed
    scores_salt: str | None = None  # validator: hex
    done: list[str] = field(default_factory=list)  # driver steps finished (idempotence)

    def with_done(self, step: str) -> Membership:
        return self if step in self.done else replace(self, done=[*self.done, step])


class Records:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _path(self, competition_id: int, suffix: str) -> Path:
        return self.root / f"{competition_id}.{suffix}"

    def save(self, m: Membership) -> None:
        path = self._path(m.competition_id, "json")
        tmp = path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        write_new_file(tmp, json.dumps(asdict(m), indent=1, sort_keys=True).encode(), mode=0o600)
        tmp.replace(path)

    def load_all(self) -> dict[int, Membership]:
        out = {}
        for path in sorted(self.root.glob("*.json")):
            try:
                m = Membership(**json.loads(path.read_text()))
            except (ValueError, TypeError) as exc:
                raise RecordError(f"{path} is corrupt: {exc}") from None
            out[m.competition_id] = m
        return out

    def put_pending_eval_set(self, commitment: bytes, salt: bytes, data: bytes) -> Path:
        """A creator's set and salt, kept before its competition exists: a crash between
        the create transaction and `adopt_eval_set` must not lose what opens the commitment."""
        path = self.root / f"pending-{commitment.hex()}.eval"
        path.unlink(missing_ok=True)
        write_new_file(path, salt + data, mode=0o600)
        return path

    def adopt_eval_set(self, pending: Path, competition_id: int) -> None:
        pending.replace(self._path(competition_id, "eval"))

    def put_eval_set(self, competition_id: int, salt: bytes, data: bytes) -> None:
        path = self._path(competition_id, "eval")
        with contextlib.suppress(FileExistsError):  # the same set, checked by the caller
            write_new_file(path, salt + data, mode=0o600)

    def eval_set(self, competition_id: int) -> tuple[bytes, bytes] | None:
        """(salt, bytes) of the evaluation set, if this node holds it."""
        path = self._path(competition_id, "eval")
        if not path.exists():
            return None
        blob = path.read_bytes()
        return blob[:32], blob[32:]
