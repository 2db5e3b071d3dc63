"""The causal-LM LoRA recipe end to end through the worker, on a tiny torch causal model and
a byte tokenizer (the Hugging Face loader is the one part not exercised here): base
loading refusals, bits per character, masking, text formats, and a federated round."""

import json
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from flockd.fl.checkpoint import model_hash
from flockd.fl.data import DataError, DataSpec
from flockd.fl.recipe import BadRecipeConfig
from flockd.lm.accel import DEVICE_ENV, DTYPE_ENV, Accelerator, BadAcceleratorSetting
from flockd.lm.base import (
    BASES_ENV,
    BaseHashMismatch,
    MissingBaseFile,
    PickleRefused,
    RemoteCodeRefused,
    base_hash,
    check_base_dir,
    export_model_dir,
)
from flockd.lm.causal import LN2, bits_per_character, score_text, tokenize
from flockd.lm.recipe import CAUSAL_LORA_DEFAULTS, CausalLoraRecipe
from flockd.lm.text import Example, carve, chat, paragraphs, pieces, read_examples
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker
from flockd.testnet.progress import summary_line

pytestmark = pytest.mark.usefixtures("recipes_from_this_module")


class ByteTokenizer:
    """One token per UTF-8 byte; id 256 begins a sequence, 257 pads."""

    bos_id, pad_id = 256, 257

    def encode(self, text: str) -> list[int]:
        return list(text.encode())


class TinyCausal(nn.Module):
    """Token embedding plus the running mean of the previous ones (causal), a projection
    named like an attention one, and an output layer."""

    def __init__(self, dim: int, vocab: int = 258) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.q_proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(ids)
        steps = torch.arange(1, ids.shape[1] + 1, dtype=h.dtype).view(1, -1, 1)
        context = torch.cumsum(h, dim=1) / steps
        return self.head(torch.tanh(self.q_proj(h + context)))


class ToyCausal(CausalLoraRecipe):
    name = "toy-causal"
    default_config: ClassVar[dict[str, Any]] = {
        **CAUSAL_LORA_DEFAULTS, "domains": ["json", "textwrap"], "seq_len": 64, "batch_size": 8,
        "steps": 15, "lr": 1e-2, "max_chars": 256, "lora_rank": 4, "lora_alpha": 8.0, "lora_targets": ["q_proj", "head"],
    }

    def load_base(self, path):
        config = json.loads((path / "config.json").read_text())
        model = TinyCausal(config["hidden_size"])
        model.load_state_dict(load_file(path / "model.safetensors"))
        return model, ByteTokenizer()


def write_base(path, seed: int = 0) -> bytes:
    path.mkdir(parents=True)
    torch.manual_seed(seed)
    save_file(TinyCausal(16).state_dict(), path / "model.safetensors")
    (path / "config.json").write_text(json.dumps({"model_type": "tiny-causal", "hidden_size": 16}))
    (path / "tokenizer.json").write_text(json.dumps({"model": {"type": "bytes"}}))
    return base_hash(path)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bases")
    digest = write_base(root / "staging")
    (root / "staging").rename(root / digest.hex())
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BASES_ENV, str(root))
        yield root, digest


def spec_for(digest: bytes, **config) -> TaskSpec:
    return TaskSpec(f"{__name__}:ToyCausal", config={"base_hash": "0x" + digest.hex(), **config}, num_nodes=2, seed=1)


def test_base_directories_that_must_not_load_are_refused(tmp_path):
    good = tmp_path / "good"
    digest = write_base(good)
    assert check_base_dir(good) == digest
    cases = {
        "missing tokenizer": (lambda p: (p / "tokenizer.json").unlink(), MissingBaseFile),
        "auto_map": (lambda p: (p / "config.json").write_text('{"auto_map": {"AutoModel": "x.Y"}}'), RemoteCodeRefused),
        "code": (lambda p: (p / "modeling_x.py").write_text("import os"), RemoteCodeRefused),
        "pickle": (lambda p: (p / "pytorch_model.bin").write_bytes(b"\x80\x04"), PickleRefused),
    }
    for name, (spoil, error) in cases.items():
        path = tmp_path / name.replace(" ", "-")
        write_base(path)
        spoil(path)
        with pytest.raises(error):
            check_base_dir(path)
    with pytest.raises(MissingBaseFile):
        check_base_dir(tmp_path / "nowhere")


def test_a_node_with_another_base_or_none_is_refused(store):
    root, digest = store
    other = bytes(32)
    with pytest.raises(MissingBaseFile):
        Worker(spec_for(other), 0)
    impostor = root / ("ab" * 32)
    write_base(impostor, seed=9)  # another model filed under a hash that is not its own
    with pytest.raises(BaseHashMismatch):
        Worker(spec_for(bytes.fromhex("ab" * 32)), 0)
    with pytest.raises(BadRecipeConfig):
        ToyCausal({"base_hash": "not a hash"})
    with pytest.raises(BadRecipeConfig):
        ToyCausal({})  # a task must name its base


class Uniform(nn.Module):
    def forward(self, ids):
        return torch.zeros(*ids.shape, 256)


class CharTokenizer:
    bos_id, pad_id = 0, 0

    def encode(self, text: str) -> list[int]:
        return [ord(c) % 256 for c in text]


def test_bits_per_character_known_answers():
    assert bits_per_character(10 * LN2, 5) == pytest.approx(2.0)
    text = [Example((("ab", True),)), Example((("xyz", False), ("é€", True)))]
    # One token per byte and a uniform guess over 256: 8 bits for every byte, exactly.
    byte_score = score_text(Uniform(), tokenize(text, ByteTokenizer(), 64), 257, 4)
    assert byte_score.target_bytes == 2 + 5 and byte_score.tokens == 7
    assert byte_score.bits_per_character == pytest.approx(8.0, abs=1e-6)
    # One token per character: 4 tokens over 7 bytes, log2(256) = 8 bits each.
    char_score = score_text(Uniform(), tokenize(text, CharTokenizer(), 64), 0, 4)
    assert char_score.tokens == 4 and char_score.bits_per_character == pytest.approx(4 * 8 / 7, abs=1e-6)


def test_chat_format_trains_and_scores_only_the_assistant():
    record = chat([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And ünï?"},
        {"role": "assistant", "content": "Ünï."},
    ])
    tokenized = tokenize([record], ByteTokenizer(), 1024)
    (window,) = tokenized.windows
    scored = bytes(t for t, target in zip(window.ids, window.targets, strict=True) if target)
    assert scored == "4Ünï.".encode()
    assert tokenized.target_bytes == len(scored) == tokenized.target_tokens
    assert "Be brief" in record.text and "<|assistant|>" in record.text
    for bad in ([], [{"role": "user", "content": "hi"}], [{"role": "root", "content": "x"}], [{"role": "user"}]):
        with pytest.raises(DataError):
            chat(bad)


def test_long_examples_are_windowed_so_every_target_token_is_scored_once():
    long = Example((("p" * 10, False), ("abcdefghij" * 7, True)))
    tokenized = tokenize([long], ByteTokenizer(), 8)
    assert len(tokenized) > 5 and all(len(w.ids) <= 8 and not w.targets[0] for w in tokenized.windows)
    assert tokenized.target_tokens == 70 == tokenized.target_bytes
    assert score_text(Uniform(), tokenized, 257, 3).bits_per_character == pytest.approx(8.0, abs=1e-6)


def test_text_files_and_deterministic_splits(tmp_path):
    jsonl = tmp_path / "own.jsonl"
    jsonl.write_text(
        '{"prompt": "Q: 1+1? A:", "completion": " 2"}\n\n'
        '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}\n'
    )
    first, second = read_examples(jsonl, 100)
    assert first.segments == (("Q: 1+1? A:", False), (" 2", True)) and second.target_bytes == 5
    txt = tmp_path / "own.txt"
    txt.write_text("one para\n\n\n  two para  \n\nthree " + "word " * 40)
    assert [e.text for e in read_examples(txt, 64)][:2] == ["one para", "two para"]
    assert "".join(pieces("a b c d e f", 3)) == "a b c d e f"
    assert all(len(p) <= 3 for p in pieces("a b c d e f", 3))
    for content in ('{"prompt": 1, "completion": "x"}', '{"text": "x"}', "[[[[" * 100, "not json"):
        (tmp_path / "bad.jsonl").write_text(content)
        with pytest.raises(DataError):
            read_examples(tmp_path / "bad.jsonl", 100)
    (tmp_path / "bad.csv").write_text("a,b")
    with pytest.raises(DataError):
        read_examples(tmp_path / "bad.csv", 100)
    examples = paragraphs("\n\n".join(f"paragraph {i}" for i in range(50)), 100)
    train, val, test = carve(examples, seed=3, val_fraction=0.2, test_fraction=0.1)
    assert (len(train), len(val), len(test)) == (35, 10, 5)
    assert {e.text for e in train} | {e.text for e in val} | {e.text for e in test} == {e.text for e in examples}
    assert carve(examples, 3, 0.2, 0.1) == (train, val, test) != carve(examples, 4, 0.2, 0.1)


@pytest.fixture(scope="module")
def workers(store):
    _, digest = store
    return [Worker(spec_for(digest), i) for i in range(2)]


def test_a_federated_round_lowers_bits_per_character_and_agrees_on_bytes(workers):
    base = workers[0].initial_model()
    wire = [w.train(base, 0) for w in workers]
    assert all(set(w.decode(d).tensors) == set(workers[0].layout) for w, d in zip(workers, wire, strict=True))
    assert len(wire[0]) < 20_000  # the adapter travels, not the 16-dim model's 10k weights
    votes = [w.score(base, wire, [bytes(20), bytes([1]) * 20], False, 0) for w in workers]
    new = workers[0].aggregate(base, wire)
    assert model_hash(workers[1].aggregate(base, wire[::-1])) == model_hash(new)
    before, after = workers[0].evaluate_test(base), workers[0].evaluate_test(new)
    assert after["loss"] < before["loss"], (before, after)
    assert votes == [(1, 1), (1, 1)]
    assert workers[0].test_split.target_bytes > 0 and isinstance(workers[0].test_split.target_bytes, int)


def test_training_in_bfloat16_sends_another_adapter_that_every_node_aggregates_alike(workers, monkeypatch):
    base = workers[0].initial_model()
    plain = workers[0].train(base, 0)
    monkeypatch.setenv(DTYPE_ENV, "bfloat16")
    half = workers[0].train(base, 0)
    assert half != plain  # the node's own training changed ...
    assert workers[0].decode(half).tensors.keys() == workers[0].decode(plain).tensors.keys()  # ... float32 on the wire
    monkeypatch.delenv(DTYPE_ENV)
    # ... and the state every node computes from the bytes does not depend on who trained them
    assert model_hash(workers[0].aggregate(base, [half, plain])) == model_hash(workers[1].aggregate(base, [plain, half]))
    assert workers[0].train(base, 0) == plain


def test_cuda_asked_for_without_a_gpu_trains_on_the_cpu_and_bad_settings_are_refused(workers, monkeypatch):
    base = workers[0].initial_model()
    plain = workers[0].train(base, 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    assert Accelerator.from_env() == Accelerator("cpu", "float32")
    assert workers[0].train(base, 0) == plain
    for env, value in ((DEVICE_ENV, "tpu"), (DTYPE_ENV, "float16")):
        monkeypatch.setenv(env, value)
        with pytest.raises(BadAcceleratorSetting, match=env):
            workers[0].train(base, 0)  # an FLError: a daemon declines the round and says why
        monkeypatch.delenv(env)


def test_a_node_with_its_own_text_has_no_test_split(store, tmp_path):
    _, digest = store
    own = tmp_path / "own.txt"
    own.write_text("\n\n".join(f"note {i}: the cache keeps {i} entries" for i in range(30)))
    recipe = ToyCausal({"base_hash": "0x" + digest.hex()})
    spec = DataSpec(path=str(own))
    train, val = recipe.load_data(spec)
    assert recipe.load_test(spec) is None and len(train) > len(val) > 0
    metrics = recipe.evaluate(recipe.build_model(0), val)
    assert np.isfinite(metrics["loss"]) and 0 <= metrics["accuracy"] <= 1


def test_flockd_lm_imports_checks_and_lists_bases(tmp_path, monkeypatch, capsys):
    from flockd.cli import flockd_main

    monkeypatch.setenv(BASES_ENV, str(tmp_path / "store"))
    digest = write_base(tmp_path / "built")
    assert flockd_main(["lm", "check-base", str(tmp_path / "built")]) == 0
    assert capsys.readouterr().out.strip() == "0x" + digest.hex()
    assert flockd_main(["lm", "import-base", str(tmp_path / "built")]) == 0
    assert flockd_main(["lm", "import-base", str(tmp_path / "built")]) == 0  # already there: checked, kept
    assert base_hash(tmp_path / "store" / digest.hex()) == digest
    capsys.readouterr()
    assert flockd_main(["lm", "list-bases"]) == 0
    assert capsys.readouterr().out.split()[0] == "0x" + digest.hex()
    (tmp_path / "built" / "config.json").write_text('{"auto_map": {}}')
    assert flockd_main(["lm", "check-base", str(tmp_path / "built")]) == 1
    assert "remote code" in capsys.readouterr().err
    assert flockd_main(["lm", "import-base", str(tmp_path / "built")]) == 1
    assert sorted(p.name for p in (tmp_path / "store").iterdir()) == [digest.hex()]  # nothing half-copied left


def test_the_federated_model_exports_as_a_base_directory(workers, store, tmp_path):
    root, digest = store
    base = workers[0].initial_model()
    new = workers[0].recipe.model_weights(workers[0].aggregate(base, [workers[0].train(base, 1)]))
    out = export_model_dir(root / digest.hex(), new, tmp_path / "export")
    check_base_dir(out)  # loadable by the same rules as any base
    loaded = load_file(out / "model.safetensors")
    assert loaded.keys() == new.keys() and all(np.array_equal(loaded[n].numpy(), new[n]) for n in new)
    model, _ = workers[0].recipe.load_base(out)
    ids = torch.tensor([list(b"federated")])
    reference = workers[0].recipe.build_model(0)
    reference.load_state_dict({n: torch.from_numpy(v) for n, v in new.items()})
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids))
    with pytest.raises(FileExistsError):
        export_model_dir(root / digest.hex(), new, out)


def test_the_testnet_live_view_shows_bits_per_character_for_an_lm_task():
    entry = {"accepted": 2, "rejected": 1, "test_accuracy": 0.0423, "test_loss": 3.5764}
    status = {"recipe": "lm-lora", "round": 1, "rounds": 3, "state": "running", "history": [entry]}
    assert summary_line([status]) == "round 1/3 · accepted 2 rejected 1 · accuracy 0.042 · bits per character 3.5764"
    assert "bits per character" not in summary_line([{**status, "recipe": "digits-mlp"}])
