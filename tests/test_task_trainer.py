"""Training in a child process (flockd.tasks.trainer): the same bytes as in-process
training, failures as TrainingProcessFailed (the round machine declines), a dead child
replaced, and nothing started after close."""

from __future__ import annotations

import functools
import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.fl.attacks import parse_behaviour
from flockd.tasks import trainer
from flockd.tasks.spec import TaskSpec
from flockd.tasks.trainer import ChildTrainedWork, TrainingProcessFailed, read_frame, write_frame
from flockd.tasks.work import Worker

SPEC = TaskSpec("digits-mlp", config={"epochs": 1}, num_nodes=4, seed=3)


@pytest.fixture(scope="module")
def child_work():
    work = ChildTrainedWork(Worker(SPEC, 1))
    yield work
    work.close()


def test_the_child_sends_the_bytes_in_process_training_sends(child_work):
    base = child_work.initial_model()
    assert child_work.train(base, 0) == Worker(SPEC, 1).train(base, 0)
    assert child_work.train(base, 1) == Worker(SPEC, 1).train(base, 1)  # the same child, round 1


def test_a_malicious_behaviour_reaches_the_child():
    behaviour = parse_behaviour("sign-flip:4")
    work = ChildTrainedWork(Worker(SPEC, 2, behaviour=behaviour), behaviour)
    try:
        base = work.initial_model()
        assert work.train(base, 0) == Worker(SPEC, 2, behaviour=behaviour).train(base, 0)
    finally:
        work.close()


def test_a_failed_training_and_a_dead_child_are_training_failures(child_work, monkeypatch):
    base = child_work.initial_model()
    broken = {name: value for name, value in base.items() if not name.endswith("bias")}
    with pytest.raises(TrainingProcessFailed, match="StateError|layout"):
        child_work.train(broken, 0)  # the child answers with the error and lives on
    first = child_work.trainer._child
    assert first is not None and first.poll() is None

    def die_then_write(stream, message):  # the child dies while the request goes out
        first.kill()
        first.wait()
        trainer.write_frame.__wrapped__(stream, message)

    monkeypatch.setattr(trainer, "write_frame", functools.wraps(trainer.write_frame)(die_then_write))
    with pytest.raises(TrainingProcessFailed, match="ended"):
        child_work.train(base, 0)
    monkeypatch.undo()
    assert child_work.train(base, 0) == Worker(SPEC, 1).train(base, 0)  # a new child
    assert child_work.trainer._child is not first
    first_again = child_work.trainer._child
    first_again.kill()  # a child that died between rounds is replaced before it is asked
    first_again.wait()
    assert child_work.train(base, 1) == Worker(SPEC, 1).train(base, 1)


def test_nothing_trains_after_close():
    work = ChildTrainedWork(Worker(SPEC, 0))
    base = work.initial_model()
    work.train(base, 0)
    child = work.trainer._child
    work.close()
    assert child is not None and child.poll() is not None
    with pytest.raises(TrainingProcessFailed, match="closed"):
        work.train(base, 0)


def test_frames_round_trip():
    stream = io.BytesIO()
    write_frame(stream, {"round": 3, "base": b"\x00" * 10})
    stream.seek(0)
    assert read_frame(stream) == {"round": 3, "base": b"\x00" * 10}
    with pytest.raises(EOFError):
        read_frame(stream)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_read_as_a_frame_fail_cleanly(data):
    try:
        message = read_frame(io.BytesIO(data))
    except (EOFError, ValueError):
        return
    assert isinstance(message, dict)
