import os
import threading

import numpy as np
import pytest
from held_fsync import HeldFsync

from flockd.fl.checkpoint import CheckpointError, model_hash
from flockd.fl.codec import encode_delta
from flockd.store import Store, StoreError


def state(seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"w": rng.normal(size=(3, 4)).astype(np.float32), "b": rng.normal(size=4).astype(np.float32)}


def test_models_and_deltas_are_content_addressed(tmp_path):
    store = Store(tmp_path)
    digest = store.put_model(state(1))
    assert digest == model_hash(state(1))
    assert store.put_model(state(1)) == digest  # idempotent
    loaded = store.load_model(digest)
    assert all(np.array_equal(loaded[k], state(1)[k]) for k in loaded)
    data = encode_delta(state(2))
    d = store.put_delta(data)
    assert store.get_delta(d) == data
    assert store.get_delta(b"\0" * 32) is None


def test_a_corrupted_file_is_never_served_and_makes_room_for_a_good_copy(tmp_path):
    """A file that does not hash to its name is no copy of what it names: refused with
    StoreError and removed, so the node fetches or computes it again and can keep it."""
    store = Store(tmp_path)
    data = encode_delta(state(3))
    d = store.put_delta(data)
    path = tmp_path / "deltas" / f"{d.hex()}.delta"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="does not hash to its name"):
        store.get_delta(d)
    assert store.get_delta(d) is None
    assert store.put_delta(data) == d and store.get_delta(d) == data
    m = store.put_model(state(4))
    store.model_path(m).write_bytes(store.model_path(m).read_bytes()[:-3])
    with pytest.raises(StoreError, match="is not model"):
        store.load_model(m)
    assert not store.has_model(m)
    store.put_model(state(4))
    assert all(np.array_equal(v, state(4)[k]) for k, v in store.load_model(m).items())


def test_a_peer_model_must_match_its_hash(tmp_path):
    source, sink = Store(tmp_path / "a"), Store(tmp_path / "b")
    digest = source.put_model(state(5))
    data = source.get_model_bytes(digest)
    with pytest.raises(CheckpointError):
        sink.put_model_bytes(data, model_hash(state(6)))
    assert not sink.has_model(model_hash(state(6)))
    sink.put_model_bytes(data, digest)
    assert sink.has_model(digest)


def test_history_survives_a_torn_last_line(tmp_path):
    store = Store(tmp_path)
    store.append_history(1, {"round": 0, "accepted": 2})
    store.append_history(1, {"round": 1, "accepted": 1})
    with open(tmp_path / "tasks" / "1.history.jsonl", "a") as f:
        f.write('{"round": 2, "acc')  # a crash mid-write
    assert [r["round"] for r in store.history(1)] == [0, 1]
    assert store.history(2) == []


# -- a write that returns has put the file in place ------------------------------------------


def test_a_model_written_twice_at_once_is_in_place_when_either_write_returns(tmp_path, monkeypatch):
    """Two writes of the same model in one process (two rounds with the same model fetched
    at once, or a rebuilt machine's aggregate beside the replaced one's): the second must
    not return before the model is in the store, whatever the first is doing."""
    store = Store(tmp_path)
    digest = model_hash(state(7))
    held = HeldFsync(digest.hex(), os.fsync)
    monkeypatch.setattr(os, "fsync", held)
    first = threading.Thread(target=store.put_model, args=(state(7),))
    first.start()
    try:
        assert held.holding.wait(10)
        assert store.put_model(state(7)) == digest
        assert store.has_model(digest)
        assert all(np.array_equal(v, state(7)[k]) for k, v in store.load_model(digest).items())
    finally:
        held.release.set()
        first.join(10)
    assert store.has_model(digest)
    assert not [p for p in (tmp_path / "models").iterdir() if p.name.startswith(".")]  # no temp file left


def test_a_write_killed_mid_way_does_not_hide_later_writes(tmp_path):
    """kill -9 in the middle of a write leaves its temp file; a later process (whose pid
    may be the dead one's again) still writes the model, and the leftover is cleared."""
    store = Store(tmp_path)
    digest = model_hash(state(8))
    leftover = store.model_path(digest).with_name(f".{store.model_path(digest).name}.{os.getpid()}.tmp")
    leftover.write_bytes(b"the first half of a checkpoi")
    assert Store(tmp_path).put_model(state(8)) == digest
    assert store.has_model(digest)
    store.load_model(digest)
    assert not leftover.exists()
