"""`scripts/testnet --pipeline`: the three layers in one run, on the language model.

1. an Arena competition on the LM recipe (node0 creates; node1, node2 train; the last node
   validates), scored in bits per character;
2. an Alliance lm-lora task among node0..node2 from the competition's winner;
3. node0 lists the task's final model on chain;
4. the last node, which took no part in the task and serves with `[serve] market = true`,
   fetches the listed model from its peers (hash-checked, lineage replayed) and serves it;
5. a chat through the OpenAI-compatible API (the official `openai` client), asking for a
   fact that only the serving node's knowledge folder holds; the fact's file must come
   back among the `sources`, cited in the prompt.

Then the lineage (competition → task rounds → listing → served model) is checked link by
link on the serving node (market_fetch's replay, arena_verify) and on node0
(model_verify). Each stage is timed; the first that fails ends the run with one line.
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console
from rich.live import Live

from flockd.testnet.cluster import Cluster, Daemon
from flockd.testnet.pipeline_report import (
    CODENAME,
    FACT_FILE,
    PIPELINE_JSON,
    PIPELINE_MD,
    QUESTION,
    STAGE_TITLES,
    STAGES,
    StageFailed,
    StageResult,
    check_chat,
    failure_line,
    lineage_checks,
    render_pipeline_markdown,
    score_bpc,
    stages_json,
    write_knowledge,
)
from flockd.testnet.progress import progress_table
from flockd.testnet.report import build_report, node_name, short_hex
from flockd.testnet.task import (
    TX_TIMEOUT,
    TaskPlan,
    create_and_join,
    wait_finished,
    wait_models_on_chain,
)
from flockd.testnet.workdir import KNOWLEDGE_DIR, TRACEBACK_FILE, free_port

PIPELINE_NODES = 4
PIPELINE_ROUNDS = 2
LISTING_PREFIX = "pipeline-lm-task"  # + the task id: a rerun's listing, served beside the last one's
# Smaller than the LM testnet's settings (flockd.lm.testnet.TESTNET_CONFIG): every stage
# trains or scores the same model, and the whole run must fit 15 minutes on 2 cores.
PIPELINE_LM_CONFIG: dict[str, Any] = {"domain_chars": 20_000, "steps": 10, "batch_size": 8, "seq_len": 64}
CHAT_MAX_TOKENS = 24
# configure_serving appends this section last and cuts it off again on a rerun.
_SERVE_HEADER = "\n# set by the testnet (--pipeline): this node serves the market's models\n[serve]\n"

T = TypeVar("T")


def pipeline_config(lm_config: dict[str, Any]) -> dict[str, Any]:
    """The lm-lora config of every stage: the testnet base, the pipeline's small settings."""
    return {**lm_config, **PIPELINE_LM_CONFIG}


def configure_serving(cluster: Cluster, pipeline: bool) -> int | None:
    """With `pipeline`, the last node serves the models it fetches from the market, with
    the knowledge folder written into the workdir (returns its HTTP port); every other node,
    and every node of a run without it, loses the section an earlier --pipeline run left."""
    from flockd.config import CONFIG_FILE, load_config

    server = cluster.daemons[-1] if pipeline else None
    knowledge = cluster.workdir / KNOWLEDGE_DIR
    if pipeline:
        write_knowledge(knowledge)
    port = free_port() if pipeline else None
    for d in cluster.daemons:
        path = d.datadir / CONFIG_FILE
        text = path.read_text()
        text = text[: text.index(_SERVE_HEADER)] if _SERVE_HEADER in text else text
        if d is server:
            text += (f"{_SERVE_HEADER}enabled = true\nmarket = true\nport = {port}\n"
                     f"knowledge = {json.dumps(str(knowledge))}\n")
        path.write_text(text)
        load_config(d.datadir)
    return port


class Pipeline:
    """One run of the five stages on a started, meshed cluster."""

    def __init__(self, console: Console, cluster: Cluster, args: argparse.Namespace, port: int,
                 setup_seconds: float) -> None:
        self.console = console
        self.cluster = cluster
        self.args = args
        self.port = port
        self.server = cluster.daemons[-1]
        self.members = cluster.daemons[:-1]  # the Alliance task's nodes
        self.config = pipeline_config(args.config)
        self.stages: list[StageResult] = []
        self.report: dict[str, Any] = {
            "recipe": "lm-lora", "nodes": len(cluster.daemons), "config": self.config,
            "setup_seconds": round(setup_seconds, 1),
            "command": f"scripts/testnet --pipeline --nodes {len(cluster.daemons)} --rounds {args.rounds}",
            "roles": (f"{node_name(0)} creates the competition and the task and lists the model; "
                      f"{', '.join(node_name(d.index) for d in cluster.daemons[1:-1])} train in the competition; "
                      f"{', '.join(node_name(d.index) for d in self.members)} run the task; "
                      f"{node_name(self.server.index)} validates in the competition, takes no part in the task, "
                      "fetches and serves the listed model with its knowledge folder."),
        }

    # -- the stages ------------------------------------------------------------------------
    def run(self) -> bool:
        started = time.monotonic()
        try:
            competition = self._stage("arena", self.arena)
            task = self._stage("alliance", lambda: self.alliance(competition))
            listing = self._stage("listing", lambda: self.listing(task))
            fetched = self._stage("serving", lambda: self.serving(listing))
            self._stage("chat", lambda: self.chat(listing["name"]))
            self._stage("lineage", lambda: self.lineage(competition, task, listing, fetched))
        except _Stopped:
            pass
        self.report["wall_seconds"] = round(time.monotonic() - started, 1)
        self.report["stages"] = stages_json(self.stages)
        paths = self.write()
        failed = failure_line(self.stages)
        self.console.print(render_pipeline_markdown(self.report), markup=False, highlight=False)
        self.console.print("report: " + ", ".join(str(p) for p in paths))
        if failed is not None:
            self.console.print(f"[red]{failed}[/]", soft_wrap=True)
        return failed is None

    def arena(self) -> tuple[dict[str, Any], str]:
        from flockd.testnet.arena import ArenaPlan, competition_report, run_competition

        # Longer phases than a classifier's: a trainer's first LM load and training, then its
        # commit, must fit the join and submit phases (a 40 + 20 block window was missed
        # at a load of ~10), and a validator scores every adapter on the evaluation text.
        plan = ArenaPlan(recipe="lm-lora", config=self.config, validators=1, submission="adapter",
                         join_blocks=60, submit_blocks=60, score_commit_blocks=60, score_reveal_blocks=15)
        cid, spec, settings = run_competition(self.cluster, plan, self.args.task_timeout)
        arena = competition_report(self.cluster, plan, cid, spec, settings)
        arena["recipe"] = "lm-lora"
        for row in arena["leaderboard"]:
            row["median_bpc"] = score_bpc(row["median"])
        self.report["arena"] = arena
        bad = [n for n, v in arena["arena_verify"].items() if not v["ok"]]
        if bad:
            raise StageFailed(f"arena_verify failed on {', '.join(bad)}: {arena['arena_verify'][bad[0]]['problems']}")
        if not arena["leaderboard"]:
            raise StageFailed(f"competition {cid} has no ranked submission")
        winner = arena["leaderboard"][0]
        return ({"competition_id": cid, "winner": winner},
                f"competition {cid}: {len(arena['leaderboard'])} ranked, winner {winner['node']} "
                f"(median score {winner['median']}: {_bpc({'test_loss': winner['median_bpc']})} bpc, "
                f"model {short_hex(winner['model_hash'])})")

    def alliance(self, competition: dict[str, Any] | None) -> tuple[dict[str, Any], str]:
        plan = TaskPlan(recipe="lm-lora", rounds=self.args.rounds, expected_proposers=len(self.members),
                        config=self.config, **self.args.windows,
                        competition=None if competition is None else competition["competition_id"])
        task_id = create_and_join(self.cluster, plan, members=self.members)
        self.console.print(f"task {task_id}: lm-lora, {plan.rounds} rounds among "
                           f"{', '.join(node_name(d.index) for d in self.members)}")
        with Live(console=self.console, refresh_per_second=2, transient=True) as live:
            statuses = wait_finished(self.cluster, task_id, plan, self.args.task_timeout,
                                     lambda sts, rss: live.update(progress_table(sts, rss, {})), members=self.members)
        statuses = wait_models_on_chain(self.cluster, task_id, 60.0, members=self.members) or statuses
        figures = build_report(statuses, nodes=len(self.members), rounds=plan.rounds, recipe=plan.recipe,
                               partition=plan.partition, wall_seconds=0.0)
        verified = self.members[0].call("model_verify", {"task_id": task_id}, timeout=600.0)
        task = {
            "task_id": task_id, "members": [node_name(d.index) for d in self.members],
            "model_init_hash": verified.get("initial_model_hash"), "rounds": figures["per_round"],
            "all_nodes_agree": figures["all_nodes_agree"], "chain_model_hash": figures["chain_model_hash"],
            "model_verify": verified,
        }
        self.report["alliance"] = task
        if not figures["all_nodes_agree"]:
            raise StageFailed(f"members disagree with the chain's final model: {figures['disagreeing_nodes']}")
        if len(figures["per_round"]) < plan.rounds:
            raise StageFailed(f"{len(figures['per_round'])} of {plan.rounds} rounds recorded")
        last = figures["per_round"][-1]
        return task, (f"task {task_id}: {len(figures['per_round'])} rounds, "
                      f"{figures['totals']['accepted']} of {figures['totals']['proposals']} proposals accepted, "
                      f"test bpc {_bpc(figures['per_round'][0])} after round 0 → {_bpc(last)} after round {last['round']}")

    def listing(self, task: dict[str, Any]) -> tuple[dict[str, Any], str]:
        lister = self.members[0]
        name = f"{LISTING_PREFIX}{task['task_id']}"
        listed = lister.call("market_list", {
            "task_id": task["task_id"], "name": name, "licence": "MIT",
            "description": "scripts/testnet --pipeline: the Alliance task's final model",
        }, timeout=TX_TIMEOUT)
        self.cluster.wait_for(lambda: _listed(self.server, listed["listing_id"]) is not None, TX_TIMEOUT,
                              f"{node_name(self.server.index)} to see listing {listed['listing_id']}")
        seen = _listed(self.server, listed["listing_id"]) or {}
        listing = {**seen, **listed, "lister_node": node_name(lister.index)}
        self.report["listing"] = listing
        return listing, (f"listing {listed['listing_id']} `{name}` of task {task['task_id']}, "
                         f"model {short_hex(listed['model_hash'])}, lineage root {short_hex(seen.get('lineage_root'))}")

    def serving(self, listing: dict[str, Any]) -> tuple[dict[str, Any], str]:
        import httpx

        fetched = self.server.call("market_fetch", {"listing_id": listing["listing_id"]}, timeout=900.0)
        url = f"http://127.0.0.1:{self.port}"
        models = [m["id"] for m in httpx.get(url + "/v1/models", timeout=30).json()["data"]]
        self.report["serving"] = {
            "node": node_name(self.server.index), "url": url, "models": models, "served": fetched.get("served"),
            "fetched_from": self.peer_name(fetched.get("fetched_from")), "model_hash": fetched.get("model_hash"),
        }
        if not fetched.get("served") or listing["name"] not in models:
            raise StageFailed(f"{node_name(self.server.index)} fetched listing {listing['listing_id']} "
                              f"but does not serve it (served={fetched.get('served')}, /v1/models: {models})")
        peer = self.peer_name(fetched.get("fetched_from"))
        return fetched, (f"{node_name(self.server.index)} fetched {short_hex(fetched['model_hash'])} from {peer}, "
                         f"lineage replayed ({fetched['lineage']['rounds_checked']} rounds), serving it on {url}")

    def chat(self, model: str) -> tuple[dict[str, Any], str]:
        from openai import OpenAI

        client = OpenAI(base_url=f"http://127.0.0.1:{self.port}/v1", api_key="testnet", timeout=300.0, max_retries=0)
        reply = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": QUESTION}], max_tokens=CHAT_MAX_TOKENS,
            temperature=0, extra_body={"retrieval": {"top_k": 3}, "return_prompt": True},
        )
        checked = check_chat(reply.model_dump())
        self.report["chat"] = {"question": QUESTION, "fact": CODENAME, **checked}
        if not checked["ok"]:
            raise StageFailed("; ".join(checked["problems"]))
        return checked, (f"{FACT_FILE} is source [{checked['fact_source_rank']}] of {len(checked['sources'])}, "
                         f"cited in the prompt; answer {checked['answer'][:40]!r}")

    def lineage(self, competition: dict[str, Any] | None, task: dict[str, Any], listing: dict[str, Any],
                fetched: dict[str, Any]) -> tuple[None, str]:
        verified: dict[str, Any] = {f"model_verify on {node_name(self.members[0].index)}": task["model_verify"]}
        if competition is not None:
            spec = self.report["arena"]["spec"]
            verified[f"arena_verify on {node_name(self.server.index)}"] = self.server.call(
                "arena_verify", {"competition_id": competition["competition_id"], "spec": spec}, timeout=600.0)
        fetched = {**fetched, "fetched_from": self.peer_name(fetched.get("fetched_from"))}
        listed = self.server.call("market_lineage", {"listing_id": listing["listing_id"]}, timeout=600.0)
        self.report["market_lineage"] = listed
        checks = lineage_checks(competition=competition, task=task, listing=listing, fetched=fetched, verified=verified,
                                listed=listed, listed_by=node_name(self.server.index))
        self.report["lineage"] = {"chain": lineage_text(competition, task, listing, node_name(self.server.index)),
                                  "checks": checks}
        bad = [c for c in checks if not c["ok"]]
        if bad:
            raise StageFailed(f"{bad[0]['what']}: {bad[0]['detail']}")
        return None, f"{len(checks)} of {len(checks)} checks hold"

    # -- bookkeeping -----------------------------------------------------------------------
    def peer_name(self, peer_id: str | None) -> str | None:
        """A testnet node's name for its peer id (None: the model came from the node's own store)."""
        if peer_id is None:
            return None
        return next((node_name(d.index) for d in self.cluster.daemons if d.peer_id == peer_id), peer_id)

    def _stage(self, name: str, work: Callable[[], tuple[T, str]]) -> T:
        number = STAGES.index(name) + 1 if name in STAGES else len(STAGES) + 1
        self.console.print(f"[bold]stage {number}: {STAGE_TITLES[name]}[/]")
        started = time.monotonic()
        try:
            value, summary = work()
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # the stage failed: the run says which, in one line
            why = " ".join(str(exc).split()) or type(exc).__name__
            if not isinstance(exc, StageFailed):
                why = f"{type(exc).__name__}: {why}"
                (self.cluster.workdir / TRACEBACK_FILE).write_text(traceback.format_exc())
            self.stages.append(StageResult(name, False, round(time.monotonic() - started, 1), why))
            raise _Stopped from exc
        seconds = round(time.monotonic() - started, 1)
        self.stages.append(StageResult(name, True, seconds, summary))
        self.console.print(f"  ok in {seconds:.0f} s: {summary}", markup=False, highlight=False)
        return value

    def write(self) -> list[Path]:
        outdir = self.args.report_dir or self.cluster.workdir / "report"
        outdir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = outdir / PIPELINE_JSON, outdir / PIPELINE_MD
        json_path.write_text(json.dumps(self.report, sort_keys=True, indent=2, default=str) + "\n")
        md_path.write_text(render_pipeline_markdown(self.report))
        return [json_path, md_path]


class _Stopped(Exception):
    """A stage failed; its StageResult says why."""


def lineage_text(competition: dict[str, Any] | None, task: dict[str, Any], listing: dict[str, Any], server: str) -> str:
    """The lineage in one line: competition → task rounds → listing → served."""
    parts = []
    if competition is not None:
        winner = competition["winner"]
        parts.append(f"competition {competition['competition_id']} (winner {winner['node']}, "
                     f"`{short_hex(winner['model_hash'])}`)")
    parts.append(f"task {task['task_id']} (initial `{short_hex(task['model_init_hash'])}`)")
    parts += [f"round {r['round']} `{short_hex(r['model_hash'])}`" for r in task["rounds"]]
    parts.append(f"listing {listing['listing_id']} `{listing['name']}` `{short_hex(listing['model_hash'])}`")
    parts.append(f"served by {server}")
    return " → ".join(parts)


def _listed(d: Daemon, listing_id: int) -> dict[str, Any] | None:
    found: list[dict[str, Any]] = d.call("market_listings")
    return next((x for x in found if x["listing_id"] == listing_id), None)


def _bpc(row: dict[str, Any]) -> str:
    value = row.get("test_loss")
    return "—" if value is None else f"{value:.4f}"


def run_pipeline(console: Console, cluster: Cluster, args: argparse.Namespace, port: int, setup_seconds: float) -> bool:
    """`setup_seconds`: what starting the daemons and forming the mesh took (the report shows it)."""
    return Pipeline(console, cluster, args, port, setup_seconds).run()
