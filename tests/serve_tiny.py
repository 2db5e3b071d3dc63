"""A tiny language model for the serving tests: built here by ``flockd lm build-base``'s
code in seconds (a random-ish 20-step Llama, so its text means nothing), cached for the
whole test session in one store."""

from pathlib import Path

import pytest

from flockd.lm.base import BASES_ENV
from flockd.lm.build import BaseBuild, build_base

TINY = BaseBuild(vocab=512, hidden=32, layers=2, heads=2, ffn=64, seq_len=64, batch_size=8, steps=20, threads=1)


def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(BASES_ENV, str(tmp_path_factory.getbasetemp() / "serve-bases"))
        return build_base(TINY).path
