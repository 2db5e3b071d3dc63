"""The testnet's live progress view: one table row per node, from its status replies.

Pure functions for a `rich.live.Live` loop. Unlike the report, a partial or missing reply
(a node restarting, a poll that timed out: pass None) renders as a dash instead of raising,
so one slow node never stops the view of the others.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table
from rich.text import Text

from flockd.lm.testnet import LM_RECIPES
from flockd.testnet.report import node_name, short_hex

Status = Mapping[str, Any] | None

_ROLE_STYLE = {"proposer": "bold magenta", "voter": "cyan"}


def progress_table(
    statuses: Sequence[Status], round_statuses: Sequence[Status], behaviours: Mapping[int, str] | None = None
) -> Table:
    """`statuses[i]` / `round_statuses[i]`: node i's task_status / round_status reply;
    `behaviours`: the malicious nodes' attack specs, by index (a column when any)."""
    behaviours = behaviours or {}
    caption = summary_line(statuses, _malicious_addresses(statuses, behaviours) if behaviours else None)
    table = Table(title="flockd testnet", caption=caption, caption_justify="left")
    columns = ("node", "address", "role", "phase", "proposals", "accuracy", "model")
    for column in (*columns, "attack") if behaviours else columns:
        table.add_column(column, justify="right" if column in ("proposals", "accuracy") else "left")
    for i, status in enumerate(statuses):
        rs = round_statuses[i] if i < len(round_statuses) else None
        row = _row(i, status or {}, rs or {})
        if behaviours:
            row.append(Text(behaviours[i], style="bold red") if i in behaviours else Text("honest", style="dim"))
        table.add_row(*row)
    return table


def _malicious_addresses(statuses: Sequence[Status], behaviours: Mapping[int, str]) -> frozenset[str]:
    """Lower-case addresses of the malicious nodes that answered (status `me`)."""
    found = [(statuses[i] or {}).get("me") for i in behaviours if i < len(statuses)]
    return frozenset(a.lower() for a in found if isinstance(a, str))


def _row(index: int, status: Mapping[str, Any], rs: Mapping[str, Any]) -> list[str | Text]:
    name = node_name(index)
    if not status:
        return [name, "—", "—", Text("unreachable", style="red"), "—", "—", "—"]
    role = rs.get("role") or status.get("role")
    phase = "finished" if status.get("state") == "finished" else (rs.get("phase") or status.get("state") or "—")
    model = status.get("model_hash")
    chain = status.get("chain_model_hash")
    on_chain = isinstance(model, str) and isinstance(chain, str) and model.lower() == chain.lower()
    return [
        name,
        short_hex(_text(status.get("me"))),
        Text(str(role or "—"), style=_ROLE_STYLE.get(str(role), "")),
        str(phase),
        _proposals_received(rs.get("proposals")),
        _accuracy(_last(status)),
        Text(short_hex(_text(model)), style="green" if on_chain else "yellow"),
    ]


def summary_line(statuses: Sequence[Status], malicious: frozenset[str] | None = None) -> str:
    """"round 3/10 · accepted 2 rejected 1 · accuracy 0.953", from the first node that
    answered; with `malicious` (lower-case addresses) also how many of theirs got through."""
    status = next((s for s in statuses if s), None)
    if status is None:
        return "no node answered"
    head = f"round {status.get('round', '?')}/{status.get('rounds', '?')}"
    if status.get("state") == "finished":
        head += " (finished)"
    last = _last(status)
    if not last:
        return f"{head} · no round finished yet"
    line = (
        f"{head} · accepted {last.get('accepted', '?')} rejected {last.get('rejected', '?')}"
        f" · accuracy {_accuracy(last)}"
    )
    if status.get("recipe") in LM_RECIPES and isinstance(last.get("test_loss"), int | float):
        line += f" · bits per character {last['test_loss']:.4f}"  # an LM recipe's loss
    if malicious is not None:
        line += f" · malicious accepted {_count_in(last.get('accepted_proposers'), malicious)}"
        line += f" of {_count_in(last.get('proposers'), malicious)} proposed"
    return line


def _count_in(addresses: Any, wanted: frozenset[str]) -> str:
    if not isinstance(addresses, list):
        return "?"
    return str(sum(1 for a in addresses if isinstance(a, str) and a.lower() in wanted))


def _last(status: Mapping[str, Any]) -> Mapping[str, Any]:
    history = status.get("history")
    if isinstance(history, list) and history and isinstance(history[-1], Mapping):
        return history[-1]
    return {}


def _accuracy(entry: Mapping[str, Any]) -> str:
    value = entry.get("test_accuracy")
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def _proposals_received(proposals: Any) -> str:
    if not isinstance(proposals, list):
        return "—"
    received = sum(1 for p in proposals if isinstance(p, Mapping) and p.get("received"))
    return f"{received}/{len(proposals)}"


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None
