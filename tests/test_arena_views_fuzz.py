"""The Arena client's views against a hostile chain node: whatever bytes an eth_call
returns, a view gives a value within the contract's bounds or raises a ChainError
(undecodable, or MalformedView: decodes but breaks a bound), never another exception."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import astuple
from typing import Any

import pytest
import trio
from eth_abi import encode as abi_encode
from eth_abi.tools import get_abi_strategy
from hypothesis import given, settings
from hypothesis import strategies as st

from flockd.chain.client.abc import ChainBackend
from flockd.chain.client.arena import (
    ARENA_PHASE_FINALISED,
    MAX_ELECTED,
    MAX_SCORE,
    MAX_TRAINERS,
    MAX_VALIDATORS,
    Arena,
    CompetitionParams,
    PhaseEnds,
)
from flockd.chain.client.arena_pools import MAX_COMMISSION_BPS, ArenaPools, Pool
from flockd.chain.client.artifacts import ARENA, abi_type, load
from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.view_checks import MAX_VIEW_BYTES, MalformedView

ARTIFACT = load(ARENA)
WHO = bytes(range(20))
E18 = 10**18


class ReplyingBackend(ChainBackend):
    """A chain node that answers every eth_call with `reply` (the hostile node)."""

    def __init__(self) -> None:
        self.reply = b""

    async def request(self, method: str, params: list[Any]) -> Any:
        assert method == "eth_call", method
        return "0x" + self.reply.hex()

    async def aclose(self) -> None:
        return None


def _in_bounds_params(p: CompetitionParams) -> bool:
    if p.eval_commitment == bytes(32) and p.tolerance_bps == 0:  # no such competition: all zeros
        return astuple(p) == (bytes(32),) * 3 + (0,) * 15
    return (p.expected_validators <= MAX_ELECTED and p.slash_bps <= 5000 and p.validator_cap >= p.validator_stake
            and p.tolerance_bps >= 1 and p.rank_decay_bps >= 1)


def _sorted_ends(e: PhaseEnds) -> bool:
    return list(astuple(e)) == sorted(astuple(e))


def _fits_pool(p: Pool) -> bool:
    return p.locked <= p.stake and max(p.commission_bps, p.next_commission_bps) <= MAX_COMMISSION_BPS


# (ABI function, the client call, what every value it returns satisfies)
Call = Callable[[Arena, ArenaPools], Awaitable[Any]]
VIEWS: list[tuple[str, Call, Callable[[Any], bool]]] = [
    ("get_params", lambda a, p: a.get_params(1), _in_bounds_params),
    ("get_competition", lambda a, p: a.get_competition(1), lambda c: len(c.creator) == 20),
    ("get_member", lambda a, p: a.get_member(1, WHO), lambda m: 0 <= m.role <= 2),
    ("get_trainers", lambda a, p: a.get_trainers(1), lambda t: len(t) <= MAX_TRAINERS),
    ("get_validators", lambda a, p: a.get_validators(1), lambda v: len(v) <= MAX_VALIDATORS),
    ("get_elected", lambda a, p: a.get_elected(1), lambda v: len(v) <= MAX_ELECTED),
    ("get_submissions", lambda a, p: a.get_submissions(1),
     lambda s: len(s) <= MAX_TRAINERS and all(x.median <= MAX_SCORE and x.rank <= MAX_TRAINERS for x in s)),
    ("get_scores", lambda a, p: a.get_scores(1, WHO), lambda s: len(s) <= MAX_TRAINERS and all(x <= MAX_SCORE for x in s)),
    ("phase", lambda a, p: a.phase(1), lambda x: 0 <= x <= ARENA_PHASE_FINALISED),
    ("deadlines", lambda a, p: a.deadlines(1), _sorted_ends),
    ("seed", lambda a, p: a.seed(1), lambda s: len(s) == 32),
    ("election_threshold", lambda a, p: a.election_threshold(1, WHO), lambda t: 0 <= t <= 2**64),
    ("claimable", lambda a, p: a.claimable(WHO), lambda x: x >= 0),
    ("burned", lambda a, p: a.burned(), lambda x: x >= 0),
    ("competition_count", lambda a, p: a.competition_count(), lambda x: x >= 0),
    ("token", lambda a, p: a.token(), lambda t: len(t) == 20),
    ("get_pool", lambda a, p: p.get_pool(WHO), _fits_pool),
    ("commission", lambda a, p: p.commission(WHO), lambda c: 0 <= c <= MAX_COMMISSION_BPS),
    ("shares_of", lambda a, p: p.shares_of(WHO, WHO), lambda x: x >= 0),
    ("pending_rewards", lambda a, p: p.pending_rewards(WHO, WHO), lambda x: x >= 0),
    ("get_unbonding", lambda a, p: p.get_unbonding(WHO), lambda u: u.amount >= 0),
    ("backing", lambda a, p: p.backing(1, WHO), lambda x: x >= 0),
]


def output_types(fn: str) -> list[str]:
    return [abi_type(o) for o in ARTIFACT.function(fn)["outputs"]]


def well_typed(fn: str) -> st.SearchStrategy[bytes]:
    """Replies that decode (any values the ABI types hold), so the bound checks are reached."""
    types = output_types(fn)
    return get_abi_strategy(f"({','.join(types)})").map(lambda values: abi_encode(types, list(values)))


def outcome(fn: str, call: Call, reply: bytes) -> Any:
    backend = ReplyingBackend()
    backend.reply = reply
    client = ContractClient(backend)
    address = bytes(20)

    async def run() -> Any:
        return await call(Arena(client, address), ArenaPools(client, address))

    return trio.run(run)


@pytest.mark.parametrize(("fn", "call", "holds"), VIEWS, ids=[v[0] for v in VIEWS])
@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_a_view_returns_a_bounded_value_or_a_chain_error(fn: str, call: Call, holds: Callable[[Any], bool], data: Any) -> None:
    reply = data.draw(st.one_of(st.binary(max_size=1024), well_typed(fn)), label="reply")
    try:
        value = outcome(fn, call, reply)
    except ChainError:
        return
    assert holds(value), value


def test_the_view_table_covers_every_view_of_the_contract() -> None:
    views = {e["name"] for e in ARTIFACT.abi if e.get("type") == "function" and e.get("stateMutability") == "view"}
    assert views - {v[0] for v in VIEWS} == {"vrf_verifier"}  # the client never reads it


# -- the bounds, one by one (each once decoded silently into the caller) ------------------


def reply(fn: str, *values: Any) -> bytes:
    return abi_encode(output_types(fn), list(values))


def call_of(fn: str) -> Call:
    return next(c for name, c, _ in VIEWS if name == fn)


@pytest.mark.parametrize(
    ("fn", "raw", "says"),
    [
        ("phase", reply("phase", 200), "phase = 200"),
        ("get_trainers", reply("get_trainers", ["0x" + "11" * 20] * (MAX_TRAINERS + 1)), "trainers: 25 items"),
        ("get_scores", reply("get_scores", [MAX_SCORE + 1]), "score ="),
        ("get_member", reply("get_member", (7, 0, bytes(32), False, bytes(32), False)), "member.role = 7"),
        ("deadlines", reply("deadlines", 10, 9, 11, 12, 13), "deadlines out of order"),
        ("get_pool", reply("get_pool", (1, 1, 2, 1, 0, 0, 0)), "pool.locked = 2"),
        ("get_pool", reply("get_pool", (1, 1, 0, 1, 0, 9000, 5)), "pool.next_commission_bps = 9000"),
        ("commission", reply("commission", 10_000), "commission = 10000"),
        ("election_threshold", reply("election_threshold", 2**64 + 1), "election_threshold"),
        ("get_submissions", reply("get_submissions", [("0x" + "11" * 20, bytes(32), bytes(32), True, False, 0, 99)]),
         "submission.rank = 99"),
        ("get_elected", b"\x00" * (MAX_VIEW_BYTES + 1), "at most 65536"),
        # a settlement divides by tolerance + error: 0 and a score on the median divided by 0
        ("get_params", reply("get_params", (b"\x01" * 32,) * 3 + (16, 8, 8, 8, 8, E18, E18, E18, E18, E18, 4, 7000, 5000, 0, 1000)),
         "params.tolerance_bps = 0"),
    ],
    ids=lambda v: v if isinstance(v, str) and len(v) < 30 else "",
)
def test_an_out_of_bounds_value_is_a_malformed_view(fn: str, raw: bytes, says: str) -> None:
    with pytest.raises(MalformedView, match=says):
        outcome(fn, call_of(fn), raw)


def test_a_competition_that_does_not_exist_reads_as_empty_params() -> None:
    zeros = reply("get_params", (bytes(32), bytes(32), bytes(32), *[0] * 15))
    assert outcome("get_params", call_of("get_params"), zeros).join_blocks == 0
    bad = reply("get_params", (bytes(32), bytes(32), b"\x01" * 32, *[0] * 15))
    with pytest.raises(MalformedView, match="join_blocks"):
        outcome("get_params", call_of("get_params"), bad)
