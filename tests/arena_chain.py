"""The Arena contract on a scratch py-evm chain with the real ECVRF precompile; the
settlement it must match is flockd.chain.client.arena_settlement."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd import sortition, vrf
from flockd.chain.client.arena import (
    CompetitionParams,
    eval_commitment,
    scores_digest,
    submission_digest,
)
from flockd.chain.client.artifacts import ARENA, STAKE_TOKEN, load
from flockd.chain.node.deploy import ScratchChain, TxFailed, TxResult
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS

TOKEN = load(STAKE_TOKEN)
ARENA_ARTIFACT = load(ARENA)
E18 = 10**18
ONE = 2**64
BPS = 10_000
TRAINER, VALIDATOR = 1, 2
PHASE_NONE, PHASE_JOIN, PHASE_SUBMIT, PHASE_REVEAL, PHASE_SCORE_COMMIT, PHASE_SCORE_REVEAL, PHASE_CLOSED, PHASE_FINALISED = range(8)
EVAL_SET_HASH = keccak(b"the private evaluation set")
EVAL_SALT = keccak(b"eval salt")


def params(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = dict(
        recipe_hash=keccak(b"recipe and config"),
        base_model_hash=keccak(b"base model"),
        eval_commitment=eval_commitment(EVAL_SET_HASH, EVAL_SALT),
        join_blocks=10,
        submit_blocks=10,
        reveal_blocks=8,
        score_commit_blocks=8,
        score_reveal_blocks=8,
        reward_pool=1000 * E18,
        creator_bond=200 * E18,
        trainer_stake=10 * E18,
        validator_stake=100 * E18,
        validator_cap=400 * E18,
        expected_validators=16,  # with few validators: every one is elected
        trainer_share_bps=7000,
        rank_decay_bps=5000,
        tolerance_bps=500,
        slash_bps=1000,
    )
    p.update(over)
    return p


PARAM_ORDER = list(params())


def as_tuple(p: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(p[k] for k in PARAM_ORDER)


def salt(who: int, what: bytes = b"") -> bytes:
    return keccak(b"salt %d " % who + what)


def model(name: str) -> bytes:
    return keccak(b"model " + name.encode())


@dataclass
class ArenaChain:
    """StakeToken and Arena on a fresh scratch chain; every account funded and approved."""

    n_accounts: int = 12
    vrf_salt: bytes = b""  # another salt, other VRF keys, other draws
    accounts: list[PrivateKey] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accounts = [PrivateKey(keccak(b"arena acct%d" % i)) for i in range(self.n_accounts)]
        self.vrf_keys = [keccak(b"arena vrf%d" % i + self.vrf_salt) for i in range(self.n_accounts)]
        addrs = [self.addr(i) for i in range(self.n_accounts)]
        self.chain = ScratchChain(funded=addrs)
        owner = self.accounts[0]
        self.token = self.chain.deploy(owner, TOKEN, "Stake", "STK", addrs[:64], [10**6 * E18] * len(addrs[:64]))
        self.address = self.chain.deploy(owner, ARENA_ARTIFACT, self.token, VRF_PRECOMPILE_ADDRESS)
        for i in range(64, self.n_accounts):
            self.chain.send(self.accounts[i % 64], self.token, TOKEN.encode_call("transfer", self.addr(i), 10**4 * E18))
        for key in self.accounts:
            self.chain.send(key, self.token, TOKEN.encode_call("approve", self.address, 2**256 - 1))
        assert all(r.ok for r in self.chain.mine())

    # --- transactions -------------------------------------------------------------------

    def addr(self, who: int) -> bytes:
        return self.accounts[who].public_key.to_canonical_address()

    def hx(self, who: int) -> str:
        return "0x" + self.addr(who).hex()

    def vrf_pk(self, who: int) -> bytes:
        return vrf.public_key(self.vrf_keys[who])

    def send(self, who: int, fn: str, *args: Any) -> None:
        self.chain.send(self.accounts[who], self.address, ARENA_ARTIFACT.encode_call(fn, *args))

    def mine(self) -> list[TxResult]:
        results = self.chain.mine()
        for r in results:
            r.check()
        return results

    def tx(self, who: int, fn: str, *args: Any) -> TxResult:
        return self.chain.transact(self.accounts[who], self.address, ARENA_ARTIFACT.encode_call(fn, *args)).check()

    def reverts(self, who: int, fn: str, *args: Any) -> str:
        """The revert reason of fn (mined in a block of its own: state moves on by a block)."""
        result = self.chain.transact(self.accounts[who], self.address, ARENA_ARTIFACT.encode_call(fn, *args))
        assert not result.ok, f"{fn} did not revert"
        with pytest.raises(TxFailed) as info:
            result.check()
        return info.value.reason

    def view(self, fn: str, *args: Any) -> Any:
        out = ARENA_ARTIFACT.decode_output(fn, self.chain.call(self.address, ARENA_ARTIFACT.encode_call(fn, *args)))
        return out[0] if len(out) == 1 else out

    def balance(self, who: int) -> int:
        data = TOKEN.encode_call("balanceOf", self.addr(who))
        return TOKEN.decode_output("balanceOf", self.chain.call(self.token, data))[0]

    def arena_balance(self) -> int:
        data = TOKEN.encode_call("balanceOf", self.address)
        return TOKEN.decode_output("balanceOf", self.chain.call(self.token, data))[0]

    def events(self, result: TxResult) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for address, topics, data in result.logs():
            if address == self.address and (decoded := ARENA_ARTIFACT.decode_log(topics, data)):
                out.append(decoded)
        return out

    # --- competition helpers ------------------------------------------------------------

    def create(self, who: int = 0, **over: Any) -> int:
        result = self.tx(who, "create", as_tuple(params(**over)))
        return ARENA_ARTIFACT.decode_output("create", result.output)[0]

    def join(self, cid: int, who: int, role: int, stake: int) -> None:
        self.send(who, "join", cid, role, stake, self.vrf_pk(who) if role == VALIDATOR else bytes(32))

    def advance_to(self, cid: int, phase: int) -> None:
        """Mine empty blocks until a tx sent now lands in `phase` (first block of it)."""
        ends = self.view("deadlines", cid)
        start = self.view("get_competition", cid)[1]
        first = {
            PHASE_SUBMIT: ends[0],
            PHASE_REVEAL: ends[1],
            PHASE_SCORE_COMMIT: ends[2],
            PHASE_SCORE_REVEAL: ends[3],
            PHASE_CLOSED: ends[4],
        }.get(phase, start)
        self.chain.mine_empty(max(0, first - (self.chain.block_number + 1)))
        assert self.view("phase", cid) == phase, "already past that phase"

    def seed(self, cid: int) -> bytes:
        join_end = self.view("deadlines", cid)[0]
        return keccak(self.chain.block_hash(join_end) + cid.to_bytes(32, "big"))

    def proof(self, who: int, cid: int) -> bytes:
        return vrf.prove(self.vrf_keys[who], self.seed(cid))

    def draw(self, who: int, cid: int) -> int:
        return sortition.draw(vrf.proof_to_hash(self.proof(who, cid)))

    def commit_submission(self, cid: int, who: int, model_hash: bytes) -> None:
        self.send(who, "commit_submission", cid, submission_digest(cid, self.addr(who), model_hash, salt(who)))

    def reveal_submission(self, cid: int, who: int, model_hash: bytes) -> None:
        self.send(who, "reveal_submission", cid, model_hash, salt(who))

    def commit_scores(self, cid: int, who: int, scores: list[int]) -> None:
        self.send(who, "commit_scores", cid, scores_digest(cid, self.addr(who), scores, salt(who, b"scores")))

    def reveal_scores(self, cid: int, who: int, scores: list[int]) -> None:
        self.send(who, "reveal_scores", cid, scores, salt(who, b"scores"))


def competition_params(**over: Any) -> CompetitionParams:
    return CompetitionParams(**params(**over))
