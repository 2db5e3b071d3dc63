import numpy as np
import pytest

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


def test_a_corrupted_file_is_never_served(tmp_path):
    store = Store(tmp_path)
    d = store.put_delta(encode_delta(state(3)))
    path = tmp_path / "deltas" / f"{d.hex()}.delta"
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(StoreError, match="does not hash to its name"):
        store.get_delta(d)
    m = store.put_model(state(4))
    store.model_path(m).write_bytes(store.model_path(m).read_bytes()[:-3])
    with pytest.raises(CheckpointError):
        store.load_model(m)


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
