# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title flockd task registry
@notice One contract for every federated-learning task, identified by a uint256
        task_id (1, 2, ...). Holds stake, delegation, the round state machine
        (seed, VRF-checked proposals, commit-reveal votes, stake-weighted tally),
        rewards and slashing. Spec: protocol/spec/contracts.md.
"""
from ethereum.ercs import IERC20

# Bounds that keep every loop and array finite.
MAX_PARTICIPANTS: constant(uint256) = 1024
# finalise settles at most this many voters a call, so its gas stays under the per-tx cap
# whatever the task's size: a bigger task takes one more finalise per SETTLE_BATCH voters
SETTLE_BATCH: constant(uint256) = 256
MAX_PROPOSALS: constant(uint256) = 16
# blockhash() reaches back 256 blocks: the whole propose window must see B_r.
MAX_PROPOSE_BLOCKS: constant(uint256) = 256
# Parameter caps: a task ties its joiners' stake up until it ends, so a creator may not
# make it endless (rounds, windows), confiscatory (slash_bps) or unrevealable (reveal_blocks).
MAX_ROUNDS: constant(uint256) = 1000
MAX_PHASE_BLOCKS: constant(uint256) = 1024
# A reveal is sent once the commit window is over by the voter's confirmed clock, i.e. up
# to `confirmations` blocks late, and must still land after tips are re-bumped: the window
# has to be well above confirmations (2 by default) plus a few blocks of margin.
MIN_REVEAL_BLOCKS: constant(uint256) = 8
MAX_SLASH_BPS: constant(uint256) = 2500
MAX_RECIPE_LEN: constant(uint256) = 64

ONE: constant(uint256) = 2**64  # sortition fixed point
BPS: constant(uint256) = 10000
VRF_PROOF_LEN: constant(uint256) = 80
VRF_BETA_LEN: constant(uint256) = 64

MODE_PER_PROPOSAL: constant(uint8) = 0
MODE_WHOLE_ROUND: constant(uint8) = 1

STATUS_NONE: constant(uint8) = 0
STATUS_JOINING: constant(uint8) = 1
STATUS_RUNNING: constant(uint8) = 2
STATUS_FINISHED: constant(uint8) = 3

PHASE_IDLE: constant(uint8) = 0  # task not running
PHASE_OPENING: constant(uint8) = 1  # the block B_r itself: seed not yet readable
PHASE_PROPOSE: constant(uint8) = 2
PHASE_COMMIT: constant(uint8) = 3
PHASE_REVEAL: constant(uint8) = 4
PHASE_CLOSED: constant(uint8) = 5  # finalise may be called

SLASH_REJECTED_PROPOSAL: constant(uint8) = 1
# reason 2 (a losing vote) is no longer used: only an unopened commitment is slashed
SLASH_UNREVEALED_VOTE: constant(uint8) = 3
REWARD_PROPOSER: constant(uint8) = 1
REWARD_VOTER: constant(uint8) = 2


struct TaskParams:
    recipe: String[MAX_RECIPE_LEN]
    recipe_hash: bytes32
    model_init_hash: bytes32
    rounds: uint256
    min_participants: uint256
    min_stake: uint256
    stake_unit: uint256
    expected_proposers: uint256
    max_proposals: uint256
    propose_blocks: uint256
    commit_blocks: uint256
    reveal_blocks: uint256
    reward_pool: uint256
    vote_mode: uint8
    slash_bps: uint256
    proposer_share_bps: uint256

struct TaskState:
    creator: address
    status: uint8
    current_round: uint256
    total_stake: uint256  # sum of the stake of active participants' pools
    pool: uint256  # undistributed rewards (reward_pool + slashes - payouts)

# A participant's stake pool: own stake + delegations, shared pro rata by shares.
struct Participant:
    active: bool
    vrf_pk: bytes32
    stake: uint256
    total_shares: uint256

struct Round:
    open_block: uint256
    seed: bytes32
    n_proposals: uint256
    revealed_stake: uint256
    accept_stake: uint256[MAX_PROPOSALS]  # whole-round mode: index 0 for the whole round
    reject_stake: uint256[MAX_PROPOSALS]
    finalised: bool
    accepted_mask: uint256
    model_hash: bytes32
    # keccak chain over the proposals' delta hashes in slot order: what a ballot judges
    proposals_digest: bytes32

# Where round r's windows end (last block of each, inclusive) and how many of the
# expected messages are in: a window ends early at the block its last one lands in.
struct Windows:
    propose_end: uint256
    commit_end: uint256
    reveal_end: uint256
    n_declined: uint256
    n_committed: uint256
    n_revealed: uint256
    # the decliner with the highest verified draw, and whether its fallback window opened
    fallback: address
    fallback_draw: uint256
    fallback_open: bool

struct Proposal:
    proposer: address
    delta_hash: bytes32

# Bit i of accept_mask / reject_mask: the voter voted +1 / -1 on proposal i (whole-round
# mode: bit 0, the round); neither bit: 0, "not received".
struct Ballot:
    digest: bytes32
    revealed: bool
    accept_mask: uint256
    reject_mask: uint256


event TaskCreated:
    task_id: indexed(uint256)
    creator: indexed(address)
    recipe: String[MAX_RECIPE_LEN]
    recipe_hash: bytes32
    model_init_hash: bytes32
    rounds: uint256
    reward_pool: uint256
    vote_mode: uint8

event Joined:
    task_id: indexed(uint256)
    participant: indexed(address)
    stake: uint256
    vrf_pk: bytes32

event Delegated:
    task_id: indexed(uint256)
    delegator: indexed(address)
    participant: indexed(address)
    amount: uint256

event Withdrawn:
    task_id: indexed(uint256)
    holder: indexed(address)
    participant: indexed(address)
    amount: uint256

event RoundOpened:
    task_id: indexed(uint256)
    round: indexed(uint256)
    open_block: uint256
    seed: bytes32  # round >= 1; zero for round 0, whose seed needs blockhash(open_block)

event SeedFixed:
    task_id: indexed(uint256)
    round: indexed(uint256)
    seed: bytes32

event Proposed:
    task_id: indexed(uint256)
    round: indexed(uint256)
    proposer: indexed(address)
    index: uint256
    delta_hash: bytes32

event Declined:
    task_id: indexed(uint256)
    round: indexed(uint256)
    participant: indexed(address)

event FallbackOpened:
    task_id: indexed(uint256)
    round: indexed(uint256)
    proposer: indexed(address)
    last_block: uint256  # the new propose_end; commit and reveal follow at full length

event PhaseClosed:
    task_id: indexed(uint256)
    round: indexed(uint256)
    phase: uint8
    last_block: uint256

event VoteCommitted:
    task_id: indexed(uint256)
    round: indexed(uint256)
    voter: indexed(address)
    digest: bytes32

event VoteRevealed:
    task_id: indexed(uint256)
    round: indexed(uint256)
    voter: indexed(address)
    votes: DynArray[int256, MAX_PROPOSALS]
    salt: bytes32

event VotersSettled:
    task_id: indexed(uint256)
    round: indexed(uint256)
    settled: uint256
    n_participants: uint256

event RoundFinalised:
    task_id: indexed(uint256)
    round: indexed(uint256)
    accepted_mask: uint256
    n_proposals: uint256
    revealed_stake: uint256

event ModelVoted:
    task_id: indexed(uint256)
    round: indexed(uint256)
    participant: indexed(address)
    model_hash: bytes32
    support: uint256

event ModelRecorded:
    task_id: indexed(uint256)
    round: indexed(uint256)
    model_hash: bytes32

event Rewarded:
    task_id: indexed(uint256)
    round: indexed(uint256)
    participant: indexed(address)
    amount: uint256
    kind: uint8

event Slashed:
    task_id: indexed(uint256)
    round: indexed(uint256)
    participant: indexed(address)
    amount: uint256
    reason: uint8

event TaskStarted:
    task_id: indexed(uint256)
    n_participants: uint256
    total_stake: uint256

event TaskFinished:
    task_id: indexed(uint256)
    rounds_completed: uint256
    refund: uint256


token: public(immutable(IERC20))
vrf_verifier: public(immutable(address))
task_count: public(uint256)

_params: HashMap[uint256, TaskParams]
_state: HashMap[uint256, TaskState]
_participants: HashMap[uint256, DynArray[address, MAX_PARTICIPANTS]]
_pools: HashMap[uint256, HashMap[address, Participant]]
_vrf_owner: HashMap[uint256, HashMap[bytes32, address]]
# task -> participant -> holder -> shares of that participant's pool
_shares: HashMap[uint256, HashMap[address, HashMap[address, uint256]]]
_rounds: HashMap[uint256, HashMap[uint256, Round]]
_windows: HashMap[uint256, HashMap[uint256, Windows]]
_declined: HashMap[uint256, HashMap[uint256, HashMap[address, bool]]]
_proposals: HashMap[uint256, HashMap[uint256, DynArray[Proposal, MAX_PROPOSALS]]]
_proposal_slot: HashMap[uint256, HashMap[uint256, HashMap[address, uint256]]]  # index + 1
_ballots: HashMap[uint256, HashMap[uint256, HashMap[address, Ballot]]]
_model_support: HashMap[uint256, HashMap[uint256, HashMap[bytes32, uint256]]]
_model_voted: HashMap[uint256, HashMap[uint256, HashMap[address, bool]]]
# a round settled over several finalise calls: voters settled so far, and the round's budget
_settled: HashMap[uint256, HashMap[uint256, uint256]]
_budget: HashMap[uint256, HashMap[uint256, uint256]]


@deploy
def __init__(stake_token: address, verifier: address):
    """
    @param stake_token the ERC-20 used for stake and rewards
    @param verifier ECVRF verifier: the precompile 0x...0F10 on the embedded chain,
           or a verifier contract on an external chain (same calling convention)
    """
    token = IERC20(stake_token)
    vrf_verifier = verifier


# ---------------------------------------------------------------- sortition

@internal
@pure
def _sortition_threshold(stake: uint256, total: uint256, expected: uint256, unit: uint256) -> uint256:
    # Elected with chance min(1, w * p), linear in stake: splitting a stake earns no more
    # proposals in expectation than holding it whole.
    big_w: uint256 = total // unit
    if big_w == 0:
        return ONE
    p: uint256 = min(ONE, expected * ONE // big_w)
    return ONE - min(ONE, stake // unit * p)


# ---------------------------------------------------------------- helpers

@internal
def _pull(sender: address, amount: uint256):
    assert extcall token.transferFrom(sender, self, amount, default_return_value=True), "transfer failed"


@internal
def _push(receiver: address, amount: uint256):
    assert extcall token.transfer(receiver, amount, default_return_value=True), "transfer failed"


@internal
def _deposit(task_id: uint256, participant: address, holder: address, amount: uint256):
    pool: Participant = self._pools[task_id][participant]
    shares: uint256 = amount
    if pool.total_shares > 0:
        # deposits happen only before the task starts, when one share = one token;
        # the general formula keeps that true if it ever changes
        assert pool.stake > 0, "pool wiped out"
        shares = amount * pool.total_shares // pool.stake
    assert shares > 0, "deposit too small"
    self._shares[task_id][participant][holder] += shares
    self._pools[task_id][participant].total_shares = pool.total_shares + shares
    self._pools[task_id][participant].stake = pool.stake + amount
    self._pull(holder, amount)


@internal
def _remove_participant(task_id: uint256, who: address):
    # in place: copying the list out and back would read and write every slot
    n: uint256 = len(self._participants[task_id])
    for i: uint256 in range(MAX_PARTICIPANTS):
        if i >= n:
            break
        if self._participants[task_id][i] == who:
            self._participants[task_id][i] = self._participants[task_id][n - 1]
            self._participants[task_id].pop()
            break


@internal
@view
def _deadlines(task_id: uint256, r: uint256) -> (uint256, uint256, uint256):
    return self._windows[task_id][r].propose_end, self._windows[task_id][r].commit_end, self._windows[task_id][r].reveal_end


@internal
def _close_from(task_id: uint256, r: uint256, phase: uint8):
    """end window `phase` at this block; the windows after it keep their full lengths"""
    end: uint256 = block.number
    if phase == PHASE_PROPOSE:
        self._windows[task_id][r].propose_end = end
        end += self._params[task_id].commit_blocks
    if phase <= PHASE_COMMIT:
        self._windows[task_id][r].commit_end = end
        end += self._params[task_id].reveal_blocks
    self._windows[task_id][r].reveal_end = end
    log PhaseClosed(task_id=task_id, round=r, phase=phase, last_block=block.number)


@internal
def _maybe_close_propose(task_id: uint256, r: uint256):
    """every participant has proposed or declined, or the proposal cap is reached"""
    n: uint256 = self._rounds[task_id][r].n_proposals
    if self._windows[task_id][r].fallback_open:
        if n > 0:
            self._close_from(task_id, r, PHASE_PROPOSE)  # the one admitted proposal is in
        return
    decided: uint256 = n + self._windows[task_id][r].n_declined
    if n < self._params[task_id].max_proposals and decided < len(self._participants[task_id]):
        return
    if n == 0:
        # everyone declined (so some verified draw exists): no empty round
        self._open_fallback(task_id, r)
        return
    self._close_from(task_id, r, PHASE_PROPOSE)


@internal
def _open_fallback(task_id: uint256, r: uint256):
    """a propose window of full length from this block for the best decliner alone"""
    self._windows[task_id][r].fallback_open = True
    end: uint256 = block.number + self._params[task_id].propose_blocks
    self._windows[task_id][r].propose_end = end
    end += self._params[task_id].commit_blocks
    self._windows[task_id][r].commit_end = end
    self._windows[task_id][r].reveal_end = end + self._params[task_id].reveal_blocks
    log FallbackOpened(task_id=task_id, round=r, proposer=self._windows[task_id][r].fallback, last_block=block.number + self._params[task_id].propose_blocks)


@internal
@view
def _phase(task_id: uint256) -> uint8:
    if self._state[task_id].status != STATUS_RUNNING:
        return PHASE_IDLE
    r: uint256 = self._state[task_id].current_round
    propose_end: uint256 = 0
    commit_end: uint256 = 0
    reveal_end: uint256 = 0
    propose_end, commit_end, reveal_end = self._deadlines(task_id, r)
    if block.number <= self._rounds[task_id][r].open_block:
        return PHASE_OPENING
    if block.number <= propose_end:
        return PHASE_PROPOSE
    if block.number <= commit_end:
        return PHASE_COMMIT
    if block.number <= reveal_end:
        return PHASE_REVEAL
    return PHASE_CLOSED


@internal
@view
def _require_phase(task_id: uint256, r: uint256, phase: uint8):
    assert self._state[task_id].status == STATUS_RUNNING, "task not running"
    assert self._state[task_id].current_round == r, "wrong round"
    assert self._phase(task_id) == phase, "wrong phase"


@internal
@view
def _computed_seed(task_id: uint256, r: uint256) -> bytes32:
    """seed_0 from blockhash(B_0) while readable; later seeds are stored when their round opens"""
    open_block: uint256 = self._rounds[task_id][r].open_block
    if r > 0 or block.number <= open_block or block.number - open_block > 256:
        return empty(bytes32)
    return keccak256(concat(blockhash(open_block), convert(task_id, bytes32), convert(r, bytes32)))


@internal
def _fix_seed(task_id: uint256, r: uint256) -> bytes32:
    seed: bytes32 = self._rounds[task_id][r].seed
    if seed == empty(bytes32):
        seed = self._computed_seed(task_id, r)
        if seed == empty(bytes32):
            # round 0 where no participant proposed or declined while blockhash(B_0) was
            # readable, and only then: a constant nobody chose after the keys were in
            seed = keccak256(concat(empty(bytes32), convert(task_id, bytes32), convert(r, bytes32)))
        self._rounds[task_id][r].seed = seed
        log SeedFixed(task_id=task_id, round=r, seed=seed)
    return seed


@internal
def _draw(pk: bytes32, proof: Bytes[VRF_PROOF_LEN], seed: bytes32) -> uint256:
    """x = the first 8 bytes of the verified beta, big-endian"""
    ok: bool = False
    beta: Bytes[VRF_BETA_LEN] = b""
    ok, beta = raw_call(
        vrf_verifier,
        concat(pk, proof, seed),
        max_outsize=VRF_BETA_LEN,
        revert_on_failure=False,
    )
    # an address without code "succeeds" with empty output: that is a rejection too
    assert ok and len(beta) == VRF_BETA_LEN, "vrf proof rejected"
    return extract32(beta, 0, output_type=uint256) >> 192


@internal
def _open_round(task_id: uint256, r: uint256):
    """
    Round r opens at this block. Seeds form a chain, seed_r = keccak(seed_{r-1} || task || r),
    from seed_0 = keccak(blockhash(B_0) || task || 0): no later block hash, transaction
    or timing enters a seed (protocol/spec/contracts.md, "Seed").
    """
    self._state[task_id].current_round = r
    self._rounds[task_id][r].open_block = block.number
    seed: bytes32 = empty(bytes32)
    if r > 0:
        seed = keccak256(concat(self._fix_seed(task_id, r - 1), convert(task_id, bytes32), convert(r, bytes32)))
        self._rounds[task_id][r].seed = seed
    end: uint256 = block.number + self._params[task_id].propose_blocks
    self._windows[task_id][r].propose_end = end
    end += self._params[task_id].commit_blocks
    self._windows[task_id][r].commit_end = end
    self._windows[task_id][r].reveal_end = end + self._params[task_id].reveal_blocks
    log RoundOpened(task_id=task_id, round=r, open_block=block.number, seed=seed)


@internal
def _credit(task_id: uint256, r: uint256, who: address, amount: uint256, kind: uint8):
    if amount == 0:
        return
    self._pools[task_id][who].stake += amount
    self._state[task_id].total_stake += amount
    log Rewarded(task_id=task_id, round=r, participant=who, amount=amount, kind=kind)


@internal
def _slash(task_id: uint256, r: uint256, who: address, num: uint256, den: uint256, reason: uint8) -> uint256:
    amount: uint256 = self._pools[task_id][who].stake * num // den
    if amount == 0:
        return 0
    self._pools[task_id][who].stake -= amount
    self._state[task_id].total_stake -= amount
    log Slashed(task_id=task_id, round=r, participant=who, amount=amount, reason=reason)
    return amount


@internal
@pure
def _popcount(x: uint256) -> uint256:
    n: uint256 = 0
    v: uint256 = x
    for i: uint256 in range(MAX_PROPOSALS):
        if v == 0:
            break
        n += v & 1
        v = v >> 1
    return n


# ---------------------------------------------------------------- task lifecycle

@external
@nonreentrant
def create_task(p: TaskParams) -> uint256:
    """@notice create a task; the reward pool is pulled from the caller (approve first)"""
    assert p.rounds >= 1 and p.rounds <= MAX_ROUNDS, "rounds"
    assert p.min_participants >= 2 and p.min_participants <= MAX_PARTICIPANTS, "min_participants"
    assert p.stake_unit >= 1 and p.min_stake >= p.stake_unit, "min_stake below stake_unit"
    assert p.max_proposals >= 1 and p.max_proposals <= MAX_PROPOSALS, "max_proposals"
    assert p.expected_proposers >= 1 and p.expected_proposers <= MAX_PROPOSALS, "expected_proposers"
    assert p.propose_blocks >= 1 and p.propose_blocks <= MAX_PROPOSE_BLOCKS, "propose_blocks"
    assert p.commit_blocks >= 1 and p.commit_blocks <= MAX_PHASE_BLOCKS, "commit_blocks"
    assert p.reveal_blocks >= MIN_REVEAL_BLOCKS and p.reveal_blocks <= MAX_PHASE_BLOCKS, "reveal_blocks"
    assert p.vote_mode <= MODE_WHOLE_ROUND, "vote_mode"
    assert p.slash_bps <= MAX_SLASH_BPS and p.proposer_share_bps <= BPS, "basis points"
    task_id: uint256 = self.task_count + 1
    self.task_count = task_id
    self._params[task_id] = p
    self._state[task_id] = TaskState(
        creator=msg.sender, status=STATUS_JOINING, current_round=0, total_stake=0, pool=p.reward_pool
    )
    if p.reward_pool > 0:
        self._pull(msg.sender, p.reward_pool)
    log TaskCreated(
        task_id=task_id,
        creator=msg.sender,
        recipe=p.recipe,
        recipe_hash=p.recipe_hash,
        model_init_hash=p.model_init_hash,
        rounds=p.rounds,
        reward_pool=p.reward_pool,
        vote_mode=p.vote_mode,
    )
    return task_id


@external
@nonreentrant
def join(task_id: uint256, stake: uint256, vrf_pk: bytes32):
    """@notice stake (pulled from the caller) and register a VRF key; only before the start"""
    assert self._state[task_id].status == STATUS_JOINING, "task not open for joining"
    assert stake >= self._params[task_id].min_stake, "stake below minimum"
    assert vrf_pk != empty(bytes32), "empty vrf key"
    assert not self._pools[task_id][msg.sender].active, "already joined"
    assert self._vrf_owner[task_id][vrf_pk] == empty(address), "vrf key already registered"
    assert len(self._participants[task_id]) < MAX_PARTICIPANTS, "task full"
    self._participants[task_id].append(msg.sender)
    self._vrf_owner[task_id][vrf_pk] = msg.sender
    self._pools[task_id][msg.sender].active = True
    self._pools[task_id][msg.sender].vrf_pk = vrf_pk
    self._deposit(task_id, msg.sender, msg.sender, stake)
    # a pool left behind by an earlier leave may still hold delegations: it rejoins whole
    self._state[task_id].total_stake += self._pools[task_id][msg.sender].stake
    log Joined(task_id=task_id, participant=msg.sender, stake=stake, vrf_pk=vrf_pk)


@external
@nonreentrant
def delegate(task_id: uint256, participant: address, amount: uint256):
    """@notice add stake to a participant's pool; shares its rewards and slashes pro rata"""
    assert self._state[task_id].status == STATUS_JOINING, "task not open for joining"
    assert self._pools[task_id][participant].active, "not a participant"
    assert amount > 0, "zero amount"
    self._deposit(task_id, participant, msg.sender, amount)
    self._state[task_id].total_stake += amount
    log Delegated(task_id=task_id, delegator=msg.sender, participant=participant, amount=amount)


@external
@nonreentrant
def withdraw(task_id: uint256, participant: address) -> uint256:
    """
    @notice redeem all the caller's shares of `participant`'s pool. Allowed before
            the task starts and after it ends, never while it runs. A participant
            withdrawing its own shares leaves the task.
    """
    status: uint8 = self._state[task_id].status
    assert status != STATUS_RUNNING, "task running"
    assert status != STATUS_NONE, "no such task"
    shares: uint256 = self._shares[task_id][participant][msg.sender]
    assert shares > 0, "nothing to withdraw"
    pool: Participant = self._pools[task_id][participant]
    amount: uint256 = shares * pool.stake // pool.total_shares
    if pool.active:
        if msg.sender == participant:
            self._state[task_id].total_stake -= pool.stake
            self._pools[task_id][participant].active = False
            self._vrf_owner[task_id][pool.vrf_pk] = empty(address)
            self._remove_participant(task_id, participant)
        else:
            self._state[task_id].total_stake -= amount
    self._shares[task_id][participant][msg.sender] = 0
    self._pools[task_id][participant].total_shares = pool.total_shares - shares
    self._pools[task_id][participant].stake = pool.stake - amount
    if amount > 0:
        self._push(msg.sender, amount)
    log Withdrawn(task_id=task_id, holder=msg.sender, participant=participant, amount=amount)
    return amount


@external
def start_task(task_id: uint256):
    """@notice creator closes joining and opens round 0 at this block"""
    st: TaskState = self._state[task_id]
    assert st.status == STATUS_JOINING, "task not open for joining"
    assert msg.sender == st.creator, "only the creator"
    n: uint256 = len(self._participants[task_id])
    assert n >= self._params[task_id].min_participants, "not enough participants"
    self._state[task_id].status = STATUS_RUNNING
    log TaskStarted(task_id=task_id, n_participants=n, total_stake=st.total_stake)
    self._open_round(task_id, 0)


@external
@nonreentrant
def cancel_task(task_id: uint256):
    """@notice creator abandons a task that has not started; the pool is refunded"""
    st: TaskState = self._state[task_id]
    assert st.status == STATUS_JOINING, "task not open for joining"
    assert msg.sender == st.creator, "only the creator"
    self._state[task_id].status = STATUS_FINISHED
    self._state[task_id].pool = 0
    if st.pool > 0:
        self._push(st.creator, st.pool)
    log TaskFinished(task_id=task_id, rounds_completed=0, refund=st.pool)


# ---------------------------------------------------------------- the round

@external
def propose(task_id: uint256, r: uint256, delta_hash: bytes32, vrf_proof: Bytes[VRF_PROOF_LEN]) -> uint256:
    """@notice claim a proposer slot with an ECVRF proof on the round seed; returns the index"""
    self._require_phase(task_id, r, PHASE_PROPOSE)
    pool: Participant = self._pools[task_id][msg.sender]
    assert pool.active, "not a participant"
    assert self._proposal_slot[task_id][r][msg.sender] == 0, "already proposed"
    p: TaskParams = self._params[task_id]
    index: uint256 = len(self._proposals[task_id][r])
    assert index < p.max_proposals, "proposal cap reached"
    assert delta_hash != empty(bytes32), "empty delta hash"
    assert len(vrf_proof) == VRF_PROOF_LEN, "vrf proof length"
    if self._windows[task_id][r].fallback_open:
        # its draw was verified with its decline
        assert msg.sender == self._windows[task_id][r].fallback, "not the fallback proposer"
    else:
        assert not self._declined[task_id][r][msg.sender], "declined this round"
        x: uint256 = self._draw(pool.vrf_pk, vrf_proof, self._fix_seed(task_id, r))
        total: uint256 = self._state[task_id].total_stake
        threshold: uint256 = self._sortition_threshold(pool.stake, total, p.expected_proposers, p.stake_unit)
        assert x >= threshold, "not elected"
    self._proposals[task_id][r].append(Proposal(proposer=msg.sender, delta_hash=delta_hash))
    self._proposal_slot[task_id][r][msg.sender] = index + 1
    self._rounds[task_id][r].n_proposals = index + 1
    self._rounds[task_id][r].proposals_digest = keccak256(concat(self._rounds[task_id][r].proposals_digest, delta_hash))
    log Proposed(task_id=task_id, round=r, proposer=msg.sender, index=index, delta_hash=delta_hash)
    self._maybe_close_propose(task_id, r)
    return index


@external
def decline(task_id: uint256, r: uint256, vrf_proof: Bytes[VRF_PROOF_LEN]):
    """
    @notice a participant says it will not propose in round r (not elected, or not
            willing), so the propose window can close once everyone proposed or declined.
            Its VRF proof on the round seed is verified; the highest draw x among the
            decliners may propose in a fallback window if nobody else does.
    """
    self._require_phase(task_id, r, PHASE_PROPOSE)
    pool: Participant = self._pools[task_id][msg.sender]
    assert pool.active, "not a participant"
    assert self._proposal_slot[task_id][r][msg.sender] == 0, "already proposed"
    assert not self._declined[task_id][r][msg.sender], "already declined"
    assert not self._windows[task_id][r].fallback_open, "fallback window"
    assert len(vrf_proof) == VRF_PROOF_LEN, "vrf proof length"
    x: uint256 = self._draw(pool.vrf_pk, vrf_proof, self._fix_seed(task_id, r))
    if self._windows[task_id][r].fallback == empty(address) or x > self._windows[task_id][r].fallback_draw:
        self._windows[task_id][r].fallback = msg.sender
        self._windows[task_id][r].fallback_draw = x
    self._declined[task_id][r][msg.sender] = True
    self._windows[task_id][r].n_declined += 1
    log Declined(task_id=task_id, round=r, participant=msg.sender)
    self._maybe_close_propose(task_id, r)


@external
def commit_vote(task_id: uint256, r: uint256, digest: bytes32, proposals_digest: bytes32):
    """
    @notice a participant commits its vote digest once. Every participant votes, the
            round's proposers included (on every proposal, their own among them), so
            each round's verdict is a majority of all the stake that revealed and never
            of a random committee a minority may happen to dominate. `proposals_digest`
            names the proposals the ballot judged: a commit replayed onto a branch whose
            proposals differ reverts instead of judging other deltas.
    """
    self._require_phase(task_id, r, PHASE_COMMIT)
    assert proposals_digest == self._rounds[task_id][r].proposals_digest, "proposals differ"
    assert self._pools[task_id][msg.sender].active, "not a participant"
    assert self._ballots[task_id][r][msg.sender].digest == empty(bytes32), "already committed"
    assert digest != empty(bytes32), "empty digest"
    self._ballots[task_id][r][msg.sender].digest = digest
    log VoteCommitted(task_id=task_id, round=r, voter=msg.sender, digest=digest)
    committed: uint256 = self._windows[task_id][r].n_committed + 1
    self._windows[task_id][r].n_committed = committed
    if committed >= len(self._participants[task_id]):
        self._close_from(task_id, r, PHASE_COMMIT)


@external
def reveal_vote(task_id: uint256, r: uint256, votes: DynArray[int256, MAX_PROPOSALS], salt: bytes32):
    """
    @notice open a committed vote. Per-proposal mode: one vote per proposal, in
            proposal order: +1 accept, -1 reject, 0 not received (counts for neither
            side, never slashed). Whole-round mode: one +1 or -1 for the aggregate
            (none when the round has no proposal).
    """
    self._require_phase(task_id, r, PHASE_REVEAL)
    ballot: Ballot = self._ballots[task_id][r][msg.sender]
    assert ballot.digest != empty(bytes32), "no commitment"
    assert not ballot.revealed, "already revealed"
    assert keccak256(abi_encode(votes, salt, msg.sender)) == ballot.digest, "reveal does not match commitment"
    n: uint256 = self._rounds[task_id][r].n_proposals
    stake: uint256 = self._pools[task_id][msg.sender].stake
    if self._params[task_id].vote_mode == MODE_PER_PROPOSAL:
        assert len(votes) == n, "one vote per proposal"
    else:
        # one vote for the round: a sign, never a magnitude a few voters could inflate
        assert len(votes) == min(n, 1), "one vote for the round"
        if n > 0:
            assert votes[0] != 0, "vote must be +1 or -1"
    for i: uint256 in range(MAX_PROPOSALS):
        if i >= len(votes):
            break
        if votes[i] == 1:
            ballot.accept_mask |= 1 << i
            self._rounds[task_id][r].accept_stake[i] += stake
        elif votes[i] == -1:
            ballot.reject_mask |= 1 << i
            self._rounds[task_id][r].reject_stake[i] += stake
        else:
            assert votes[i] == 0, "vote must be -1, 0 or +1"
    ballot.revealed = True
    self._ballots[task_id][r][msg.sender] = ballot
    self._rounds[task_id][r].revealed_stake += stake
    log VoteRevealed(task_id=task_id, round=r, voter=msg.sender, votes=votes, salt=salt)
    revealed: uint256 = self._windows[task_id][r].n_revealed + 1
    self._windows[task_id][r].n_revealed = revealed
    if revealed == self._windows[task_id][r].n_committed:
        self._close_from(task_id, r, PHASE_REVEAL)


@internal
@view
def _accepted_mask(task_id: uint256, r: uint256, n: uint256, whole: bool) -> uint256:
    rnd: Round = self._rounds[task_id][r]
    if whole:
        if rnd.accept_stake[0] >= rnd.reject_stake[0]:
            return (1 << n) - 1
        return 0
    # Accepted by a majority of the stake that revealed, not only of those who judged it:
    # a proposer that withholds its delta from the honest voters (who then vote 0) cannot
    # pass it on the +1 votes of the few it sent it to.
    mask: uint256 = 0
    for i: uint256 in range(MAX_PROPOSALS):
        if i >= n:
            break
        if rnd.accept_stake[i] * 2 > rnd.revealed_stake:
            mask |= 1 << i
    return mask


@internal
def _settle_proposers(task_id: uint256, r: uint256, mask: uint256, whole: bool, budget: uint256, slash_bps: uint256) -> (uint256, uint256):
    """returns (paid, slashed)"""
    n: uint256 = len(self._proposals[task_id][r])
    n_accepted: uint256 = self._popcount(mask)
    each: uint256 = 0
    if n_accepted > 0:
        each = budget // n_accepted
    paid: uint256 = 0
    slashed: uint256 = 0
    for i: uint256 in range(MAX_PROPOSALS):
        if i >= n:
            break
        who: address = self._proposals[task_id][r][i].proposer
        if (mask >> i) & 1 == 1:
            self._credit(task_id, r, who, each, REWARD_PROPOSER)
            paid += each
        elif whole or self._rounds[task_id][r].reject_stake[i] > 0:
            # rejected by someone's -1; a proposal that only drew 0s ("not received" by
            # every voter) has no verdict of its own, like a round without reveals
            slashed += self._slash(task_id, r, who, slash_bps, BPS, SLASH_REJECTED_PROPOSAL)
    return paid, slashed


@internal
@view
def _agreement_total(task_id: uint256, r: uint256, verdict: uint256, n: uint256) -> uint256:
    """Sum over revealed voters of stake x votes matching the verdict, from the tallies:
    a voter's stake cannot change between its reveal and its settlement"""
    total: uint256 = 0
    for i: uint256 in range(MAX_PROPOSALS):
        if i >= n:
            break
        if (verdict >> i) & 1 == 1:
            total += self._rounds[task_id][r].accept_stake[i]
        else:
            total += self._rounds[task_id][r].reject_stake[i]
    return total


@internal
def _settle_voters(task_id: uint256, r: uint256, verdict: uint256, first: uint256, last: uint256, budget: uint256, total: uint256, slash_bps: uint256) -> (uint256, uint256):
    """
    returns (paid, slashed) for participants [first, last). A voter is slashed only for a
    commitment it did not open; a revealed voter is paid by agreement: budget pro rata to
    stake x the number of its +1/-1 votes that match the verdict. Voting with the losing
    side costs nothing, so honest voters who disagree among themselves do not feed a
    cartel that always agrees.
    """
    paid: uint256 = 0
    slashed: uint256 = 0
    for i: uint256 in range(SETTLE_BATCH):
        if first + i >= last:
            break
        who: address = self._participants[task_id][first + i]
        ballot: Ballot = self._ballots[task_id][r][who]
        if ballot.digest == empty(bytes32):
            continue  # did not commit: neither rewarded nor slashed
        if not ballot.revealed:
            slashed += self._slash(task_id, r, who, slash_bps, BPS, SLASH_UNREVEALED_VOTE)
        elif total > 0:
            # a 0 ("not received") is in neither mask: it neither agrees nor loses
            agreed: uint256 = self._popcount((ballot.accept_mask & verdict) | (ballot.reject_mask & ~verdict))
            share: uint256 = budget * self._pools[task_id][who].stake * agreed // total
            self._credit(task_id, r, who, share, REWARD_VOTER)
            paid += share
    return paid, slashed


@external
@nonreentrant
def finalise(task_id: uint256, r: uint256):
    """
    @notice anyone, after the reveal window: tally, reward, slash, and open round r+1
            at this block (or finish the task after the last round). A task of more
            than SETTLE_BATCH participants takes one call per SETTLE_BATCH voters: each
            but the last settles its batch and logs VotersSettled
    """
    self._require_phase(task_id, r, PHASE_CLOSED)
    p: TaskParams = self._params[task_id]
    n: uint256 = self._rounds[task_id][r].n_proposals
    if n == 0 and self._windows[task_id][r].fallback != empty(address) and not self._windows[task_id][r].fallback_open:
        # the propose window timed out with no proposal: the best decliner gets its window
        self._open_fallback(task_id, r)
        return
    revealed: uint256 = self._rounds[task_id][r].revealed_stake
    whole: bool = p.vote_mode == MODE_WHOLE_ROUND
    # without a single revealed vote there is no verdict: nobody is judged
    decided: bool = n > 0 and revealed > 0
    mask: uint256 = 0
    if decided:
        mask = self._accepted_mask(task_id, r, n, whole)
    # voters first, in batches, each at the stake it revealed with; the proposers last
    first: uint256 = self._settled[task_id][r]
    budget: uint256 = self._budget[task_id][r]
    if first == 0:
        budget = self._state[task_id].pool // (p.rounds - r)
    proposer_budget: uint256 = budget * p.proposer_share_bps // BPS
    voter_budget: uint256 = 0
    verdict: uint256 = mask
    if whole:
        verdict = convert(mask != 0, uint256)
    if decided:
        voter_budget = budget - proposer_budget
    n_participants: uint256 = len(self._participants[task_id])
    last: uint256 = min(first + SETTLE_BATCH, n_participants)
    total: uint256 = self._agreement_total(task_id, r, verdict, min(n, 1) if whole else n)
    paid: uint256 = 0
    slashed: uint256 = 0
    paid, slashed = self._settle_voters(task_id, r, verdict, first, last, voter_budget, total, p.slash_bps)
    if last < n_participants:
        self._state[task_id].pool = self._state[task_id].pool + slashed - paid
        self._settled[task_id][r] = last
        self._budget[task_id][r] = budget
        log VotersSettled(task_id=task_id, round=r, settled=last, n_participants=n_participants)
        return
    proposers_paid: uint256 = 0
    proposers_slashed: uint256 = 0
    if decided:
        proposers_paid, proposers_slashed = self._settle_proposers(task_id, r, mask, whole, proposer_budget, p.slash_bps)
    self._state[task_id].pool = self._state[task_id].pool + slashed + proposers_slashed - paid - proposers_paid
    self._rounds[task_id][r].accepted_mask = mask
    self._rounds[task_id][r].finalised = True
    log RoundFinalised(task_id=task_id, round=r, accepted_mask=mask, n_proposals=n, revealed_stake=revealed)
    if mask == 0:
        # nothing accepted: the model stays what it was
        previous: bytes32 = p.model_init_hash
        if r > 0:
            previous = self._rounds[task_id][r - 1].model_hash
        if previous != empty(bytes32):
            self._rounds[task_id][r].model_hash = previous
            log ModelRecorded(task_id=task_id, round=r, model_hash=previous)
    if r + 1 < p.rounds:
        self._open_round(task_id, r + 1)
        return
    refund: uint256 = self._state[task_id].pool
    self._state[task_id].status = STATUS_FINISHED
    self._state[task_id].pool = 0
    if refund > 0:
        self._push(self._state[task_id].creator, refund)
    log TaskFinished(task_id=task_id, rounds_completed=p.rounds, refund=refund)


@external
def record_model(task_id: uint256, r: uint256, model_hash: bytes32):
    """
    @notice a participant attests the hash of model_r = model_{r-1} + aggregate(accepted
            deltas); the first hash backed by more than half of the total stake is recorded
    """
    status: uint8 = self._state[task_id].status
    assert status == STATUS_RUNNING or status == STATUS_FINISHED, "task not running"
    assert self._rounds[task_id][r].finalised, "round not finalised"
    assert self._rounds[task_id][r].model_hash == empty(bytes32), "model already recorded"
    assert model_hash != empty(bytes32), "empty model hash"
    pool: Participant = self._pools[task_id][msg.sender]
    assert pool.active, "not a participant"
    assert not self._model_voted[task_id][r][msg.sender], "already attested"
    self._model_voted[task_id][r][msg.sender] = True
    support: uint256 = self._model_support[task_id][r][model_hash] + pool.stake
    self._model_support[task_id][r][model_hash] = support
    log ModelVoted(task_id=task_id, round=r, participant=msg.sender, model_hash=model_hash, support=support)
    if support * 2 > self._state[task_id].total_stake:
        self._rounds[task_id][r].model_hash = model_hash
        log ModelRecorded(task_id=task_id, round=r, model_hash=model_hash)


# ---------------------------------------------------------------- views

@external
@view
def get_params(task_id: uint256) -> TaskParams:
    return self._params[task_id]


@external
@view
def get_state(task_id: uint256) -> TaskState:
    return self._state[task_id]


@external
@view
def get_participants(task_id: uint256) -> DynArray[address, MAX_PARTICIPANTS]:
    return self._participants[task_id]


@external
@view
def get_participant(task_id: uint256, who: address) -> Participant:
    return self._pools[task_id][who]


@external
@view
def shares_of(task_id: uint256, participant: address, holder: address) -> uint256:
    return self._shares[task_id][participant][holder]


@external
@view
def value_of(task_id: uint256, participant: address, holder: address) -> uint256:
    pool: Participant = self._pools[task_id][participant]
    if pool.total_shares == 0:
        return 0
    return self._shares[task_id][participant][holder] * pool.stake // pool.total_shares


@external
@view
def get_round(task_id: uint256, r: uint256) -> Round:
    return self._rounds[task_id][r]


@external
@view
def get_proposals(task_id: uint256, r: uint256) -> DynArray[Proposal, MAX_PROPOSALS]:
    return self._proposals[task_id][r]


@external
@view
def proposal_slot(task_id: uint256, r: uint256, who: address) -> uint256:
    """@notice 1 + the index of who's proposal in round r, 0 if none"""
    return self._proposal_slot[task_id][r][who]


@external
@view
def get_ballot(task_id: uint256, r: uint256, voter: address) -> Ballot:
    return self._ballots[task_id][r][voter]


@external
@view
def model_support(task_id: uint256, r: uint256, model_hash: bytes32) -> uint256:
    return self._model_support[task_id][r][model_hash]


@external
@view
def round_seed(task_id: uint256, r: uint256) -> bytes32:
    """@notice seed(r); zero while unknowable (the block B_r itself) or once blockhash expired unstored"""
    seed: bytes32 = self._rounds[task_id][r].seed
    if seed != empty(bytes32):
        return seed
    if self._state[task_id].status == STATUS_NONE or self._rounds[task_id][r].open_block == 0:
        return empty(bytes32)
    return self._computed_seed(task_id, r)


@external
@view
def phase(task_id: uint256) -> uint8:
    return self._phase(task_id)


@external
@view
def deadlines(task_id: uint256, r: uint256) -> (uint256, uint256, uint256):
    """@notice last block of the propose, commit and reveal windows of round r, as they
            stand: a window that closed early ends at the block that closed it"""
    return self._deadlines(task_id, r)


@external
@view
def has_declined(task_id: uint256, r: uint256, who: address) -> bool:
    return self._declined[task_id][r][who]


@external
@view
def sortition_threshold(task_id: uint256, who: address) -> uint256:
    """@notice who is elected this round iff first8(beta) >= this (2**64 = never)"""
    p: TaskParams = self._params[task_id]
    stake: uint256 = self._pools[task_id][who].stake
    return self._sortition_threshold(stake, self._state[task_id].total_stake, p.expected_proposers, p.stake_unit)
