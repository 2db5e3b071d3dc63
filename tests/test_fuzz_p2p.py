"""Fuzzing the p2p decoders: gossip envelopes, blob frames, peer-exchange records.

The targets (inputs and property) live in flockd/bench/_fuzz_p2p.py; `scripts/bench fuzz`
runs the same targets for much longer."""

from __future__ import annotations

import pytest

from flockd.bench import _fuzz_p2p
from flockd.bench._fuzz_base import Target, run_target

TARGETS = _fuzz_p2p.targets()


@pytest.mark.parametrize("target", TARGETS, ids=lambda t: t.name)
def test_decoder_raises_only_its_errors_within_its_allocation_bound(target: Target) -> None:
    run_target(target, target.examples)
