"""What ``scripts/testnet --recipe lm-lora`` needs beyond a classifier's run: a base model
(built once here, cached in the store every daemon reads) and a task config and round
windows sized for a few minutes on 2 shared cores."""

from __future__ import annotations

from typing import Any

LM_RECIPES = ("lm-lora",)
# A lighter base than build-base's default (~1M parameters, not ~4.5M): on a 2-core machine
# shared with other work the default's pretraining and every round's training take too
# long for a run of minutes. Same architecture and corpus; cached like any build.
TESTNET_BASE_BUILD: dict[str, Any] = {"vocab": 2048, "hidden": 128, "layers": 2, "heads": 4, "ffn": 384, "steps": 200, "threads": 1}
# Smaller than lm-lora's defaults so that 4 daemons finish in minutes on 2 shared cores:
# four non-IID domains cut to 40k characters each, 12 Adam steps a round on 8 x 128 tokens.
TESTNET_CONFIG: dict[str, Any] = {"domain_chars": 40_000, "steps": 12, "batch_size": 8, "seq_len": 128}
# Proposers train for tens of seconds and voters score several adapters: windows in
# blocks (a window closes early once everything it waits for is in; a node joins
# windows of at most policy.max_window_blocks = 256).
TESTNET_WINDOWS = {"propose_blocks": 240, "commit_blocks": 200, "reveal_blocks": 12}


def lm_task(recipe: str) -> tuple[dict[str, Any], dict[str, int]]:
    """(recipe config, round windows) for ``recipe``: nothing for a classifier; for an LM
    recipe the testnet's base, built now if the store does not hold it yet."""
    if recipe not in LM_RECIPES:
        return {}, {}
    from flockd.lm.build import BaseBuild, build_base

    built = build_base(BaseBuild(**TESTNET_BASE_BUILD))
    return {"base_hash": "0x" + built.base_hash.hex(), **TESTNET_CONFIG}, dict(TESTNET_WINDOWS)
