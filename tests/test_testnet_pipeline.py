"""The pieces of `scripts/testnet --pipeline` without daemons: the chat check against a real
serving app's reply (the knowledge folder the pipeline writes, the official client), the
lineage's link checks, the one failure line, the report's markdown, the serving node's
config section across reruns, and the flags. The whole run (daemons, an Arena, a task,
a listing, serving) takes longer than the suite can give it: docs/testnet.md has a run."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import openai
import pytest
from serve_tiny import tiny_model_dir

from flockd.config import CONFIG_FILE, load_config
from flockd.serve.app import ServeApp
from flockd.serve.lm import ServedLM
from flockd.serve.retrieval import KnowledgeIndex
from flockd.serve.thread import ServerThread
from flockd.testnet.cluster import Cluster
from flockd.testnet.pipeline import configure_serving, lineage_text
from flockd.testnet.pipeline_report import (
    CODENAME,
    FACT_FILE,
    QUESTION,
    STAGES,
    StageResult,
    check_chat,
    failure_line,
    lineage_checks,
    render_pipeline_markdown,
    stages_json,
    write_knowledge,
)
from flockd.testnet.workdir import KNOWLEDGE_DIR, check_reusable


def h(n: int) -> str:
    return "0x" + f"{n:02x}" * 32


@pytest.fixture(scope="module")
def chat_reply(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The pipeline's question asked of a real serving app over the pipeline's knowledge folder."""
    folder = tmp_path_factory.mktemp("pipeline") / KNOWLEDGE_DIR
    write_knowledge(folder)
    index = KnowledgeIndex(folder, folder.parent / "index.sqlite")
    index.refresh()
    with ServerThread(ServeApp([ServedLM("tiny", tiny_model_dir(tmp_path_factory))], index=index)) as running:
        client = openai.OpenAI(base_url=running.url + "/v1", api_key="x", max_retries=0)
        reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": QUESTION}],
                                               max_tokens=4, temperature=0,
                                               extra_body={"retrieval": {"top_k": 3}, "return_prompt": True})
    return reply.model_dump()


def test_the_chat_check_passes_on_a_served_reply_that_cites_the_fact(chat_reply: dict[str, Any]) -> None:
    checked = check_chat(chat_reply)
    assert checked["ok"], checked["problems"]
    assert checked["fact_source_rank"] == 1 and checked["sources"][0]["file"] == FACT_FILE
    assert checked["prompt_cites_fact"] and checked["answer"]


@pytest.mark.parametrize(("spoil", "problem"), [
    (lambda r: r.pop("sources"), "no sources"),
    (lambda r: r["sources"].pop(0), f"{FACT_FILE} is not among the sources"),
    (lambda r: r["sources"][0].update(text="another text"), "does not hold the fact"),
    (lambda r: r.pop("prompt"), "the prompt does not carry"),
    (lambda r: r.update(prompt=r["prompt"].replace(CODENAME, "SOMETHING-ELSE")), "the prompt does not carry"),
    (lambda r: r["choices"][0]["message"].update(content=""), "no answer text"),
])
def test_the_chat_check_fails_a_reply_without_the_fact_where_it_must_be(chat_reply: dict[str, Any], spoil: Any,
                                                                        problem: str) -> None:
    import copy

    reply = copy.deepcopy(chat_reply)
    spoil(reply)
    checked = check_chat(reply)
    assert not checked["ok"] and any(problem in p for p in checked["problems"]), checked["problems"]


def test_a_fact_the_model_only_repeats_is_reported_not_required(chat_reply: dict[str, Any]) -> None:
    import copy

    reply = copy.deepcopy(chat_reply)
    reply["choices"][0]["message"]["content"] = f"It is {CODENAME} [1]."
    assert check_chat(reply)["answer_has_fact"] and not check_chat(chat_reply)["answer_has_fact"]


def lineage_parts(**changes: Any) -> dict[str, Any]:
    parts: dict[str, Any] = {
        "competition": {"competition_id": 1, "winner": {"node": "node2", "model_hash": h(1)}},
        "task": {"task_id": 3, "model_init_hash": h(5),
                 "rounds": [{"round": 0, "model_hash": h(2)}, {"round": 1, "model_hash": h(3)}],
                 "model_verify": {"competition": {"competition_id": 1, "ok": True,
                                                  "winner": {"index": 0, "model_hash": h(1)}}}},
        "listing": {"listing_id": 1, "name": "pipeline-lm", "model_hash": h(3)},
        "fetched": {"model_hash": h(3), "fetched_from": "node0", "lineage": {
            "ok": True, "complete": True, "final_model_hash": h(3), "rounds": [{}, {}], "problems": []}},
        "verified": {"model_verify on node0": {"ok": True, "complete": True, "problems": []},
                     "arena_verify on node3": {"ok": True, "problems": []}},
        "listed": {"ok": True, "lineage": [
            {"kind": "competition", "competition_id": 1, "ok": True, "winner": {"model_hash": h(1)}},
            {"kind": "task", "task_id": 3, "ok": True, "rounds_checked": 2, "listing_id": 1, "ends_at_listing": True}]},
        "listed_by": "node3",
    }
    parts.update(changes)
    return parts


def test_a_consistent_lineage_passes_every_link() -> None:
    checks = lineage_checks(**lineage_parts())
    assert len(checks) == 7 and all(c["ok"] for c in checks), checks
    listed = {"ok": True, "lineage": [lineage_parts()["listed"]["lineage"][1]]}
    alone = lineage_checks(**lineage_parts(competition=None, listed=listed))  # no competition: no first link
    assert len(alone) == 6 and all(c["ok"] for c in alone)


@pytest.mark.parametrize(("change", "failing"), [
    ({"task": {"task_id": 3, "model_init_hash": h(5), "rounds": [{"round": 0, "model_hash": h(3)}],
               "model_verify": {"competition": {"ok": True, "winner": {"index": 1, "model_hash": h(9)}}}}},
     "the task starts from the competition's winner"),
    ({"task": {"task_id": 3, "model_init_hash": h(5), "rounds": [{"round": 0, "model_hash": h(3)}],
               "model_verify": {"competition": {"ok": False, "winner": {"index": 0, "model_hash": h(1)}}}}},
     "the task starts from the competition's winner"),
    ({"listing": {"listing_id": 1, "model_hash": h(2)}}, "the listing is the task's final model"),
    ({"fetched": {"model_hash": h(3), "lineage": {"ok": True, "complete": False, "final_model_hash": h(3)}}},
     "the serving node replayed the task's rounds to the listed model"),
    ({"fetched": {"model_hash": h(4), "lineage": {"ok": True, "complete": True, "final_model_hash": h(3)}}},
     "the served model is the listed one"),
    ({"verified": {"arena_verify on node3": {"ok": False, "problems": ["score 2 differs"]}}}, "arena_verify on node3"),
    ({"verified": {"model_verify on node0": {"ok": True, "complete": False, "problems": []}}}, "model_verify on node0"),
    ({"listed": {"ok": False, "lineage": [{"kind": "task", "ok": False, "problems": ["round 1: replayed model differs"]}]}},
     "market_lineage of listing 1 on node3"),
    ({"listed": {"ok": True, "lineage": [{"kind": "task", "ok": True, "ends_at_listing": True}]}},
     "market_lineage of listing 1 on node3"),  # the competition part is missing
])
def test_a_broken_link_fails_its_check(change: dict[str, Any], failing: str) -> None:
    failed = [c["what"] for c in lineage_checks(**lineage_parts(**change)) if not c["ok"]]
    assert failed[0] == failing  # the first broken link (a listing of other bytes breaks the links after it too)


def test_the_failure_line_names_the_first_stage_that_failed() -> None:
    passed = [StageResult(name, True, 1.0, "fine") for name in STAGES]
    assert failure_line(passed) is None
    broken = [*passed[:2], StageResult("listing", False, 2.0, "the market refused: not finished")]
    assert failure_line(broken) == "pipeline failed at stage 3 (Listing): the market refused: not finished"
    assert failure_line(passed[:4]) == "pipeline stopped before stage 5 (Chat with sources from the knowledge folder)"


def test_the_report_shows_every_stage_and_the_lineage(chat_reply: dict[str, Any]) -> None:
    parts = lineage_parts()
    checked = check_chat(chat_reply)
    report = {
        "recipe": "lm-lora", "nodes": 4, "wall_seconds": 600.0, "command": "scripts/testnet --pipeline", "roles": "…",
        "stages": stages_json([StageResult(name, True, 10.0, f"{name} done") for name in STAGES]),
        "arena": {"competition_id": 1, "recipe": "lm-lora",
                  "leaderboard": [{"rank": 1, "node": "node2", "training": {"lr": 0.01}, "model_hash": h(1),
                                   "median": 3512345, "reward": 10**20}],
                  "validators": [{"node": "node3", "scores": [{"submission": 0, "node": "node2", "score": 3512345}],
                                  "closeness": 1000000}],
                  "arena_verify": {"node3": {"ok": True, "problems": []}}},
        "alliance": {"task_id": 3, "members": ["node0", "node1", "node2"], "model_init_hash": h(1), "all_nodes_agree": True,
                     "rounds": [{"round": r, "proposals": 3, "accepted": 3, "test_loss": 3.5 - r / 10, "test_accuracy": 0.04,
                                 "seconds": 50.0, "model_hash": h(2 + r)} for r in range(2)]},
        "listing": {"listing_id": 1, "name": "pipeline-lm", "task_id": 3, "model_hash": h(3), "lineage_root": h(1),
                    "licence": "MIT", "lister_node": "node0"},
        "serving": {"node": "node3", "url": "http://127.0.0.1:1", "models": ["pipeline-lm"], "served": True,
                    "fetched_from": "node0"},
        "chat": {"question": QUESTION, "fact": CODENAME, **checked},
        "lineage": {"chain": lineage_text(parts["competition"], parts["task"], parts["listing"], "node3"),
                    "checks": lineage_checks(**parts)},
    }
    text = render_pipeline_markdown(report)
    assert "**every stage passed**" in text
    for expected in ("| 1 | node2 | lr=0.01 |", "node3 scored node2: 3512345", "| 1 | 3 | 3 | 3.4000 |", "Listing 1: `pipeline-lm`",
                     "Served by node3", "market_fetch: from node0", f"| [1] | {FACT_FILE} |", "competition 1 (winner node2",
                     "round 1 `0x0303…0303` → listing 1", "| model_verify on node0 | yes | ok |",
                     "| market_lineage of listing 1 on node3 | yes | competition 1 ok (winner 0x0101…0101) → task 3 ok "
                     "(2 rounds replayed, ends at listing 1) |"):
        assert expected in text, expected
    report["stages"][4] = {"name": "chat", "ok": False, "seconds": 3.0, "summary": "the reply has no sources"}
    assert "**pipeline failed at stage 5 (Chat with sources from the knowledge folder): the reply has no sources**" in (
        render_pipeline_markdown(report))


def test_the_last_node_serves_and_a_rerun_rewrites_its_section(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path / "work", 2)
    cluster.init()
    first = configure_serving(cluster, True)
    second = configure_serving(cluster, True)
    assert first is not None and second is not None
    served = load_config(cluster.daemons[1].datadir).serve
    assert served.enabled and served.market and served.port == second
    assert Path(served.knowledge) == cluster.workdir / KNOWLEDGE_DIR
    assert (Path(served.knowledge) / FACT_FILE).read_text().count(CODENAME) == 1
    assert (cluster.daemons[1].datadir / CONFIG_FILE).read_text().count("\n[serve]\n") == 1
    assert not load_config(cluster.daemons[0].datadir).serve.enabled
    assert check_reusable(cluster.workdir, 2) is None  # the knowledge folder is the testnet's own
    assert configure_serving(cluster, False) is None  # a run without --pipeline serves nothing
    assert not load_config(cluster.daemons[1].datadir).serve.enabled


def test_pipeline_flags_default_and_refuse(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import flockd.lm.testnet
    from flockd.testnet.main import parse_args

    # The base build is not what is tested here (it takes minutes the first time).
    monkeypatch.setattr(flockd.lm.testnet, "lm_task", lambda recipe: ({"base_hash": h(7)}, {}))
    args: argparse.Namespace = parse_args(["--pipeline"])
    assert (args.nodes, args.rounds, args.recipe) == (4, 2, "lm-lora")
    assert parse_args(["--pipeline", "--rounds", "1", "--nodes", "5"]).nodes == 5
    assert parse_args(["--pipeline", "--keep-running"]).keep_running  # the served model stays up to chat with
    for bad in (["--nodes", "3"], ["--recipe", "digits-mlp"], ["--arena"], ["--chaos"]):
        with pytest.raises(SystemExit) as exited:
            parse_args(["--pipeline", *bad])
        assert exited.value.code == 2 and "--pipeline needs --nodes 4 or more" in capsys.readouterr().err


def test_an_lm_competition_s_scores_read_as_bits_per_character_and_trainers_train_for_steps() -> None:
    from flockd.testnet.arena import trainer_settings
    from flockd.testnet.pipeline_report import score_bpc

    assert score_bpc(4_500_000) == 3.5 and score_bpc(0) is None
    lm = [trainer_settings(k, 2, lm=True) for k in range(2)]
    assert all("steps" in s and "epochs" not in s for s in lm) and lm[0]["steps"] != lm[1]["steps"]
    assert "epochs" in trainer_settings(0, 2)
