"""What ``scripts/testnet --recipe lm-lora`` needs beyond a classifier's run: a base model
(built once here, cached in the store every daemon reads) and a task config and round
windows sized for a few minutes on 2 shared cores."""

from __future__ import annotations

from pathlib import Path
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


SAMPLE_PROMPT = "Return a new array of given shape"
SAMPLE_TOKENS = 24


def lm_report(
    config: dict[str, Any], nodes: int, seed: int, final_model: Path, outdir: Path, rounds: int = 0
) -> dict[str, Any]:
    """What an LM run's report adds, computed here from the base and node0's exported final
    model (``model_export``): bits per character on every domain's test split before and
    after, the bytes of one adapter on the wire, a greedy text sample before and after, and
    the final model as a Hugging Face directory (``outdir/model``) transformers loads. With
    ``rounds``, also local-only training for as many rounds (``flockd.lm.local_only``),
    the lower bound the federation must beat."""
    from flockd.fl.checkpoint import load_checkpoint
    from flockd.fl.codec import encode_delta
    from flockd.fl.data import DataSpec
    from flockd.fl.recipe import load_recipe
    from flockd.fl.tensors import load_model_state, model_state, shapes
    from flockd.lm.base import export_model_dir, parse_hash, resolve_base
    from flockd.lm.hf import HFTokenizer, LmLora, greedy_text
    from flockd.lm.lora import fresh_adapter

    recipe = load_recipe("lm-lora", config)
    if not (isinstance(recipe, LmLora) and isinstance(recipe.tokenizer, HFTokenizer)):
        raise TypeError("lm-lora is not flockd.lm.hf.LmLora")
    tokenizer = recipe.tokenizer
    model = recipe.build_model(0)
    base = model_state(model)
    recorded = load_checkpoint(final_model, expected_shapes=shapes(recipe.initial_state(base, 0)))
    final = recipe.model_weights(recorded)  # the residual weights with the carried adapter folded in
    data = DataSpec(num_nodes=nodes, seed=seed)
    domains = recipe.config["domains"]
    tests = {name: recipe.domain_test(data, i) for i, name in enumerate(domains)}
    pooled = recipe.load_test(data)
    assert pooled is not None  # the demo corpus always has a test split
    figures: dict[str, Any] = {}
    for label, state in (("base", base), ("final", final)):
        load_model_state(model, state)
        figures[label] = {
            "bpc_by_domain": {name: recipe.evaluate(model, text)["loss"] for name, text in tests.items()},
            "bpc_pooled": recipe.evaluate(model, pooled)["loss"],
            "sample": greedy_text(model, tokenizer, SAMPLE_PROMPT, SAMPLE_TOKENS),
        }
        by_domain = figures[label]["bpc_by_domain"].values()
        figures[label]["bpc_mean"] = sum(by_domain) / len(by_domain)
    if rounds:
        from flockd.lm.local_only import local_only_bpc
        from flockd.tasks.spec import TaskSpec

        spec = TaskSpec("lm-lora", config=config, num_nodes=nodes, seed=seed)
        lone = local_only_bpc(spec, rounds, list(tests.values()))
        figures["local_only"] = {**lone, "bpc_by_domain": dict(zip(tests, lone["bpc_by_domain"], strict=True))}
    exported = export_model_dir(resolve_base(parse_hash(config["base_hash"])), final, outdir / "model")
    return {
        **figures,
        "adapter_bytes": len(encode_delta(fresh_adapter(recipe.lora(), shapes(base), 0))),
        "sample_prompt": SAMPLE_PROMPT,
        "exported_model_dir": str(exported),
    }


def lm_markdown(lm: dict[str, Any]) -> str:
    """The report.md section of ``lm_report``'s figures."""
    domains = list(lm["base"]["bpc_by_domain"])
    rows = [
        "## Language model", "",
        f"Bits per character on each domain's test split (lower is better); the per-round "
        f"`loss` above is the same measure on all domains pooled. One adapter on the wire: "
        f"{lm['adapter_bytes']:,} bytes.", "",
        "| model | " + " | ".join(domains) + " | mean | pooled |",
        "|---|" + "---:|" * (len(domains) + 2),
    ]
    for label in ("base", "final"):
        cells = " | ".join(f"{lm[label]['bpc_by_domain'][d]:.4f}" for d in domains)
        rows.append(f"| {label} | {cells} | {lm[label]['bpc_mean']:.4f} | {lm[label]['bpc_pooled']:.4f} |")
    lone = lm.get("local_only")
    if lone:
        cells = " | ".join(f"{lone['bpc_by_domain'][d]:.4f}" for d in domains)
        rows += [
            f"| local-only | {cells} | {lone['bpc_mean']:.4f} | |", "",
            f"Local-only: {lone['nodes']} nodes, one per domain, each alone on its own text for as "
            f"many rounds as the task ran (the same steps and training seeds); the mean of their "
            f"models on each domain. On its own domain a lone model scores {lone['own_domain_mean']:.4f}.",
        ]
    rows += [
        "", f"Greedy continuation of {lm['sample_prompt']!r} ({SAMPLE_TOKENS} tokens):", "",
        f"- base: `{lm['base']['sample']!r}`",
        f"- final: `{lm['final']['sample']!r}`", "",
        f"The final model as a Hugging Face directory: `{lm['exported_model_dir']}`.",
    ]
    return "\n".join(rows) + "\n"


def lm_section(
    node: Any, task_id: int, recipe: str, config: dict[str, Any], nodes: int, seed: int, outdir: Path, rounds: int
) -> dict[str, Any] | None:
    """``lm_report`` of a finished task of ``rounds`` rounds, its final model exported by
    ``node`` (a testnet daemon: ``.call(method, params, timeout)``); None for a classifier."""
    if recipe not in LM_RECIPES:
        return None
    exported = node.call("model_export", {"task_id": task_id}, timeout=120.0)
    return lm_report(config, nodes, seed, Path(exported["path"]), outdir, rounds)


def append_lm_markdown(report_md: Path, lm: dict[str, Any]) -> None:
    with report_md.open("a") as out:
        out.write("\n" + lm_markdown(lm))
