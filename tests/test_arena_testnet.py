"""`scripts/testnet --arena`'s own parts without daemons: the flag checks, the roles and
the trainers' settings, and the report section (the whole run: docs/arena.md)."""

from __future__ import annotations

import pytest

from flockd.testnet.arena import ArenaPlan, arena_markdown, handoff_report, trainer_settings
from flockd.testnet.main import parse_args

E18 = 10**18


@pytest.mark.parametrize("flags", [["--nodes", "4"], ["--chaos"], ["--recipe", "cancer-logreg"], ["--rounds", "0"]])
def test_arena_flags_that_cannot_run_are_refused(flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        parse_args(["--arena", "--nodes", "5", *flags])
    assert exited.value.code == 2 and "--arena needs" in capsys.readouterr().err


def test_every_trainer_has_its_own_data_and_hyperparameters() -> None:
    settings = [trainer_settings(k, 3) for k in range(3)]
    assert [s["node_index"] for s in settings] == [0, 1, 2]
    assert len({(s.get("epochs"), s.get("lr"), s["seed"]) for s in settings}) == 3
    assert ArenaPlan().validators == 2


def test_the_report_section_shows_leaderboard_scores_claims_pool_and_the_hand_off() -> None:
    verified = {"node0": {"ok": True, "complete": True, "rounds_checked": 2, "problems": [],
                          "competition": {"competition_id": 1, "ok": True, "winner": {"index": 1, "trainer": "0x" + "ab" * 20,
                                                                                    "model_hash": "0x" + "cd" * 32, "median": 900000}}}}
    arena = {
        "competition_id": 1, "spec": {"recipe": "digits-mlp"},
        "leaderboard": [{"rank": 1, "index": 1, "node": "node1", "trainer": "0x" + "ab" * 20, "model_hash": "0x" + "cd" * 32,
                         "median": 900000, "reward": 466 * E18, "training": {"epochs": 5}}],
        "validators": [{"node": "node3", "revealed": True, "closeness": 20000, "reward": 150 * E18, "slashed": 0,
                        "scores": [{"submission": 0, "node": None, "score": 5, "median": None, "deviation": None},
                                   {"submission": 1, "node": "node1", "score": 899000, "median": 900000, "deviation": -1000}]}],
        "arena_verify": {"node0": {"ok": True, "problems": []}},
        "claims": {"node0": 100 * E18},
        "handoff": handoff_report(verified, 7, "0x" + "cd" * 32),
        "pool": {"delegator": "node0", "operator": "node3", "delegated": 50 * E18, "value": 50 * E18, "collected": 60 * E18,
                 "claimed": 160 * E18, "undelegated": 50 * E18, "release_block": 1150},
        "delegation": {"delegator": "node0", "participant": "node1", "task_id": 7, "amount": 50 * E18, "shares": 50 * E18,
                       "withdrawn": 50 * E18},
    }
    text = arena_markdown(arena)
    assert "| 1 | node1 |" in text and "epochs=5" in text and "466.00" in text
    assert "node1: 899000 (-1000)" in text and "#0: 5 (unranked)" in text
    assert "node0: ok" in text and "| node0 | 100.00 |" in text
    assert "Task 7 started from competition 1's winner: submission 1" in text
    assert "| node0 | True | True | True | 2 |" in text
    assert "node0 delegated 50.00 tokens to node3's Arena pool" in text and "collected 60.00 tokens" in text
    assert "withdrawable from block 1150" in text
    assert "node0 delegated 50.00 tokens to node1's stake pool in task 7" in text and "withdrew 50.00 tokens" in text
