"""What `scripts/testnet --pipeline` checks and reports, without a daemon: the knowledge
folder it writes, the chat's check (the fact's file among the sources, the prompt citing
it), the lineage's checks (competition → task rounds → listing, each link compared), and
the report's markdown. Pure: RPC and HTTP replies in, dicts and text out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from flockd.testnet.report import short_hex

PIPELINE_JSON = "pipeline.json"
PIPELINE_MD = "pipeline.md"

# A made-up fact, in no text the model or its base ever saw: only the serving node's
# knowledge folder holds it, so a chat can have it only through retrieval.
CODENAME = "HERON-LANTERN-42"
FACT_FILE = "release-codename.md"
QUESTION = "What is the codename of the flockd pipeline release?"
KNOWLEDGE_FILES: dict[str, str] = {
    FACT_FILE: (
        "# The pipeline release\n\n"
        f"The codename of the flockd pipeline release is {CODENAME}. It was chosen by the "
        "testnet's operators and appears in no other document.\n"
    ),
    "garden-notes.md": (
        "# Garden notes\n\nTomatoes want six hours of sun; basil wilts in the cold. "
        "Water the beds in the morning, never at noon.\n"
    ),
    "release-checklist.md": (
        "# Release checklist\n\nRun the tests, update the changelog, tag the commit and "
        "announce the release on the mailing list.\n"
    ),
}

STAGES = ("arena", "alliance", "listing", "serving", "chat", "lineage")
STAGE_TITLES = {
    "arena": "Arena competition",
    "alliance": "Alliance fine-tune from the winner",
    "listing": "Listing",
    "serving": "Served on another node",
    "chat": "Chat with sources from the knowledge folder",
    "lineage": "The lineage, verified",
}


def score_bpc(score: int) -> float | None:
    """The bits per character an LM competition's score stands for (flockd.arena.lm.bpc_score's
    inverse; None for 0: 8 bpc or worse)."""
    from flockd.arena.lm import BPC_CEILING, BPC_SCALE  # imported only when a score is read

    return (BPC_CEILING * BPC_SCALE - score) / BPC_SCALE if score > 0 else None


class StageFailed(Exception):
    """A stage did not reach its result; the message says why in one line."""


@dataclass
class StageResult:
    name: str
    ok: bool
    seconds: float
    summary: str  # one line: the result, or why it failed


def write_knowledge(folder: Path) -> list[Path]:
    """The serving node's knowledge folder: the fact's file among unrelated ones (rewritten
    whole each run, so a rerun retrieves from the same text)."""
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.iterdir():
        if stale.is_file() and stale.name not in KNOWLEDGE_FILES:
            stale.unlink()
    paths = []
    for name, text in KNOWLEDGE_FILES.items():
        path = folder / name
        path.write_text(text)
        paths.append(path)
    return paths


def check_chat(reply: Mapping[str, Any], fact_file: str = FACT_FILE, fact: str = CODENAME) -> dict[str, Any]:
    """A chat completion's JSON (with `sources` and, asked for, `prompt`) against the fact
    placed in `fact_file`: the file must be a source whose text holds the fact, and the
    prompt must carry it under that source's number. Whether the model's own words repeat
    the fact is reported, not required: the testnet's tiny model writes noise."""
    problems: list[str] = []
    choices = reply.get("choices")
    answer = ""
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        message = choices[0].get("message")
        if isinstance(message, Mapping) and isinstance(message.get("content"), str):
            answer = message["content"]
    if not answer:
        problems.append("the reply carries no answer text")
    raw_sources = reply.get("sources")
    sources = [s for s in raw_sources if isinstance(s, Mapping)] if isinstance(raw_sources, list) else []
    ranks = [i for i, s in enumerate(sources, 1) if s.get("file") == fact_file]
    rank = ranks[0] if ranks else None
    if not sources:
        problems.append("the reply has no sources")
    elif rank is None:
        problems.append(f"{fact_file} is not among the sources ({', '.join(str(s.get('file')) for s in sources)})")
    elif fact not in str(sources[rank - 1].get("text", "")):
        problems.append(f"source [{rank}] ({fact_file}) does not hold the fact")
    prompt = reply.get("prompt")
    prompt_cites = isinstance(prompt, str) and rank is not None and _cited(prompt, rank, fact_file, fact)
    if rank is not None and not prompt_cites:
        problems.append(f"the prompt does not carry {fact_file} as [{rank}]")
    return {
        "answer": answer,
        "sources": [{"index": s.get("index"), "file": s.get("file"), "chunk": s.get("chunk"), "score": s.get("score")}
                    for s in sources],
        "fact_file": fact_file,
        "fact_source_rank": rank,
        "prompt_cites_fact": prompt_cites,
        "answer_has_fact": fact in answer,
        "usage": reply.get("usage"),
        "ok": not problems,
        "problems": problems,
    }


def _cited(prompt: str, rank: int, fact_file: str, fact: str) -> bool:
    head = f"[{rank}] ({fact_file}, chunk "
    at = prompt.find(head)
    return at >= 0 and fact in prompt[at:]


def lineage_checks(
    *, competition: Mapping[str, Any] | None, task: Mapping[str, Any], listing: Mapping[str, Any],
    fetched: Mapping[str, Any], verified: Mapping[str, Any], listed: Mapping[str, Any] | None = None,
    listed_by: str = "the serving node",
) -> list[dict[str, Any]]:
    """Each link of competition → task rounds → listing → served model, as (what, ok,
    detail). `competition`: the winner's row and the competition's id (None without one);
    `task`: the task's id, initial model hash, rounds and model_verify reply; `listing`: market_list's
    reply; `fetched`: the serving node's market_fetch reply (its lineage replayed);
    `verified`: the checks' replies by name (model_verify, arena_verify, ...); `listed`:
    market_lineage of the listing on `listed_by` (its parts, oldest first)."""
    rounds = task.get("rounds") or []
    last_model = rounds[-1]["model_hash"] if rounds else None
    lineage = fetched.get("lineage") or {}
    checks: list[dict[str, Any]] = []

    def check(what: str, ok: bool, detail: str) -> None:
        checks.append({"what": what, "ok": bool(ok), "detail": detail})

    if competition is not None:
        # The task's initial model is built from the winner (an adapter folded into the base
        # and the task's carried adapter), so its hash is not the submission's: model_verify
        # rebuilds it from the winner the chain names and checks it against the task's.
        winner = competition.get("winner") or {}
        seeded = (task.get("model_verify") or {}).get("competition") or {}
        named = seeded.get("winner") or {}
        check("the task starts from the competition's winner",
              bool(seeded.get("ok")) and _same(named.get("model_hash"), winner.get("model_hash")),
              f"model_verify: competition {seeded.get('competition_id')} won by submission {named.get('index')} "
              f"({short_hex(named.get('model_hash'))}; the leaderboard's first: {short_hex(winner.get('model_hash'))}); "
              f"task {task.get('task_id')}'s initial model {short_hex(task.get('model_init_hash'))} rebuilt from it")
    check("the listing is the task's final model", _same(listing.get("model_hash"), last_model),
          f"listing {listing.get('listing_id')}: {short_hex(listing.get('model_hash'))}; round "
          f"{rounds[-1]['round'] if rounds else '—'}: {short_hex(last_model)}")
    check("the served model is the listed one", _same(fetched.get("model_hash"), listing.get("model_hash")),
          f"fetched {short_hex(fetched.get('model_hash'))} from {fetched.get('fetched_from') or 'its own store'}")
    replayed = lineage.get("rounds") or []
    check("the serving node replayed the task's rounds to the listed model",
          bool(lineage.get("ok")) and bool(lineage.get("complete"))
          and _same(lineage.get("final_model_hash"), listing.get("model_hash")),
          f"{len(replayed)} round(s) replayed, final {short_hex(lineage.get('final_model_hash'))}"
          + (f"; problems: {'; '.join(lineage.get('problems') or [])}" if lineage.get("problems") else ""))
    if listed is not None:
        parts = [p for p in listed.get("lineage") or [] if isinstance(p, Mapping)]
        kinds = [p.get("kind") for p in parts]
        expected = ["competition", "task"] if competition is not None else ["task"]
        check(f"market_lineage of listing {listing.get('listing_id')} on {listed_by}",
              bool(listed.get("ok")) and kinds == expected and bool(parts) and bool(parts[-1].get("ends_at_listing")),
              " → ".join(_part_text(p) for p in parts) or "no parts")
    for name, reply in verified.items():
        problems = reply.get("problems") or []
        check(f"{name}", bool(reply.get("ok")) and reply.get("complete", True) is not False,
              "ok" if not problems else "; ".join(str(p) for p in problems))
    return checks


def _part_text(part: Mapping[str, Any]) -> str:
    """One part of a market_lineage reply, in a few words."""
    state = "ok" if part.get("ok") else "FAILED: " + "; ".join(str(p) for p in part.get("problems") or [])
    if part.get("kind") == "competition":
        winner = part.get("winner") or {}
        return f"competition {part.get('competition_id')} {state} (winner {short_hex(winner.get('model_hash'))})"
    ends = f", ends at listing {part.get('listing_id')}" if part.get("ends_at_listing") else ""
    return f"task {part.get('task_id')} {state} ({part.get('rounds_checked')} rounds replayed{ends})"


def _same(a: Any, b: Any) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a.lower() == b.lower()


def failure_line(stages: Sequence[StageResult]) -> str | None:
    """The one line naming the first stage that failed (None when all passed)."""
    for number, stage in enumerate(stages, 1):
        if not stage.ok:
            return f"pipeline failed at stage {number} ({STAGE_TITLES.get(stage.name, stage.name)}): {stage.summary}"
    missing = [s for s in STAGES if s not in {x.name for x in stages}]
    return f"pipeline stopped before stage {STAGES.index(missing[0]) + 1} ({STAGE_TITLES[missing[0]]})" if missing else None


def stages_json(stages: Sequence[StageResult]) -> list[dict[str, Any]]:
    return [asdict(s) for s in stages]


def render_pipeline_markdown(report: Mapping[str, Any]) -> str:
    """report.md of a pipeline run: the stages, then each one's figures, then the lineage."""
    stages = [StageResult(**s) for s in report["stages"]]
    failed = failure_line(stages)
    lines = [
        f"# flockd testnet --pipeline: {report['recipe']} on {report['nodes']} nodes", "",
        f"**{'every stage passed' if failed is None else failed}**; the stages took {report['wall_seconds']:.0f} s, "
        f"after {report.get('setup_seconds', 0):.0f} s to start the daemons and form the mesh.", "",
        "| # | stage | result | seconds |", "|---:|---|---|---:|",
    ]
    for number, stage in enumerate(stages, 1):
        mark = "ok" if stage.ok else "**FAILED**"
        lines.append(f"| {number} | {STAGE_TITLES.get(stage.name, stage.name)} | {mark}: {stage.summary} | {stage.seconds:.0f} |")
    if report.get("arena"):
        lines += ["", _arena_lines(report["arena"])]
    if report.get("alliance"):
        lines += _alliance_lines(report["alliance"])
    if report.get("listing"):
        lines += _listing_lines(report["listing"])
    if report.get("serving"):
        lines += _serving_lines(report["serving"])
    if report.get("chat"):
        lines += _chat_lines(report["chat"])
    if report.get("lineage"):
        lines += ["", "## The lineage, verified", "", report["lineage"]["chain"], "",
                  "| check | ok | detail |", "|---|---|---|"]
        lines += [f"| {c['what']} | {'yes' if c['ok'] else '**NO**'} | {c['detail']} |" for c in report["lineage"]["checks"]]
    lines += ["", "## How this was produced", "", f"`{report['command']}`: {report['roles']}", ""]
    return "\n".join(lines)


def _arena_lines(arena: Mapping[str, Any]) -> str:
    rows = [f"## 1. Arena competition {arena['competition_id']} ({arena['recipe']})", "",
            "Scores are bits per character on the creator's held-out text, as the contract ranks them (higher is "
            "better): 8,000,000 − bpc × 10⁶.", "",
            "| rank | node | training | submission | median score | reward (tokens) |",
            "|---:|---|---|---|---:|---:|"]
    for row in arena["leaderboard"]:
        training = ", ".join(f"{k}={v}" for k, v in (row.get("training") or {}).items())
        bpc = row.get("median_bpc")
        rows.append(f"| {row['rank']} | {row['node']} | {training} | `{short_hex(row['model_hash'])}` | {row['median']}"
                    + (f" ({bpc:.4f} bpc)" if isinstance(bpc, float) else "") + f" | {row['reward'] / 10**18:.2f} |")
    rows += ["", "Validators: " + "; ".join(
        f"{v['node']} scored {', '.join(_scored(s) for s in v['scores'])} (closeness {v['closeness']})"
        for v in arena["validators"])]
    rows += ["", "arena_verify: " + ", ".join(f"{n}: {'ok' if v['ok'] else 'FAILED ' + '; '.join(v['problems'])}"
                                              for n, v in arena["arena_verify"].items())]
    return "\n".join(rows)


def _scored(score: Mapping[str, Any]) -> str:
    """One validator's score of one submission, named by its trainer when known."""
    return f"{score.get('node') or '#' + str(score.get('submission'))}: {score['score']}"


def _alliance_lines(alliance: Mapping[str, Any]) -> list[str]:
    rows = ["", f"## 2. Alliance task {alliance['task_id']} ({', '.join(alliance['members'])}; "
                f"initial model `{short_hex(alliance['model_init_hash'])}`)", "",
            "| round | proposals | accepted | test bpc (pooled) | token accuracy | seconds | model |",
            "|---:|---:|---:|---:|---:|---:|---|"]
    for r in alliance["rounds"]:
        rows.append(f"| {r['round']} | {r['proposals']} | {r['accepted']} | {_num(r['test_loss'])} | {_num(r['test_accuracy'])} "
                    f"| {_num(r['seconds'], '.0f')} | `{short_hex(r['model_hash'])}` |")
    rows += ["", f"Every member holds the chain's final model: {'yes' if alliance['all_nodes_agree'] else '**NO**'}."]
    return rows


def _listing_lines(listing: Mapping[str, Any]) -> list[str]:
    return ["", f"## 3. Listing {listing['listing_id']}: `{listing['name']}`", "",
            f"Listed by {listing['lister_node']} for task {listing['task_id']}: model `{listing['model_hash']}`, "
            f"lineage root `{listing.get('lineage_root', '—')}`, licence {listing.get('licence') or '—'}."]


def _serving_lines(serving: Mapping[str, Any]) -> list[str]:
    return ["", f"## 4. Served by {serving['node']} (took no part in the task)", "",
            f"market_fetch: from {serving['fetched_from'] or 'its own store'}, served: {serving['served']}; "
            f"`GET /v1/models` on {serving['url']}: {', '.join(serving['models'])}."]


def _chat_lines(chat: Mapping[str, Any]) -> list[str]:
    rows = ["", "## 5. Chat (the official `openai` client, retrieval on)", "",
            f"Q: {chat['question']}", "", f"A: `{chat['answer']!r}`", "",
            "| source | file | chunk | score |", "|---:|---|---:|---:|"]
    rows += [f"| [{s['index']}] | {s['file']} | {s['chunk']} | {s['score']} |" for s in chat["sources"]]
    rows += ["", f"The fact ({chat['fact']}) is only in {chat['fact_file']}: source [{chat['fact_source_rank']}], "
                 f"in the prompt under that number: {'yes' if chat['prompt_cites_fact'] else 'NO'}; "
                 f"in the model's own words: {'yes' if chat['answer_has_fact'] else 'no (a tiny model writes noise)'}."]
    return rows


def _num(value: Any, fmt: str = ".4f") -> str:
    return "—" if value is None else format(value, fmt)
