"""The testnet report and progress view, over synthetic task_status / round_status replies."""

import copy
import json

import pytest
from rich.console import Console

from flockd.testnet.progress import progress_table, summary_line
from flockd.testnet.report import (
    ReportError,
    build_report,
    render_markdown,
    stake_changes,
    write_report,
)

ADDRESSES = ["0xAaaa000000000000000000000000000000000001",
             "0xBbbb000000000000000000000000000000000002",
             "0xCccc000000000000000000000000000000000003"]
ACCURACIES = [0.62, 0.84, 0.93, 0.961]
FINAL_HASH = "0x" + "ab" * 32


def model_hash(r: int) -> str:
    return FINAL_HASH if r == 3 else "0x" + f"{r:02x}" * 32


def history() -> list[dict]:
    rows = []
    for r, acc in enumerate(ACCURACIES):
        proposers = ADDRESSES[: 2 + r % 2]  # 2 or 3 proposers; node2 proposes in odd rounds
        accepted = proposers[:2]
        rows.append({
            "round": r, "proposals": len(proposers), "accepted": len(accepted),
            "rejected": len(proposers) - len(accepted), "proposers": proposers,
            "accepted_proposers": accepted, "model_hash": model_hash(r), "test_accuracy": acc,
            "test_loss": 1.0 - acc, "started_block": 10 * r, "finished_block": 10 * r + 9,
            "seconds": 20.0 + r, "gas_used": 1_000_000 + r,
        })
    return rows


def statuses(n: int = 3) -> list[dict]:
    return [{
        "task_id": 1, "state": "finished", "recipe": "digits-mlp", "rounds": 4, "round": 4,
        "participants": ADDRESSES, "me": ADDRESSES[i], "role": None,
        "model_hash": FINAL_HASH, "chain_model_hash": FINAL_HASH.upper().replace("0X", "0x"),
        "history": history(),
    } for i in range(n)]


def report_of(sts: list[dict], **kw) -> dict:
    args = dict(nodes=len(sts), rounds=4, recipe="digits-mlp", partition="iid", wall_seconds=123.456)
    return build_report(sts, **{**args, **kw})


def test_report_figures():
    report = report_of(statuses())
    assert [r["test_accuracy"] for r in report["per_round"]] == ACCURACIES
    assert [r["proposals"] for r in report["per_round"]] == [2, 3, 2, 3]
    assert [r["rejected"] for r in report["per_round"]] == [0, 1, 0, 1]
    # each of the 3 nodes logged its own gas: a round's gas is their sum
    assert [r["gas_used"] for r in report["per_round"]] == [3 * (1_000_000 + r) for r in range(4)]
    assert report["totals"] == {"proposals": 10, "accepted": 8, "rejected": 2,
                                "gas_used": 12_000_018, "seconds": 86.0}
    assert report["final_accuracy"] == 0.961 and report["accuracies_agree"]
    assert report["model_hashes"] == {f"node{i}": FINAL_HASH for i in range(3)}
    assert report["chain_model_hash"].lower() == FINAL_HASH  # hashes compare case-blind
    assert report["all_nodes_agree"] and report["disagreeing_nodes"] == []
    assert all(r["nodes_agree"] for r in report["per_round"])
    assert report["rounds_completed"] == 4 and report["wall_seconds"] == 123.456
    assert "--partition iid" in report["command"]


def test_stakes_start_to_end_and_the_honest_nodes_below_their_start():
    e18 = 10**18
    balances = {
        "node0": {"shares": 100 * e18, "value": 112 * e18},  # rewarded
        "node1": {"shares": 100 * e18, "value": 95 * e18},  # an unopened commitment slashed
        "node2": {"shares": 100 * e18, "value": 60 * e18},  # malicious, slashed
    }
    stakes = stake_changes(balances, {"node2": "collude"})
    assert stakes["per_node"]["node1"] == {"start": 100 * e18, "end": 95 * e18, "change": -0.05}
    honest = stakes["honest"]
    assert honest["count"] == 2 and honest["below_start"] == 1
    assert (honest["lowest"], honest["highest"]) == (-0.05, 0.12)
    report = report_of(statuses(), malicious={"node2": "collude"})
    report["stakes"] = stakes
    text = render_markdown(report)
    assert "lowest -5.00%, median +12.00%, highest +12.00%; 1 of 2 ended below their start" in text
    assert "| +12.00% |" in text and "| -40.00% | collude |" in text


def test_one_node_with_another_hash_breaks_agreement():
    sts = statuses()
    sts[2]["model_hash"] = "0x" + "cd" * 32
    sts[2]["history"][3]["model_hash"] = "0x" + "cd" * 32
    sts[2]["history"][3]["test_accuracy"] = 0.5
    report = report_of(sts)
    assert not report["all_nodes_agree"] and report["disagreeing_nodes"] == ["node2"]
    assert not report["per_round"][3]["nodes_agree"] and report["per_round"][2]["nodes_agree"]
    assert not report["accuracies_agree"] and report["final_accuracy"] == 0.961


def test_no_chain_hash_is_no_agreement():
    sts = statuses()
    for s in sts:
        s["chain_model_hash"] = None
    assert not report_of(sts)["all_nodes_agree"]


def test_malicious_proposals_counted():
    report = report_of(statuses(), malicious={"node2": "sign-flip"})
    assert [r["malicious_proposed"] for r in report["per_round"]] == [0, 1, 0, 1]
    assert [r["malicious_accepted"] for r in report["per_round"]] == [0, 0, 0, 0]


@pytest.mark.parametrize("breakage", [
    lambda s: s.pop("history"),
    lambda s: s.update(history=[1]),
    lambda s: s["history"][0].update(proposals="3"),
    lambda s: s["history"][0].update(accepted=-1),
    lambda s: s["history"][0].update(round=True),
    lambda s: s["history"][0].update(test_accuracy=float("nan")),
    lambda s: s["history"][0].pop("gas_used"),
    lambda s: s["history"][0].update(proposers="0xAaaa"),
    lambda s: s.update(me=None),
    lambda s: s.update(model_hash=7),
])
def test_malformed_status_rejected(breakage):
    sts = statuses()
    breakage(sts[1])
    with pytest.raises(ReportError):
        report_of(sts)


def test_no_status_rejected():
    with pytest.raises(ReportError):
        report_of([])


def test_files_written_and_deterministic(tmp_path):
    report = report_of(statuses(), malicious={"node2": "noise"})
    paths = write_report(report, tmp_path / "a")
    assert [p.name for p in paths] == ["report.json", "report.md", "accuracy.png"]
    assert json.loads(paths[0].read_text()) == report
    md = paths[1].read_text()
    assert "| 3 | 0.9610 |" in md and "node2 (noise)" in md and "How this was produced" in md
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    again = write_report(copy.deepcopy(report), tmp_path / "b")
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]


def test_report_of_a_task_with_no_finished_round(tmp_path):
    sts = statuses()
    for s in sts:
        s["history"] = []
    report = report_of(sts)
    assert report["final_accuracy"] is None and report["per_round"] == []
    assert write_report(report, tmp_path)[2].stat().st_size > 0


def render(table) -> str:
    console = Console(record=True, width=140, color_system=None)
    console.print(table)
    return console.export_text()


def test_progress_table_renders():
    sts = statuses()
    for s in sts:
        s.update(state="running", round=3, history=s["history"][:3])
    sts[1]["model_hash"] = "0x" + "ee" * 32
    round_statuses = [
        {"round": 3, "phase": "commit", "role": "proposer" if i == 0 else "voter",
         "proposals": [{"index": 0, "proposer": ADDRESSES[0], "delta_hash": "0x01", "received": i != 2},
                       {"index": 1, "proposer": ADDRESSES[1], "delta_hash": "0x02", "received": True}],
         "votes_committed": 1, "votes_revealed": 0}
        for i in range(3)
    ]
    text = render(progress_table([*sts, None], round_statuses))
    assert "proposer" in text and "voter" in text and "commit" in text
    assert "2/2" in text and "1/2" in text and "0.930" in text
    assert "0xAaaa…0001" in text and "0xeeee…eeee" in text
    assert "node3" in text and "unreachable" in text
    assert "round 3/4 · accepted 2 rejected 0 · accuracy 0.930" in text


def test_summary_line():
    assert summary_line(statuses()) == "round 4/4 (finished) · accepted 2 rejected 1 · accuracy 0.961"
    fresh = [{"state": "created", "round": 0, "rounds": 10, "history": []}]
    assert summary_line(fresh) == "round 0/10 · no round finished yet"
    assert summary_line([None, None]) == "no node answered"
