"""The chaos scheduler's rules, without processes: never the bootstrap node, never more
than a third of the nodes down or cut off at once, every kill restarted, one partition
longer than a round, and the same seed gives the same plan."""

from __future__ import annotations

import random

import pytest

from flockd.testnet.chaos import (
    BOOTSTRAP,
    ChaosScheduler,
    Isolate,
    Kill,
    Restart,
    max_down,
    plan_chaos,
)


def simulate(nodes: int, rounds: int, seed: int, *, restart_takes: float = 3.0) -> list[tuple[float, object]]:
    """Drive a scheduler through `rounds` rounds of random length (restarts answer after
    `restart_takes` seconds), checking the cap at every tick."""
    timing = random.Random(seed)
    scheduler = ChaosScheduler(plan_chaos(nodes, rounds, seed))
    answering_at: dict[int, float] = {}
    log: list[tuple[float, object]] = []
    now, cap = 0.0, max_down(nodes)
    round_ends = []
    for _ in range(rounds):
        now += timing.uniform(15, 60)
        round_ends.append(now)
    t, r = 0.0, 0
    end = round_ends[-1] + 300  # the last partition and restarts play out after the task
    while t < end:
        while r < rounds and t >= (round_ends[r - 1] if r else 0.0):
            scheduler.round_seen(r, t)
            r += 1
        for node, at in list(answering_at.items()):
            if t >= at:
                scheduler.back(node)
                del answering_at[node]
        for action in scheduler.step(t):
            log.append((t, action))
            assert action.node != BOOTSTRAP
            if isinstance(action, Restart):
                answering_at[action.node] = t + restart_takes
        assert len(scheduler.unavailable(t)) <= cap
        t += 0.5
    return log


@pytest.mark.parametrize("nodes", [3, 4, 6, 7, 9, 12])
@pytest.mark.parametrize("seed", range(8))
def test_cap_and_bootstrap_hold(nodes: int, seed: int) -> None:
    log = simulate(nodes, 8, seed)
    kills = [a.node for _, a in log if isinstance(a, Kill)]
    restarts = [a.node for _, a in log if isinstance(a, Restart)]
    assert sorted(kills) == sorted(restarts)  # every kill is restarted
    isolations = [a for _, a in log if isinstance(a, Isolate)]
    assert len(isolations) == 1


def test_partition_lasts_longer_than_any_round_before_it() -> None:
    scheduler = ChaosScheduler(plan_chaos(6, 4, seed=1))
    for r, start in enumerate([0.0, 50.0, 120.0, 170.0]):
        scheduler.round_seen(r, start)
    assert scheduler.longest_round() == 70.0
    assert scheduler.partition_seconds() == 105.0


def test_partition_picks_another_node_while_the_planned_one_is_down() -> None:
    plan = plan_chaos(6, 4, seed=3)
    assert plan.partition is not None
    scheduler = ChaosScheduler(plan)
    scheduler.pending.clear()
    scheduler.down[plan.partition.node] = 1e9
    for r in range(plan.partition.round + 1):
        scheduler.round_seen(r, 100.0 * r)
    actions = scheduler.step(100.0 * plan.partition.round + 60)
    assert [type(a) for a in actions] == [Isolate]
    assert actions[0].node not in (BOOTSTRAP, plan.partition.node)
    # Two of six out: a third. Nothing more until one is back.
    assert scheduler.unavailable(100.0 * plan.partition.round + 61) == {plan.partition.node, actions[0].node}


def test_too_few_nodes_for_chaos_do_nothing() -> None:
    plan = plan_chaos(2, 5, seed=0)
    assert plan.kills == () and plan.partition is None


def test_same_seed_same_plan() -> None:
    assert plan_chaos(6, 8, 42) == plan_chaos(6, 8, 42)
    assert plan_chaos(6, 8, 42) != plan_chaos(6, 8, 43)
    assert simulate(6, 8, 42) == simulate(6, 8, 42)


def test_kill_waiting_for_the_cap_is_dropped_when_its_round_is_over() -> None:
    plan = plan_chaos(6, 8, seed=5)
    scheduler = ChaosScheduler(plan)
    scheduler.partition_pending = None
    scheduler.down = {1: 1e9, 2: 1e9}  # a third already down, never back
    scheduler.restarting = {1, 2}
    for r in range(8):
        scheduler.round_seen(r, 100.0 * r)
        assert not [a for a in scheduler.step(100.0 * r + 99) if isinstance(a, Kill)]
    scheduler.round_seen(8, 800.0)  # finished
    scheduler.step(1e6)
    assert scheduler.dropped_kills == len(plan.kills) and not scheduler.pending


def test_reorgs_counted_from_heads_seen() -> None:
    from flockd.testnet.chaos_driver import count_reorgs

    canonical = {h: f"0x{h:02x}" for h in range(1, 20)}
    fork = {h: f"0xf{h:02x}" for h in range(1, 20)}
    heads_seen = {
        0: [(h, canonical[h]) for h in range(1, 20)],  # never off the final chain
        # cut off: sealed 5..9 alone, then back on the final chain at 12; later a 1-block flip
        3: [(4, canonical[4]), (5, fork[5]), (7, fork[7]), (9, fork[9]), (12, canonical[12]),
            (15, fork[15]), (16, canonical[16]), (30, "0xunknown")],
    }
    assert count_reorgs(heads_seen, canonical) == {
        "reorgs": 2, "reorgs_by_node": {"node3": 2}, "orphaned_heads": 4, "deepest_reorg_at_least": 5,
    }
    assert count_reorgs({}, canonical)["reorgs"] == 0


def test_affected_rounds_span_each_outage() -> None:
    from flockd.testnet.chaos_driver import ChaosEvent, affected_rounds

    events = [
        ChaosEvent(1.0, 1, "kill", 2), ChaosEvent(9.0, 1, "restart", 2), ChaosEvent(20.0, 2, "back", 2),
        ChaosEvent(30.0, 4, "isolate", 3), ChaosEvent(90.0, 6, "reconnected", 3),
        ChaosEvent(95.0, 5, "kill", 1), ChaosEvent(150.0, 8, "back", 1),  # back after the task (8 = finished)
        ChaosEvent(95.0, 7, "kill", 4),  # never back
    ]
    assert affected_rounds(events, 8) == [1, 2, 4, 5, 6, 7]
