"""TaskRegistry on a scratch py-evm chain with the real ECVRF precompile: every function,
its reverts, and whole rounds in both vote modes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd import sortition, vrf
from flockd.chain.client.artifacts import STAKE_TOKEN, TASK_REGISTRY, load
from flockd.chain.node.deploy import ScratchChain, TxFailed, TxResult
from flockd.chain.node.precompile import VRF_PRECOMPILE_ADDRESS
from flockd.round import proposals_digest, vote_digest

TOKEN = load(STAKE_TOKEN)
REGISTRY = load(TASK_REGISTRY)
E18 = 10**18
TOKEN_MAX_HOLDERS = 64
ONE = 2**64
PHASE_IDLE, PHASE_OPENING, PHASE_PROPOSE, PHASE_COMMIT, PHASE_REVEAL, PHASE_CLOSED = range(6)
STATUS_JOINING, STATUS_RUNNING, STATUS_FINISHED = 1, 2, 3


def params(**over: Any) -> dict[str, Any]:
    p: dict[str, Any] = dict(
        recipe="mnist-mlp",
        recipe_hash=keccak(b"recipe config"),
        model_init_hash=keccak(b"model 0"),
        rounds=3,
        min_participants=2,
        min_stake=100 * E18,
        stake_unit=100 * E18,
        expected_proposers=16,  # >= total units: everybody is elected (p = 1)
        max_proposals=16,
        propose_blocks=12,
        commit_blocks=12,
        reveal_blocks=12,
        reward_pool=3000 * E18,
        vote_mode=0,
        slash_bps=1000,
        proposer_share_bps=6000,
    )
    p.update(over)
    return p


PARAM_ORDER = list(params())


def as_tuple(p: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(p[k] for k in PARAM_ORDER)


@dataclass
class Account:
    key: PrivateKey
    vrf_sk: bytes

    @property
    def address(self) -> bytes:
        return self.key.public_key.to_canonical_address()

    @property
    def vrf_pk(self) -> bytes:
        return vrf.public_key(self.vrf_sk)


@dataclass
class Registry:
    """The token and registry deployed on a fresh scratch chain, accounts funded and approved."""

    n_accounts: int = 8
    vrf_salt: bytes = b""  # another salt, other VRF keys, other draws
    accounts: list[Account] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.accounts = [
            Account(PrivateKey(keccak(b"acct%d" % i)), keccak(b"vrf%d" % i + self.vrf_salt))
            for i in range(self.n_accounts)
        ]
        addrs = [a.address for a in self.accounts]
        self.chain = ScratchChain(funded=addrs)
        owner = self.accounts[0].key
        # the token mints to at most 64 holders: the first ones pass some on to the rest
        holders = addrs[:TOKEN_MAX_HOLDERS]
        self.token = self.chain.deploy(owner, TOKEN, "Stake", "STK", holders, [10**6 * E18] * len(holders))
        self.address = self.chain.deploy(owner, REGISTRY, self.token, VRF_PRECOMPILE_ADDRESS)
        for i, a in enumerate(self.accounts[TOKEN_MAX_HOLDERS:]):
            giver = self.accounts[i % TOKEN_MAX_HOLDERS].key
            self.chain.send(giver, self.token, TOKEN.encode_call("transfer", a.address, 10**4 * E18))
        assert all(r.ok for r in self.chain.mine())
        for n, a in enumerate(self.accounts, 1):
            self.chain.send(a.key, self.token, TOKEN.encode_call("approve", self.address, 2**256 - 1))
            if n % 256 == 0 or n == len(self.accounts):  # ~12M gas a block
                assert all(r.ok for r in self.chain.mine())

    # --- transactions -------------------------------------------------------------------

    def send(self, who: int, fn: str, *args: Any) -> None:
        self.chain.send(self.accounts[who].key, self.address, REGISTRY.encode_call(fn, *args))

    def tx(self, who: int, fn: str, *args: Any) -> TxResult:
        return self.chain.transact(
            self.accounts[who].key, self.address, REGISTRY.encode_call(fn, *args)
        ).check()

    def reverts(self, who: int, fn: str, *args: Any) -> str:
        """The revert reason of fn (mined in a block of its own: state moves on by a block)."""
        result = self.chain.transact(self.accounts[who].key, self.address, REGISTRY.encode_call(fn, *args))
        assert not result.ok, f"{fn} did not revert"
        with pytest.raises(TxFailed) as info:
            result.check()
        return info.value.reason

    def view(self, fn: str, *args: Any) -> Any:
        out = REGISTRY.decode_output(fn, self.chain.call(self.address, REGISTRY.encode_call(fn, *args)))
        return out[0] if len(out) == 1 else out

    def balance(self, who: int) -> int:
        data = TOKEN.encode_call("balanceOf", self.accounts[who].address)
        return TOKEN.decode_output("balanceOf", self.chain.call(self.token, data))[0]

    def events(self, result: TxResult) -> list[tuple[str, dict[str, Any]]]:
        out = []
        for addr, topics, data in result.logs():
            if addr == self.address and (decoded := REGISTRY.decode_log(topics, data)):
                out.append(decoded)
        return out

    # --- task helpers -------------------------------------------------------------------

    def addr(self, who: int) -> bytes:
        return self.accounts[who].address

    def hx(self, who: int) -> str:
        """The address as eth_abi decodes it."""
        return "0x" + self.addr(who).hex()

    def create(self, who: int = 0, **over: Any) -> int:
        result = self.tx(who, "create_task", as_tuple(params(**over)))
        return REGISTRY.decode_output("create_task", result.output)[0]

    def join(self, task: int, who: int, stake: int = 100 * E18) -> TxResult:
        return self.tx(who, "join", task, stake, self.accounts[who].vrf_pk)

    def started(self, joiners: list[int], **over: Any) -> int:
        task = self.create(**over)
        for n, who in enumerate(joiners, 1):
            self.send(who, "join", task, 100 * E18, self.accounts[who].vrf_pk)
            if n % 64 == 0 or n == len(joiners):  # ~14M gas a block
                assert all(r.ok for r in self.chain.mine())
        self.tx(0, "start_task", task)
        return task

    def advance_to(self, task: int, r: int, phase: int) -> None:
        """Mine empty blocks until a tx sent now lands in `phase` of round r."""
        propose_end, commit_end, reveal_end = self.view("deadlines", task, r)
        open_block = self.view("get_round", task, r)[0]
        first = {
            PHASE_PROPOSE: open_block + 1,
            PHASE_COMMIT: propose_end + 1,
            PHASE_REVEAL: commit_end + 1,
            PHASE_CLOSED: reveal_end + 1,
        }[phase]
        self.chain.mine_empty(max(0, first - (self.chain.block_number + 1)))
        assert self.view("phase", task) == phase, "already past that phase"

    def seed(self, task: int, r: int) -> bytes:
        """seed_0 from the hash of the start block, then the chain seed_r = H(seed_{r-1}, task, r)."""
        if r > 0:
            return sortition.round_seed(self.seed(task, r - 1), task, r)
        open_block = self.view("get_round", task, 0)[0]
        return sortition.round_seed(self.chain.block_hash(open_block), task, 0)

    def proof(self, who: int, task: int, r: int) -> bytes:
        return vrf.prove(self.accounts[who].vrf_sk, self.seed(task, r))

    def propose(self, task: int, r: int, who: int, delta: bytes | None = None) -> TxResult:
        delta_hash = keccak(delta or b"delta %d %d" % (r, who))
        return self.tx(who, "propose", task, r, delta_hash, self.proof(who, task, r))

    def decline(self, task: int, r: int, who: int) -> TxResult:
        return self.tx(who, "decline", task, r, self.proof(who, task, r))

    def draw(self, who: int, task: int, r: int) -> int:
        return sortition.draw(vrf.proof_to_hash(self.proof(who, task, r)))

    def digest(self, who: int, votes: list[int], salt: bytes) -> bytes:
        """The node's own digest (flockd.round.vote_digest): every reveal below proves it
        is the one the contract checks."""
        return vote_digest(tuple(votes), salt, self.addr(who))

    def judged(self, task: int, r: int) -> bytes:
        """The round's proposals digest, which a commit_vote must name."""
        return bytes(self.view("get_round", task, r)[9])

    def vote_round(self, task: int, r: int, ballots: dict[int, list[int]], reveal: set[int] | None = None) -> None:
        """Commit every ballot, then reveal those in `reveal` (all by default)."""
        self.advance_to(task, r, PHASE_COMMIT)
        for who, votes in ballots.items():
            self.send(who, "commit_vote", task, r, self.digest(who, votes, salt(who, r)), self.judged(task, r))
        assert all(x.ok for x in self.chain.mine())
        self.advance_to(task, r, PHASE_REVEAL)
        for who, votes in ballots.items():
            if reveal is None or who in reveal:
                self.send(who, "reveal_vote", task, r, votes, salt(who, r))
        assert all(x.ok for x in self.chain.mine())
        self.advance_to(task, r, PHASE_CLOSED)

    def stake(self, task: int, who: int) -> int:
        return self.view("get_participant", task, self.addr(who))[2]


def salt(who: int, r: int) -> bytes:
    return keccak(b"salt %d %d" % (who, r))


@pytest.fixture
def reg() -> Registry:
    return Registry()


# --- creation, joining, delegation, withdrawal ------------------------------------------------


def test_create_task_pulls_pool_and_validates(reg: Registry) -> None:
    before = reg.balance(0)
    result = reg.tx(0, "create_task", as_tuple(params()))
    assert reg.balance(0) == before - 3000 * E18
    (name, ev), = reg.events(result)
    assert name == "TaskCreated" and ev["task_id"] == 1 and ev["recipe"] == "mnist-mlp"
    assert reg.view("task_count") == 1
    got = reg.view("get_params", 1)
    assert got == as_tuple(params())
    state = reg.view("get_state", 1)
    assert state == (reg.hx(0), STATUS_JOINING, 0, 0, 3000 * E18)
    bad = {
        "rounds": dict(rounds=0),
        "rounds ": dict(rounds=1001),
        "min_participants": dict(min_participants=1),
        "min_participants ": dict(min_participants=1025),  # MAX_PARTICIPANTS
        "min_stake below stake_unit": dict(min_stake=1),
        "max_proposals": dict(max_proposals=17),
        "expected_proposers": dict(expected_proposers=0),
        "propose_blocks": dict(propose_blocks=257),
        "commit_blocks": dict(commit_blocks=0),
        "reveal_blocks": dict(reveal_blocks=0),
        "commit_blocks ": dict(commit_blocks=1025),
        "reveal_blocks ": dict(reveal_blocks=2**32),
        "reveal_blocks  ": dict(reveal_blocks=7),  # squeezable: below confirmations + margin
        "vote_mode": dict(vote_mode=2),
        "basis points": dict(slash_bps=2501),
        "basis points ": dict(proposer_share_bps=10001),
    }
    for reason, over in bad.items():
        assert reg.reverts(0, "create_task", as_tuple(params(**over))) == reason.strip()
    # the caps themselves are allowed
    reg.create(rounds=1000, commit_blocks=1024, reveal_blocks=8, slash_bps=2500)


def test_join_rules(reg: Registry) -> None:
    task = reg.create()
    before = reg.balance(1)
    (name, ev), = reg.events(reg.join(task, 1, 150 * E18))
    assert name == "Joined" and ev["participant"] == reg.hx(1)
    assert reg.balance(1) == before - 150 * E18
    assert reg.view("get_participant", task, reg.addr(1)) == (True, reg.accounts[1].vrf_pk, 150 * E18, 150 * E18)
    assert reg.view("get_participants", task) == (reg.hx(1),)
    assert reg.reverts(2, "join", task, 99 * E18, reg.accounts[2].vrf_pk) == "stake below minimum"
    assert reg.reverts(2, "join", task, 100 * E18, bytes(32)) == "empty vrf key"
    assert reg.reverts(1, "join", task, 100 * E18, reg.accounts[3].vrf_pk) == "already joined"
    assert reg.reverts(2, "join", task, 100 * E18, reg.accounts[1].vrf_pk) == "vrf key already registered"
    assert reg.reverts(2, "join", 99, 100 * E18, reg.accounts[2].vrf_pk) == "task not open for joining"
    reg.join(task, 2)
    reg.tx(0, "start_task", task)
    assert reg.reverts(3, "join", task, 100 * E18, reg.accounts[3].vrf_pk) == "task not open for joining"


def test_delegate_and_withdraw_before_start(reg: Registry) -> None:
    task = reg.create()
    reg.join(task, 1)
    (name, ev), = reg.events(reg.tx(2, "delegate", task, reg.addr(1), 50 * E18))
    assert name == "Delegated" and ev["amount"] == 50 * E18
    assert reg.view("get_state", task)[3] == 150 * E18
    assert reg.view("shares_of", task, reg.addr(1), reg.addr(2)) == 50 * E18
    assert reg.reverts(2, "delegate", task, reg.addr(3), E18) == "not a participant"
    assert reg.reverts(2, "delegate", task, reg.addr(1), 0) == "zero amount"
    assert reg.reverts(3, "withdraw", task, reg.addr(1)) == "nothing to withdraw"
    # the participant leaves: its whole pool stops counting, delegations stay redeemable
    before = reg.balance(1)
    (name, ev), = reg.events(reg.tx(1, "withdraw", task, reg.addr(1)))
    assert name == "Withdrawn" and ev["amount"] == 100 * E18
    assert reg.balance(1) == before + 100 * E18
    assert reg.view("get_participants", task) == ()
    assert reg.view("get_state", task)[3] == 0
    assert reg.reverts(2, "delegate", task, reg.addr(1), E18) == "not a participant"
    before = reg.balance(2)
    reg.tx(2, "withdraw", task, reg.addr(1))
    assert reg.balance(2) == before + 50 * E18
    # the freed VRF key can be registered again
    reg.join(task, 1)


def test_start_and_cancel(reg: Registry) -> None:
    task = reg.create()
    reg.join(task, 1)
    assert reg.reverts(1, "start_task", task) == "only the creator"
    assert reg.reverts(0, "start_task", task) == "not enough participants"
    reg.join(task, 2)
    result = reg.tx(0, "start_task", task)
    names = [n for n, _ in reg.events(result)]
    assert names == ["TaskStarted", "RoundOpened"]
    assert reg.events(result)[1][1]["open_block"] == reg.chain.block_number
    assert reg.view("phase", task) == PHASE_PROPOSE  # views run as if in the next block
    assert reg.reverts(0, "start_task", task) == "task not open for joining"
    # cancel: only before the start, refunds the pool, stakes stay withdrawable
    other = reg.create()
    reg.join(other, 3)
    assert reg.reverts(3, "cancel_task", other) == "only the creator"
    before = reg.balance(0)
    (name, ev), = reg.events(reg.tx(0, "cancel_task", other))
    assert (name, ev["refund"]) == ("TaskFinished", 3000 * E18)
    assert reg.balance(0) == before + 3000 * E18
    assert reg.reverts(0, "cancel_task", task) == "task not open for joining"
    reg.tx(3, "withdraw", other, reg.addr(3))


def test_phases_follow_block_windows(reg: Registry) -> None:
    task = reg.started([1, 2], propose_blocks=4, commit_blocks=4, reveal_blocks=8)
    open_block = reg.chain.block_number
    assert reg.view("deadlines", task, 0) == (open_block + 4, open_block + 8, open_block + 16)
    seen = []
    for _ in range(17):
        seen.append(reg.view("phase", task))
        reg.chain.mine_empty(1)
    assert seen == [2] * 4 + [3] * 4 + [4] * 8 + [5]


def test_withdraw_reverts_while_running(reg: Registry) -> None:
    task = reg.create()
    reg.join(task, 1)
    reg.tx(3, "delegate", task, reg.addr(1), E18)
    reg.join(task, 2)
    reg.tx(0, "start_task", task)
    assert reg.reverts(1, "withdraw", task, reg.addr(1)) == "task running"
    assert reg.reverts(3, "withdraw", task, reg.addr(1)) == "task running"
    assert reg.reverts(0, "withdraw", 77, reg.addr(1)) == "no such task"


# --- proposals ----------------------------------------------------------------------------------


def test_propose_records_and_fixes_seed(reg: Registry) -> None:
    task = reg.started([1, 2, 3])
    seed = reg.seed(task, 0)
    assert reg.view("round_seed", task, 0) == seed
    result = reg.propose(task, 0, 1)
    (n1, seeded), (n2, proposed) = reg.events(result)
    assert (n1, seeded["seed"]) == ("SeedFixed", seed)
    assert n2 == "Proposed" and proposed["index"] == 0
    assert REGISTRY.decode_output("propose", result.output) == (0,)
    assert reg.view("get_round", task, 0)[1] == seed
    assert reg.view("get_proposals", task, 0) == ((reg.hx(1), keccak(b"delta 0 1")),)
    assert reg.view("proposal_slot", task, 0, reg.addr(1)) == 1
    assert reg.view("proposal_slot", task, 0, reg.addr(2)) == 0
    # the second proposal does not fix the seed again
    assert [n for n, _ in reg.events(reg.propose(task, 0, 2))] == ["Proposed"]


def test_propose_reverts(reg: Registry) -> None:
    task = reg.started([1, 2, 3, 4], max_proposals=2, propose_blocks=40)
    other = reg.started([1, 2])
    r0 = reg.proof(1, task, 0)
    delta = keccak(b"d")
    forged = bytearray(r0)
    forged[40] ^= 1
    assert reg.reverts(1, "propose", task, 0, delta, bytes(forged)) == "vrf proof rejected"
    assert reg.reverts(1, "propose", task, 0, delta, bytes(80)) == "vrf proof rejected"
    assert reg.reverts(1, "propose", task, 0, delta, r0[:79]) == "vrf proof length"
    # someone else's valid proof is not valid under my key
    assert reg.reverts(2, "propose", task, 0, delta, r0) == "vrf proof rejected"
    # a proof for the same round number of another task: different seed
    assert reg.reverts(1, "propose", task, 0, delta, reg.proof(1, other, 0)) == "vrf proof rejected"
    assert reg.reverts(5, "propose", task, 0, delta, r0) == "not a participant"
    assert reg.reverts(1, "propose", task, 1, delta, r0) == "wrong round"
    assert reg.reverts(1, "propose", task, 0, bytes(32), r0) == "empty delta hash"
    assert reg.reverts(1, "propose", 99, 0, delta, r0) == "task not running"
    reg.tx(1, "propose", task, 0, delta, r0)
    assert reg.reverts(1, "propose", task, 0, delta, r0) == "already proposed"
    reg.propose(task, 0, 2)
    # the cap closed the propose window at the block that reached it
    assert reg.reverts(3, "propose", task, 0, delta, reg.proof(3, task, 0)) == "wrong phase"
    reg.advance_to(task, 0, PHASE_COMMIT)
    assert reg.reverts(4, "propose", task, 0, delta, reg.proof(4, task, 0)) == "wrong phase"
    # replay of round 0's proof in round 1
    reg.vote_round(task, 0, {3: [1, 1], 4: [1, 1]})
    reg.tx(0, "finalise", task, 0)
    assert reg.reverts(1, "propose", task, 1, delta, r0) == "vrf proof rejected"
    reg.tx(1, "propose", task, 1, delta, reg.proof(1, task, 1))


def test_propose_not_elected() -> None:
    reg = Registry()
    # 1 of 10,001 units with one expected proposer: P0 = (1 - 1/10001) ** 1, elected w.p. 1e-4
    task = reg.create(stake_unit=E18, min_stake=E18, expected_proposers=1)
    reg.join(task, 1, E18)
    reg.join(task, 2, 10_000 * E18)
    reg.tx(0, "start_task", task)
    threshold = reg.view("sortition_threshold", task, reg.addr(1))
    stakes = sortition.Stakes(E18, 10_001 * E18, E18, 1)
    assert threshold == stakes.threshold
    beta = vrf.proof_to_hash(reg.proof(1, task, 0))
    assert sortition.draw(beta) < threshold
    assert reg.reverts(1, "propose", task, 0, keccak(b"d"), reg.proof(1, task, 0)) == "not elected"


# --- votes --------------------------------------------------------------------------------------


def test_commit_and_reveal_reverts(reg: Registry) -> None:
    task = reg.started([1, 2, 3, 4])
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    votes, s3 = [1, -1], salt(3, 0)
    d3 = reg.digest(3, votes, s3)
    assert reg.reverts(3, "commit_vote", task, 0, d3, reg.judged(task, 0)) == "wrong phase"
    reg.advance_to(task, 0, PHASE_COMMIT)
    assert reg.reverts(5, "commit_vote", task, 0, d3, reg.judged(task, 0)) == "not a participant"
    assert reg.reverts(3, "commit_vote", task, 0, bytes(32), reg.judged(task, 0)) == "empty digest"
    assert reg.reverts(3, "commit_vote", task, 1, d3, reg.judged(task, 1)) == "wrong round"
    # the ballot names what it judged: the node's own digest of the proposals in slot order
    hashes = [h for _, h in reg.view("get_proposals", task, 0)]
    assert reg.judged(task, 0) == proposals_digest(hashes) != proposals_digest(hashes[::-1])
    assert reg.reverts(3, "commit_vote", task, 0, d3, proposals_digest(hashes[::-1])) == "proposals differ"
    assert reg.reverts(3, "commit_vote", task, 0, d3, proposals_digest(hashes[:1])) == "proposals differ"
    (name, ev), = reg.events(reg.tx(3, "commit_vote", task, 0, d3, reg.judged(task, 0)))
    assert (name, ev["digest"]) == ("VoteCommitted", d3)
    assert reg.reverts(3, "commit_vote", task, 0, d3, reg.judged(task, 0)) == "already committed"
    # voter 4 commits a malformed ballot, to show reveal rejects it despite a matching digest
    reg.tx(4, "commit_vote", task, 0, reg.digest(4, [1, 2], s3), reg.judged(task, 0))
    assert reg.view("phase", task) == PHASE_COMMIT  # the proposers vote too: not all in yet
    reg.tx(1, "commit_vote", task, 0, reg.digest(1, votes, salt(1, 0)), reg.judged(task, 0))
    reg.tx(2, "commit_vote", task, 0, reg.digest(2, votes, salt(2, 0)), reg.judged(task, 0))
    # every participant is in: the commit window closed at that block, the reveal one is open
    assert reg.view("phase", task) == PHASE_REVEAL
    assert reg.reverts(3, "commit_vote", task, 0, d3, reg.judged(task, 0)) == "wrong phase"
    assert reg.reverts(3, "reveal_vote", task, 0, votes, salt(9, 9)) == "reveal does not match commitment"
    assert reg.reverts(3, "reveal_vote", task, 0, [1, 1], s3) == "reveal does not match commitment"
    # a copied commitment does not open for the copier: the digest binds the sender
    assert reg.reverts(2, "reveal_vote", task, 0, votes, s3) == "reveal does not match commitment"
    assert reg.reverts(5, "reveal_vote", task, 0, votes, s3) == "no commitment"
    assert reg.reverts(4, "reveal_vote", task, 0, [1, 2], s3) == "vote must be -1, 0 or +1"
    (name, ev), = reg.events(reg.tx(3, "reveal_vote", task, 0, votes, s3))
    assert (name, ev["votes"], ev["salt"]) == ("VoteRevealed", (1, -1), s3)
    assert reg.view("get_ballot", task, 0, reg.addr(3)) == (d3, True, 0b01, 0b10)
    assert reg.reverts(3, "reveal_vote", task, 0, votes, s3) == "already revealed"
    assert reg.reverts(0, "finalise", task, 0) == "wrong phase"


def test_a_minority_never_holds_the_majority_of_a_round(reg: Registry) -> None:
    """Three honest participants of five, two of them this round's proposers: the
    cartel (4, 5) holds two of the three non-proposers' votes, but every participant
    votes, so its two of five cannot reject the honest proposals nor pass its own."""
    task = reg.started([1, 2, 3, 4, 5])
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    reg.propose(task, 0, 4)  # the cartel's poison
    honest, cartel = [1, 1, -1], [-1, -1, 1]
    reg.vote_round(task, 0, {1: honest, 2: honest, 3: honest, 4: cartel, 5: cartel})
    events = dict(reg.events(reg.tx(0, "finalise", task, 0)))
    assert events["RoundFinalised"]["accepted_mask"] == 0b011
    # proposers' ballots are settled as anyone's: paid by agreement, never slashed for it
    assert reg.view("get_ballot", task, 0, reg.addr(1))[1:] == (True, 0b011, 0b100)


def test_a_proposers_own_vote_is_one_vote_of_its_stake(reg: Registry) -> None:
    """A proposer voting +1 on its own proposal adds its stake once, like any voter's:
    two cartel proposers of five (40%) backing themselves stay below half."""
    task = reg.started([1, 2, 3, 4, 5])
    reg.propose(task, 0, 4)
    reg.propose(task, 0, 5)
    cartel, honest = [1, 1], [-1, -1]
    reg.vote_round(task, 0, {1: honest, 2: honest, 3: honest, 4: cartel, 5: cartel})
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0
    assert reg.view("get_round", task, 0)[3] == 500 * E18  # revealed_stake: all five, once each
    slashed = {ev["participant"] for name, ev in events if name == "Slashed"}
    assert slashed == {reg.hx(4), reg.hx(5)}  # rejected proposals; no voter slashed


def test_a_proposer_that_commits_and_does_not_reveal_is_slashed_and_others_are_paid(reg: Registry) -> None:
    """The new voters are settled by the old rules: a proposer's unopened commitment is
    slashed (reason 3); a proposer whose ballot agreed with the
    verdict is paid as a voter too."""
    task = reg.started([1, 2, 3, 4, 5])
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    ballots = {1: [1, 1], 2: [1, 1], 3: [1, 1], 4: [1, 1], 5: [1, 1]}
    reg.vote_round(task, 0, ballots, reveal={1, 3, 4, 5})  # proposer 2 never opens its vote
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0b11  # 4 of 5 revealed, all +1
    slashed = {ev["participant"]: ev["reason"] for n, ev in events if n == "Slashed"}
    assert slashed == {reg.hx(2): 3}
    voters_paid = {ev["participant"] for n, ev in events if n == "Rewarded" and ev["kind"] == 2}
    assert reg.hx(1) in voters_paid and reg.hx(2) not in voters_paid


def test_vote_count_must_match_proposals(reg: Registry) -> None:
    task = reg.started([1, 2, 3])
    reg.propose(task, 0, 1)
    reg.advance_to(task, 0, PHASE_COMMIT)
    reg.tx(2, "commit_vote", task, 0, reg.digest(2, [1, 1], salt(2, 0)), reg.judged(task, 0))
    reg.advance_to(task, 0, PHASE_REVEAL)
    assert reg.reverts(2, "reveal_vote", task, 0, [1, 1], salt(2, 0)) == "one vote per proposal"


# --- whole rounds ----------------------------------------------------------------------------


def test_full_task_per_proposal_mode(reg: Registry) -> None:
    task = reg.create()
    for who in (1, 2, 3, 4, 5):
        reg.join(task, who)
    reg.tx(6, "delegate", task, reg.addr(1), 100 * E18)  # 6 backs proposer 1
    reg.tx(0, "start_task", task)
    assert reg.view("get_state", task)[3] == 600 * E18
    # round 0: 1 and 2 propose; 3 and 4 accept 1, reject 2; 5 accepts both (agrees on 1 of 2)
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    reg.vote_round(task, 0, {3: [1, -1], 4: [1, -1], 5: [1, 1]})
    result = reg.tx(7, "finalise", task, 0)  # anyone may finalise
    events = reg.events(result)
    budget = 3000 * E18 // 3
    prop_budget, voter_budget = budget * 6 // 10, budget * 4 // 10
    rewarded = {ev["participant"]: ev["amount"] for n, ev in events if n == "Rewarded"}
    slashed = {ev["participant"]: (ev["amount"], ev["reason"]) for n, ev in events if n == "Slashed"}
    h = {i: reg.hx(i) for i in range(8)}
    # voters are paid by stake x agreeing votes (2, 2, 1) and never slashed for disagreeing
    assert rewarded == {h[1]: prop_budget, h[3]: voter_budget * 2 // 5, h[4]: voter_budget * 2 // 5,
                        h[5]: voter_budget // 5}
    assert slashed == {h[2]: (10 * E18, 1)}  # 10%
    finalised = dict(events)["RoundFinalised"]
    assert (finalised["accepted_mask"], finalised["n_proposals"]) == (0b01, 2)
    assert finalised["revealed_stake"] == 300 * E18
    opened = {"task_id": task, "round": 1, "open_block": reg.chain.block_number, "seed": reg.seed(task, 1)}
    assert ("RoundOpened", opened) in events
    assert reg.stake(task, 1) == 200 * E18 + prop_budget
    assert reg.stake(task, 2) == 90 * E18
    state = reg.view("get_state", task)
    assert state[2] == 1  # current round
    assert state[4] == 3000 * E18 - prop_budget - voter_budget + 10 * E18
    assert state[3] == 600 * E18 + prop_budget + voter_budget - 10 * E18
    # the delegator owns half of pool 1, rewards included
    assert reg.view("value_of", task, reg.addr(1), reg.addr(6)) == (200 * E18 + prop_budget) // 2
    rnd = reg.view("get_round", task, 0)
    assert rnd[6:8] == (True, 0b01) and rnd[8] == bytes(32)
    # model of round 0: recorded once more than half the total stake attests the same hash
    model = keccak(b"model 1")
    assert reg.reverts(7, "record_model", task, 0, model) == "not a participant"
    assert reg.reverts(3, "record_model", task, 1, model) == "round not finalised"
    (name, ev), = reg.events(reg.tx(3, "record_model", task, 0, keccak(b"wrong")))
    assert name == "ModelVoted"
    (_, ev), = reg.events(reg.tx(4, "record_model", task, 0, model))
    assert ev["support"] == reg.stake(task, 4)  # 3 backed another hash: still no majority
    assert reg.reverts(4, "record_model", task, 0, model) == "already attested"
    events = reg.events(reg.tx(1, "record_model", task, 0, model))  # pool 1 (with 6) tips it
    assert events[-1] == ("ModelRecorded", {"task_id": task, "round": 0, "model_hash": model})
    assert reg.reverts(5, "record_model", task, 0, model) == "model already recorded"
    assert reg.view("get_round", task, 0)[8] == model
    # round 1: no proposals; the model stays, nobody is judged
    reg.vote_round(task, 1, {3: [], 4: []})
    events = reg.events(reg.tx(0, "finalise", task, 1))
    assert [n for n, _ in events] == ["RoundFinalised", "ModelRecorded", "RoundOpened"]
    assert events[1][1]["model_hash"] == model
    # round 2 (last): 3 proposes and is accepted; 4 commits but never reveals (slashed)
    reg.propose(task, 2, 3)
    reg.vote_round(task, 2, {1: [1], 5: [1], 4: [1]}, reveal={1, 5})
    owner_before = reg.balance(0)
    events = reg.events(reg.tx(0, "finalise", task, 2))
    slashed = {ev["participant"]: ev["reason"] for n, ev in events if n == "Slashed"}
    assert slashed == {h[4]: 3}
    finished = dict(events)["TaskFinished"]
    assert finished["rounds_completed"] == 3
    assert reg.balance(0) == owner_before + finished["refund"]
    state = reg.view("get_state", task)
    assert state[1] == STATUS_FINISHED and state[4] == 0
    assert reg.view("phase", task) == PHASE_IDLE
    # after the end: withdraw everything; the registry ends up holding only rounding dust
    for who, pool in ((1, 1), (6, 1), (2, 2), (3, 3), (4, 4), (5, 5)):
        reg.tx(who, "withdraw", task, reg.addr(pool))
    data = TOKEN.encode_call("balanceOf", reg.address)
    assert TOKEN.decode_output("balanceOf", reg.chain.call(reg.token, data))[0] < 100


def test_no_reveal_means_no_verdict(reg: Registry) -> None:
    task = reg.started([1, 2, 3])
    reg.propose(task, 0, 1)
    reg.advance_to(task, 0, PHASE_CLOSED)
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert [n for n, _ in events] == ["RoundFinalised", "ModelRecorded", "RoundOpened"]
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0
    assert reg.stake(task, 1) == 100 * E18  # an unvoted proposal is not the proposer's fault
    assert reg.reverts(0, "finalise", task, 0) == "wrong round"


def test_whole_round_mode(reg: Registry) -> None:
    task = reg.started([1, 2, 3, 4, 5], vote_mode=1)
    h = {i: reg.hx(i) for i in range(8)}
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    reg.advance_to(task, 0, PHASE_COMMIT)
    reg.tx(3, "commit_vote", task, 0, reg.digest(3, [1, 1], salt(3, 0)), reg.judged(task, 0))
    reg.advance_to(task, 0, PHASE_REVEAL)
    assert reg.reverts(3, "reveal_vote", task, 0, [1, 1], salt(3, 0)) == "one vote for the round"
    # a fresh task for the well-formed round: +1, +1, -1 by equal stakes: both accepted
    task = reg.started([1, 2, 3, 4, 5], vote_mode=1)
    reg.propose(task, 0, 1)
    reg.propose(task, 0, 2)
    reg.vote_round(task, 0, {3: [1], 4: [1], 5: [-1]})
    rnd = reg.view("get_round", task, 0)
    assert (rnd[4][0], rnd[5][0]) == (200 * E18, 100 * E18)
    assert reg.view("get_ballot", task, 0, reg.addr(5))[1:] == (True, 0, 1)
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0b11
    assert [ev for n, ev in events if n == "Slashed"] == []  # 5 lost the vote: unpaid, not slashed
    rewarded = {ev["participant"] for n, ev in events if n == "Rewarded"}
    assert rewarded == {h[1], h[2], h[3], h[4]}
    # round 1: the majority rejects: every proposal rejected, its proposer slashed
    reg.propose(task, 1, 3)
    reg.vote_round(task, 1, {1: [-1], 2: [-1], 4: [1]})
    events = reg.events(reg.tx(0, "finalise", task, 1))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0
    slashed = {ev["participant"]: ev["reason"] for n, ev in events if n == "Slashed"}
    assert slashed == {h[3]: 1}
    # a score, a 0 or anything but a sign is refused
    reg.propose(task, 2, 1)
    reg.advance_to(task, 2, PHASE_COMMIT)
    for who, vote in ((2, E18), (3, 0), (4, 2)):
        reg.tx(who, "commit_vote", task, 2, reg.digest(who, [vote], salt(who, 2)), reg.judged(task, 2))
    reg.advance_to(task, 2, PHASE_REVEAL)
    assert reg.reverts(2, "reveal_vote", task, 2, [E18], salt(2, 2)) == "vote must be -1, 0 or +1"
    assert reg.reverts(3, "reveal_vote", task, 2, [0], salt(3, 2)) == "vote must be +1 or -1"
    assert reg.reverts(4, "reveal_vote", task, 2, [2], salt(4, 2)) == "vote must be -1, 0 or +1"


def test_whole_round_cartel_cannot_outvote_by_magnitude() -> None:
    """Honest voters measure small gains; a cartel of 1 in 6 votes the extreme. Each vote
    counts by its sign and its stake only, so the cartel cannot flip the round."""
    reg = Registry(n_accounts=8)
    task = reg.started([1, 2, 3, 4, 5, 6, 7], vote_mode=1)
    reg.propose(task, 0, 1)
    ballots = {2: [1], 3: [1], 4: [1], 5: [1], 6: [1], 7: [-E18]}
    reg.advance_to(task, 0, PHASE_COMMIT)
    for who, votes in ballots.items():
        reg.tx(who, "commit_vote", task, 0, reg.digest(who, votes, salt(who, 0)), reg.judged(task, 0))
    reg.advance_to(task, 0, PHASE_REVEAL)
    for who, votes in ballots.items():
        result = reg.chain.transact(reg.accounts[who].key, reg.address, REGISTRY.encode_call("reveal_vote", task, 0, votes, salt(who, 0)))
        assert result.ok == (who != 7), "only a sign is a vote: the cartel's -10**18 is refused"
    reg.advance_to(task, 0, PHASE_CLOSED)
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 1


def test_not_received_counts_for_neither_side_and_is_never_slashed(reg: Registry) -> None:
    task = reg.started([1, 2, 3, 4, 5, 6])
    h = {i: reg.hx(i) for i in range(8)}
    for who in (1, 2, 3):
        reg.propose(task, 0, who)
    # proposal 0: only 4 received it (+1), the others say 0: a third of the revealed
    # stake is no majority (a proposer withholding its delta from the honest voters cannot
    # pass it on one friend's vote); with no -1 its proposer is not slashed.
    # proposal 1: 4 rejects, 5 accepts, 6 did not receive it: rejected, its proposer slashed.
    # proposal 2 (withheld from everyone): all 0s, no verdict, its proposer not slashed.
    reg.vote_round(task, 0, {4: [1, -1, 0], 5: [0, 1, 0], 6: [0, 0, 0]})
    ballot = reg.view("get_ballot", task, 0, reg.addr(4))
    assert ballot[2:] == (0b001, 0b010)
    rnd = reg.view("get_round", task, 0)
    assert rnd[4][:3] == (100 * E18, 100 * E18, 0) and rnd[5][:3] == (0, 100 * E18, 0)
    events = reg.events(reg.tx(0, "finalise", task, 0))
    assert dict(events)["RoundFinalised"]["accepted_mask"] == 0
    slashed = {ev["participant"]: ev["reason"] for n, ev in events if n == "Slashed"}
    assert slashed == {h[2]: 1}  # the rejected proposer only; 5 lost on proposal 1: unpaid
    assert reg.stake(task, 6) == 100 * E18 and reg.stake(task, 3) == 100 * E18
    assert reg.stake(task, 1) == 100 * E18  # withheld from most: no verdict, no slash
    rewarded = {ev["participant"]: ev["amount"] for n, ev in events if n == "Rewarded" and ev["kind"] == 2}
    assert list(rewarded) == [h[4]]  # the only voter agreeing with a verdict (on one)


# --- sortition: contract == flockd.sortition ------------------------------------------------


def test_sortition_threshold_matches_python() -> None:
    reg = Registry(n_accounts=10)
    stakes = {1: 100, 2: 250, 3: 1, 4: 999, 5: 3000, 6: 17}
    for expected, unit in ((1, E18), (3, 10 * E18), (16, E18)):
        task = reg.create(expected_proposers=expected, stake_unit=unit, min_stake=unit)
        for who, stake in stakes.items():
            reg.tx(who, "join", task, max(stake * E18, unit), reg.accounts[who].vrf_pk)
        reg.tx(0, "start_task", task)
        total = reg.view("get_state", task)[3]
        for who in stakes:
            python = sortition.Stakes(reg.stake(task, who), total, unit, expected).threshold
            assert reg.view("sortition_threshold", task, reg.addr(who)) == python


def test_contract_elects_exactly_whom_python_elects() -> None:
    reg = Registry(n_accounts=10)
    joiners = list(range(1, 10))
    task = reg.started(joiners, expected_proposers=3, stake_unit=E18, min_stake=E18)
    seed = reg.view("round_seed", task, 0)
    assert seed == reg.seed(task, 0)
    total = reg.view("get_state", task)[3]
    elected = []
    for who in joiners:
        stakes = sortition.Stakes(reg.stake(task, who), total, E18, 3)
        election = sortition.elect(reg.accounts[who].vrf_sk, seed, stakes)
        data = REGISTRY.encode_call("propose", task, 0, keccak(b"%d" % who), election.proof)
        reg.chain.send(reg.accounts[who].key, reg.address, data)
        elected.append(election.role is sortition.Role.PROPOSER)
    results = reg.chain.mine()
    assert [r.ok for r in results] == elected
    assert 0 < sum(elected) < len(joiners)  # this deterministic chain draws a mix


def test_seed_survives_blockhash_expiry_only_once_fixed(reg: Registry) -> None:
    fixed = reg.started([1, 2, 3], propose_blocks=1)
    seed = reg.seed(fixed, 0)
    reg.propose(fixed, 0, 1)
    unfixed = reg.started([1, 2, 3], propose_blocks=1)
    assert reg.view("round_seed", unfixed, 0) == reg.seed(unfixed, 0)
    reg.chain.mine_empty(257)
    assert reg.view("round_seed", fixed, 0) == seed
    assert reg.view("round_seed", unfixed, 0) == bytes(32)
    assert reg.view("round_seed", 99, 0) == bytes(32)


def test_seeds_after_round_0_are_a_chain_no_block_or_timing_enters() -> None:
    """Whoever seals the block that finalises a round, or chooses when to finalise it,
    cannot pick the next round's seed: two runs finalising round 0 at different blocks
    (different block hashes, different callers) open round 1 on the same seed."""
    seeds = []
    for wait, finaliser in ((0, 0), (5, 7)):
        reg = Registry()
        task = reg.started([1, 2, 3])
        seed_0 = reg.seed(task, 0)
        reg.propose(task, 0, 1)
        reg.advance_to(task, 0, PHASE_CLOSED)
        reg.chain.mine_empty(wait)
        result = reg.tx(finaliser, "finalise", task, 0)
        (opened,) = [ev for n, ev in reg.events(result) if n == "RoundOpened"]
        assert opened["seed"] == sortition.round_seed(seed_0, task, 1) == reg.view("round_seed", task, 1)
        seeds.append((seed_0, opened["seed"], reg.chain.block_hash(opened["open_block"])))
    assert seeds[0][0] == seeds[1][0] and seeds[0][1] == seeds[1][1]
    assert seeds[0][2] != seeds[1][2]  # the open blocks differ; the seeds do not
    # round 1 proposals verify against the chained seed
    reg.propose(task, 1, 2)


def test_round_0_seed_is_fixed_by_a_decline_or_by_finalise() -> None:
    reg = Registry()
    task = reg.started([1, 2, 3])
    events = reg.events(reg.decline(task, 0, 2))
    assert ("SeedFixed", {"task_id": task, "round": 0, "seed": reg.seed(task, 0)}) in events
    # nobody acts in round 0 while blockhash(B_0) is readable: a constant fixed by task id only
    silent = reg.started([1, 2, 3], propose_blocks=1)
    reg.chain.mine_empty(300)
    reg.advance_to(silent, 0, PHASE_CLOSED)
    events = reg.events(reg.tx(0, "finalise", silent, 0))
    fallback = sortition.round_seed(bytes(32), silent, 0)
    assert ("SeedFixed", {"task_id": silent, "round": 0, "seed": fallback}) in events
    assert reg.view("round_seed", silent, 1) == sortition.round_seed(fallback, silent, 1)
