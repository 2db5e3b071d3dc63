# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title flockd arena
@notice Training competitions settled on chain. A creator posts a recipe, a base model,
        a commitment to a private evaluation set, a reward pool and a bond. Trainers
        commit their model hashes bound to their own address, then reveal them; of
        identical hashes only the earliest commit counts. Validators are elected by
        ECVRF sortition linear in (capped) stake, commit their score vectors, then
        reveal them. Each submission's score is the stake-weighted median, ranks follow
        it (ties to the earlier commit; a median of 0, the score of a model nobody
        serves, is not ranked), trainers are paid by rank with a geometric decay,
        validators by how close their scores are to the medians. Only a
        validator that does not reveal is slashed. The creator publishes the
        evaluation set after scoring, or loses its bond. Spec: protocol/spec/contracts.md.

        Delegation pools per operator (a trainer or a validator, across competitions):
        anyone backs an operator with stake and holds shares of its pool, shared pro
        rata (the TaskRegistry design). When the operator joins a competition, the
        pool's free stake is locked to it as its backing until finalise: a validator's
        weight (election, median, payout) is min(own stake + backing, validator_cap),
        capped as own stake is; the backing is slashed at the same rate as own stake
        when the validator does not reveal. Of each reward the part earned by the
        backing, reward * backing / (own stake + backing), is split: the operator's
        commission (capped, changed at most once per COMMISSION_DELAY_BLOCKS and only
        after that delay) and the rest to the pool's shares, pulled by collect().
        Undelegated stake is claimable after UNBONDING_BLOCKS.
"""
from ethereum.ercs import IERC20

# Bounds that keep every loop and array finite.
MAX_TRAINERS: constant(uint256) = 24  # and so at most 24 submissions: finalise must fit 8M gas
MAX_VALIDATORS: constant(uint256) = 32
MAX_ELECTED: constant(uint256) = 16
MAX_PHASE_BLOCKS: constant(uint256) = 1024
# The election window must see blockhash(join_end): blockhash() reaches back 256 blocks.
MAX_SUBMIT_BLOCKS: constant(uint256) = 256
# A reveal lands a few confirmations after its window opens and must still fit.
MIN_REVEAL_BLOCKS: constant(uint256) = 8
MAX_SLASH_BPS: constant(uint256) = 5000
# Scores are fixed point, higher is better; the cap keeps every product in range.
MAX_SCORE: constant(uint256) = 2**128

# Delegation pools.
MAX_COMMISSION_BPS: constant(uint256) = 5000
UNBONDING_BLOCKS: constant(uint256) = 1024  # undelegated stake waits this long
COMMISSION_DELAY_BLOCKS: constant(uint256) = 2048  # delegators can leave before a raise bites

ONE: constant(uint256) = 2**64  # fixed point of draws, thresholds and rank weights
BPS: constant(uint256) = 10000
VRF_PROOF_LEN: constant(uint256) = 80
VRF_BETA_LEN: constant(uint256) = 64

ROLE_NONE: constant(uint8) = 0
ROLE_TRAINER: constant(uint8) = 1
ROLE_VALIDATOR: constant(uint8) = 2

PHASE_NONE: constant(uint8) = 0
PHASE_JOIN: constant(uint8) = 1  # join; trainers may commit already
PHASE_SUBMIT: constant(uint8) = 2  # trainers commit; validators prove their election
PHASE_REVEAL: constant(uint8) = 3  # trainers reveal; then the creator hands the set out
PHASE_SCORE_COMMIT: constant(uint8) = 4
PHASE_SCORE_REVEAL: constant(uint8) = 5  # validators reveal; the creator publishes the set
PHASE_CLOSED: constant(uint8) = 6  # finalise may be called
PHASE_FINALISED: constant(uint8) = 7


struct Params:
    recipe_hash: bytes32  # the recipe and its config
    base_model_hash: bytes32
    eval_commitment: bytes32  # keccak256(abi_encode(eval_set_hash, salt))
    join_blocks: uint256
    submit_blocks: uint256
    reveal_blocks: uint256
    score_commit_blocks: uint256
    score_reveal_blocks: uint256
    reward_pool: uint256
    creator_bond: uint256
    trainer_stake: uint256  # the least a trainer stakes
    validator_stake: uint256  # the least a validator stakes
    validator_cap: uint256  # stake counted per validator, in its election and its weight
    expected_validators: uint256
    trainer_share_bps: uint256  # of the reward pool; the rest goes to validators
    rank_decay_bps: uint256  # rank k+1 gets this fraction of rank k's share
    tolerance_bps: uint256  # a validator this far from a median gets half the closeness
    slash_bps: uint256  # of an elected validator's stake when it does not reveal

struct Competition:
    creator: address
    start_block: uint256
    seed: bytes32  # fixed by the first election
    eval_set_hash: bytes32  # set when published
    validator_weight: uint256  # sum of the joined validators' capped stakes
    finalised: bool

struct Member:
    role: uint8
    stake: uint256
    vrf_pk: bytes32
    elected: bool
    score_digest: bytes32
    revealed: bool

struct Submission:
    trainer: address
    digest: bytes32
    model_hash: bytes32
    revealed: bool
    duplicate: bool  # another submission with this model hash was committed earlier
    median: uint256  # set when ranked
    rank: uint256  # 1 = best; 0 = unranked

# An operator's delegation pool: delegated stake shared pro rata by shares.
struct Pool:
    stake: uint256  # delegated tokens (rewards are kept apart, in reward_per_share)
    total_shares: uint256
    locked: uint256  # backing of competitions not yet finalised: cannot be undelegated
    reward_per_share: uint256  # delegators' rewards so far per share, fixed point ONE, from 1
    commission_bps: uint256
    next_commission_bps: uint256
    commission_from: uint256  # the block from which next_commission_bps applies

struct Unbonding:
    amount: uint256
    release_block: uint256  # claimable from this block on


event CompetitionCreated:
    competition_id: indexed(uint256)
    creator: indexed(address)
    recipe_hash: bytes32
    base_model_hash: bytes32
    eval_commitment: bytes32
    reward_pool: uint256
    creator_bond: uint256

event Joined:
    competition_id: indexed(uint256)
    member: indexed(address)
    role: uint8
    stake: uint256
    vrf_pk: bytes32

event Evicted:
    competition_id: indexed(uint256)
    validator: indexed(address)
    stake: uint256  # released: claimable at once

event SubmissionCommitted:
    competition_id: indexed(uint256)
    trainer: indexed(address)
    index: uint256
    digest: bytes32

event Elected:
    competition_id: indexed(uint256)
    validator: indexed(address)
    seed: bytes32
    draw: uint256

event SubmissionRevealed:
    competition_id: indexed(uint256)
    trainer: indexed(address)
    index: uint256
    model_hash: bytes32
    salt: bytes32

event Duplicate:
    competition_id: indexed(uint256)
    index: uint256  # marked a duplicate: it counts for nothing
    original: uint256  # the earlier commit of the same model hash

event ScoresCommitted:
    competition_id: indexed(uint256)
    validator: indexed(address)
    digest: bytes32

event ScoresRevealed:
    competition_id: indexed(uint256)
    validator: indexed(address)
    scores: DynArray[uint256, MAX_TRAINERS]
    salt: bytes32

event EvalPublished:
    competition_id: indexed(uint256)
    eval_set_hash: bytes32
    salt: bytes32

event Ranked:
    competition_id: indexed(uint256)
    trainer: indexed(address)
    index: uint256
    rank: uint256
    median: uint256
    reward: uint256

event ValidatorSettled:
    competition_id: indexed(uint256)
    validator: indexed(address)
    revealed: bool
    closeness: uint256  # sum over counted submissions of BPS * tol / (tol + relative error)
    reward: uint256
    slashed: uint256

event Finalised:
    competition_id: indexed(uint256)
    ranked: uint256
    revealed_weight: uint256
    creator_refund: uint256
    burned: uint256

event Delegated:
    operator: indexed(address)
    delegator: indexed(address)
    amount: uint256
    shares: uint256

event Undelegated:
    operator: indexed(address)
    delegator: indexed(address)
    amount: uint256
    shares: uint256
    release_block: uint256

event CommissionChanged:
    operator: indexed(address)
    commission_bps: uint256
    from_block: uint256

event PoolRewarded:
    operator: indexed(address)
    competition_id: indexed(uint256)
    reward: uint256  # the operator's whole reward
    commission: uint256  # of the backing's part, to the operator
    delegators: uint256  # the rest of that part, to the pool's shares

event PoolSlashed:
    operator: indexed(address)
    competition_id: indexed(uint256)
    amount: uint256

event Claimed:
    account: indexed(address)
    amount: uint256


token: public(immutable(IERC20))
vrf_verifier: public(immutable(address))
competition_count: public(uint256)
claimable: public(HashMap[address, uint256])  # stakes and rewards released, pulled by claim()
burned: public(uint256)  # forfeited bonds and orphaned slashes: held here for good

_params: HashMap[uint256, Params]
_comps: HashMap[uint256, Competition]
_members: HashMap[uint256, HashMap[address, Member]]
_trainers: HashMap[uint256, DynArray[address, MAX_TRAINERS]]
_validators: HashMap[uint256, DynArray[address, MAX_VALIDATORS]]
_elected: HashMap[uint256, DynArray[address, MAX_ELECTED]]
_subs: HashMap[uint256, DynArray[Submission, MAX_TRAINERS]]
_sub_slot: HashMap[uint256, HashMap[address, uint256]]  # index + 1
_first_of_model: HashMap[uint256, HashMap[bytes32, uint256]]  # index + 1 of the earliest commit
_scores: HashMap[uint256, HashMap[address, DynArray[uint256, MAX_TRAINERS]]]
_pools: HashMap[address, Pool]
# operator -> holder -> shares of that operator's pool
_shares: HashMap[address, HashMap[address, uint256]]
_reward_paid: HashMap[address, HashMap[address, uint256]]  # reward_per_share last settled
_unbonding: HashMap[address, Unbonding]
backing: public(HashMap[uint256, HashMap[address, uint256]])  # pool stake locked at join


@deploy
def __init__(stake_token: address, verifier: address):
    """
    @param stake_token the ERC-20 used for stakes, bonds and rewards
    @param verifier ECVRF verifier: the precompile 0x...0F10 on the embedded chain,
           or a verifier contract on an external chain (same calling convention)
    """
    token = IERC20(stake_token)
    vrf_verifier = verifier


# ---------------------------------------------------------------- helpers

@internal
def _pull(sender: address, amount: uint256):
    assert extcall token.transferFrom(sender, self, amount, default_return_value=True), "transfer failed"


@internal
@view
def _ends(cid: uint256) -> (uint256, uint256, uint256, uint256, uint256):
    # field by field: loading the whole Params struct costs 18 storage reads
    join_end: uint256 = self._comps[cid].start_block + self._params[cid].join_blocks
    submit_end: uint256 = join_end + self._params[cid].submit_blocks
    reveal_end: uint256 = submit_end + self._params[cid].reveal_blocks
    score_commit_end: uint256 = reveal_end + self._params[cid].score_commit_blocks
    return join_end, submit_end, reveal_end, score_commit_end, score_commit_end + self._params[cid].score_reveal_blocks


@internal
@view
def _phase(cid: uint256) -> uint8:
    if self._comps[cid].creator == empty(address):
        return PHASE_NONE
    if self._comps[cid].finalised:
        return PHASE_FINALISED
    join_end: uint256 = 0
    submit_end: uint256 = 0
    reveal_end: uint256 = 0
    score_commit_end: uint256 = 0
    score_reveal_end: uint256 = 0
    join_end, submit_end, reveal_end, score_commit_end, score_reveal_end = self._ends(cid)
    if block.number < join_end:
        return PHASE_JOIN
    if block.number < submit_end:
        return PHASE_SUBMIT
    if block.number < reveal_end:
        return PHASE_REVEAL
    if block.number < score_commit_end:
        return PHASE_SCORE_COMMIT
    if block.number < score_reveal_end:
        return PHASE_SCORE_REVEAL
    return PHASE_CLOSED


@internal
@view
def _require_phase(cid: uint256, phase: uint8):
    actual: uint8 = self._phase(cid)
    assert actual != PHASE_NONE, "no such competition"
    assert actual == phase, "wrong phase"


@internal
@view
def _computed_seed(cid: uint256) -> bytes32:
    """keccak(blockhash(join_end) || competition): empty while that hash is unreadable"""
    join_end: uint256 = self._comps[cid].start_block + self._params[cid].join_blocks
    if block.number <= join_end or block.number - join_end > 256:
        return empty(bytes32)
    return keccak256(concat(blockhash(join_end), convert(cid, bytes32)))


@internal
@view
def _threshold(cid: uint256, who: address) -> uint256:
    """Elected iff draw < threshold: probability min(1, expected * capped stake / total)"""
    total: uint256 = self._comps[cid].validator_weight
    if self._members[cid][who].role != ROLE_VALIDATOR or total == 0:
        return 0
    return min(ONE, self._weight(cid, who) * self._params[cid].expected_validators * ONE // total)


@internal
@view
def _weight(cid: uint256, who: address) -> uint256:
    """A validator's weight: own stake and its pool's backing, capped together"""
    return min(self._members[cid][who].stake + self.backing[cid][who], self._params[cid].validator_cap)


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
@pure
def _weighted_median(values: DynArray[uint256, MAX_ELECTED], weights: DynArray[uint256, MAX_ELECTED], total: uint256) -> uint256:
    """The least value whose cumulative weight (values sorted ascending) reaches half the total"""
    # no sort: each candidate smaller than the best so far sums the weight at or below it
    best: uint256 = max_value(uint256)
    for candidate: uint256 in values:
        if candidate >= best:
            continue
        below: uint256 = 0
        for k: uint256 in range(MAX_ELECTED):
            if k >= len(values):
                break
            if values[k] <= candidate:
                below += weights[k]
        if 2 * below >= total:
            best = candidate
    return best


@internal
@pure
def _closeness(score: uint256, median: uint256, tolerance_bps: uint256) -> uint256:
    """BPS on the median, half of it at `tolerance_bps` relative error, towards 0 beyond"""
    diff: uint256 = score - median if score >= median else median - score
    error_bps: uint256 = diff * BPS // max(median, 1)
    return BPS * tolerance_bps // (tolerance_bps + error_bps)


@internal
def _evict_smallest_validator(cid: uint256, newcomer_weight: uint256):
    """
    Full validator seats go to stake, not to whoever came first: a newcomer with more
    stake (own and backing) takes the seat of the smallest validator (the earliest of
    equals), whose stake is released at once. Otherwise cheap sybils joining early would
    hold every seat.
    """
    seats: DynArray[address, MAX_VALIDATORS] = self._validators[cid]
    smallest: uint256 = 0
    least: uint256 = max_value(uint256)
    for i: uint256 in range(MAX_VALIDATORS):
        held: uint256 = self._members[cid][seats[i]].stake + self.backing[cid][seats[i]]
        if held < least:
            least = held
            smallest = i
    evicted: address = seats[smallest]
    assert newcomer_weight > least, "validator seats full"
    kept: DynArray[address, MAX_VALIDATORS] = []
    for i: uint256 in range(MAX_VALIDATORS):
        if i != smallest:
            kept.append(seats[i])
    self._validators[cid] = kept  # in join order: the earliest of equals goes first
    self._comps[cid].validator_weight -= self._weight(cid, evicted)
    stake: uint256 = self._members[cid][evicted].stake
    self._unlock(cid, evicted)
    self.backing[cid][evicted] = 0
    self._members[cid][evicted] = empty(Member)
    self.claimable[evicted] += stake
    log Evicted(competition_id=cid, validator=evicted, stake=stake)


# ---------------------------------------------------------------- pools

@internal
def _settle_rewards(operator: address, holder: address):
    """Credit the holder's share of the pool's rewards since it last settled"""
    rps: uint256 = self._pools[operator].reward_per_share
    owed: uint256 = self._shares[operator][holder] * (rps - self._reward_paid[operator][holder]) // ONE
    self._reward_paid[operator][holder] = rps
    if owed > 0:
        self.claimable[holder] += owed


@internal
@view
def _commission(operator: address) -> uint256:
    if block.number >= self._pools[operator].commission_from:
        return self._pools[operator].next_commission_bps
    return self._pools[operator].commission_bps


@internal
def _lock(cid: uint256, operator: address) -> uint256:
    """Lock the pool's free stake to the operator's seat in `cid`: its backing"""
    free: uint256 = self._pools[operator].stake - self._pools[operator].locked
    if free > 0:
        self._pools[operator].locked += free
        self.backing[cid][operator] = free
    return free


@internal
def _unlock(cid: uint256, operator: address):
    backing: uint256 = self.backing[cid][operator]
    if backing > 0:  # most seats have none: spare finalise a cold read each
        self._pools[operator].locked -= backing


@internal
def _pay(cid: uint256, operator: address, reward: uint256):
    """
    The part of a reward earned by the backing, reward * backing / (stake + backing),
    goes to the pool's shares less the operator's commission; the rest to the operator
    """
    backing: uint256 = self.backing[cid][operator]
    shares: uint256 = self._pools[operator].total_shares
    to_pool: uint256 = 0
    commission: uint256 = 0
    if backing > 0 and reward > 0 and shares > 0:
        part: uint256 = reward * backing // (self._members[cid][operator].stake + backing)
        commission = part * self._commission(operator) // BPS
        to_pool = part - commission
        self._pools[operator].reward_per_share += to_pool * ONE // shares
        log PoolRewarded(operator=operator, competition_id=cid, reward=reward, commission=commission, delegators=to_pool)
    self.claimable[operator] += reward - to_pool


# ---------------------------------------------------------------- creator

@external
def create(p: Params) -> uint256:
    """@notice open a competition; pulls the reward pool and the bond from the creator"""
    assert p.eval_commitment != empty(bytes32), "empty eval commitment"
    assert p.base_model_hash != empty(bytes32), "empty base model hash"
    assert p.join_blocks >= 1 and p.join_blocks <= MAX_PHASE_BLOCKS, "join_blocks"
    assert p.submit_blocks >= 2 and p.submit_blocks <= MAX_SUBMIT_BLOCKS, "submit_blocks"
    assert p.reveal_blocks >= MIN_REVEAL_BLOCKS and p.reveal_blocks <= MAX_PHASE_BLOCKS, "reveal_blocks"
    assert p.score_commit_blocks >= 1 and p.score_commit_blocks <= MAX_PHASE_BLOCKS, "score_commit_blocks"
    assert p.score_reveal_blocks >= MIN_REVEAL_BLOCKS and p.score_reveal_blocks <= MAX_PHASE_BLOCKS, "score_reveal_blocks"
    assert p.reward_pool > 0, "empty reward pool"
    assert p.creator_bond > 0, "no creator bond"
    assert p.trainer_stake > 0 and p.validator_stake > 0, "zero stake"
    assert p.validator_cap >= p.validator_stake, "validator cap below the minimum stake"
    assert p.expected_validators >= 1 and p.expected_validators <= MAX_ELECTED, "expected_validators"
    assert p.trainer_share_bps <= BPS, "trainer_share_bps"
    assert p.rank_decay_bps >= 1 and p.rank_decay_bps <= BPS, "rank_decay_bps"
    assert p.tolerance_bps >= 1 and p.tolerance_bps <= BPS, "tolerance_bps"
    assert p.slash_bps <= MAX_SLASH_BPS, "slash_bps"
    cid: uint256 = self.competition_count + 1
    self.competition_count = cid
    self._params[cid] = p
    self._comps[cid].creator = msg.sender
    self._comps[cid].start_block = block.number
    self._pull(msg.sender, p.reward_pool + p.creator_bond)
    log CompetitionCreated(
        competition_id=cid,
        creator=msg.sender,
        recipe_hash=p.recipe_hash,
        base_model_hash=p.base_model_hash,
        eval_commitment=p.eval_commitment,
        reward_pool=p.reward_pool,
        creator_bond=p.creator_bond,
    )
    return cid


@external
def publish_eval(cid: uint256, eval_set_hash: bytes32, salt: bytes32):
    """@notice open the evaluation-set commitment once every score is committed"""
    self._require_phase(cid, PHASE_SCORE_REVEAL)
    assert msg.sender == self._comps[cid].creator, "not the creator"
    assert self._comps[cid].eval_set_hash == empty(bytes32), "already published"
    assert eval_set_hash != empty(bytes32), "empty eval set hash"
    assert keccak256(abi_encode(eval_set_hash, salt)) == self._params[cid].eval_commitment, "does not match the commitment"
    self._comps[cid].eval_set_hash = eval_set_hash
    log EvalPublished(competition_id=cid, eval_set_hash=eval_set_hash, salt=salt)


# ---------------------------------------------------------------- members

@external
def join(cid: uint256, role: uint8, stake: uint256, vrf_pk: bytes32):
    """@notice stake (pulled from the caller) as a trainer or a validator: one role each"""
    self._require_phase(cid, PHASE_JOIN)
    assert msg.sender != self._comps[cid].creator, "the creator cannot join"
    assert self._members[cid][msg.sender].role == ROLE_NONE, "already joined"
    if role == ROLE_TRAINER:
        assert stake >= self._params[cid].trainer_stake, "stake below the minimum"
        assert len(self._trainers[cid]) < MAX_TRAINERS, "trainer seats full"
        self._trainers[cid].append(msg.sender)
    else:
        assert role == ROLE_VALIDATOR, "unknown role"
        assert stake >= self._params[cid].validator_stake, "stake below the minimum"
        assert vrf_pk != empty(bytes32), "empty vrf key"
        if len(self._validators[cid]) == MAX_VALIDATORS:
            self._evict_smallest_validator(cid, stake + self._pools[msg.sender].stake - self._pools[msg.sender].locked)
        self._validators[cid].append(msg.sender)
        self._members[cid][msg.sender].vrf_pk = vrf_pk
    self._members[cid][msg.sender].role = role
    self._members[cid][msg.sender].stake = stake
    self._lock(cid, msg.sender)
    if role == ROLE_VALIDATOR:
        self._comps[cid].validator_weight += self._weight(cid, msg.sender)
    self._pull(msg.sender, stake)
    log Joined(competition_id=cid, member=msg.sender, role=role, stake=stake, vrf_pk=vrf_pk)


@external
def commit_submission(cid: uint256, digest: bytes32) -> uint256:
    """
    @notice a trainer commits keccak256(abi_encode(cid, trainer, model_hash, salt)) once;
            returns its index (commit order, which breaks ties)
    """
    phase: uint8 = self._phase(cid)
    assert phase != PHASE_NONE, "no such competition"
    assert phase == PHASE_JOIN or phase == PHASE_SUBMIT, "wrong phase"
    assert self._members[cid][msg.sender].role == ROLE_TRAINER, "not a trainer"
    assert self._sub_slot[cid][msg.sender] == 0, "already committed"
    assert digest != empty(bytes32), "empty digest"
    index: uint256 = len(self._subs[cid])
    self._subs[cid].append(Submission(
        trainer=msg.sender, digest=digest, model_hash=empty(bytes32), revealed=False,
        duplicate=False, median=0, rank=0,
    ))
    self._sub_slot[cid][msg.sender] = index + 1
    log SubmissionCommitted(competition_id=cid, trainer=msg.sender, index=index, digest=digest)
    return index


@external
def elect(cid: uint256, vrf_proof: Bytes[VRF_PROOF_LEN]):
    """@notice a validator proves with its ECVRF key on the seed that it is elected"""
    self._require_phase(cid, PHASE_SUBMIT)
    m: Member = self._members[cid][msg.sender]
    assert m.role == ROLE_VALIDATOR, "not a validator"
    assert not m.elected, "already elected"
    assert len(vrf_proof) == VRF_PROOF_LEN, "vrf proof length"
    seed: bytes32 = self._comps[cid].seed
    if seed == empty(bytes32):
        seed = self._computed_seed(cid)
        assert seed != empty(bytes32), "seed not yet readable"
        self._comps[cid].seed = seed
    x: uint256 = self._draw(m.vrf_pk, vrf_proof, seed)
    assert x < self._threshold(cid, msg.sender), "not elected"
    assert len(self._elected[cid]) < MAX_ELECTED, "validator seats full"
    self._members[cid][msg.sender].elected = True
    self._elected[cid].append(msg.sender)
    log Elected(competition_id=cid, validator=msg.sender, seed=seed, draw=x)


@external
def reveal_submission(cid: uint256, model_hash: bytes32, salt: bytes32):
    """@notice open a submission; of identical model hashes only the earliest commit counts"""
    self._require_phase(cid, PHASE_REVEAL)
    slot: uint256 = self._sub_slot[cid][msg.sender]
    assert slot != 0, "no commitment"
    index: uint256 = slot - 1
    sub: Submission = self._subs[cid][index]
    assert not sub.revealed, "already revealed"
    assert model_hash != empty(bytes32), "empty model hash"
    assert keccak256(abi_encode(cid, msg.sender, model_hash, salt)) == sub.digest, "reveal does not match commitment"
    self._subs[cid][index].revealed = True
    self._subs[cid][index].model_hash = model_hash
    log SubmissionRevealed(competition_id=cid, trainer=msg.sender, index=index, model_hash=model_hash, salt=salt)
    first: uint256 = self._first_of_model[cid][model_hash]
    if first == 0:
        self._first_of_model[cid][model_hash] = slot
    elif first < slot:
        self._subs[cid][index].duplicate = True
        log Duplicate(competition_id=cid, index=index, original=first - 1)
    else:
        # revealed after a later commit of the same hash: that one is the copy
        self._subs[cid][first - 1].duplicate = True
        self._first_of_model[cid][model_hash] = slot
        log Duplicate(competition_id=cid, index=first - 1, original=index)


@external
def commit_scores(cid: uint256, digest: bytes32):
    """@notice an elected validator commits keccak256(abi_encode(cid, validator, scores, salt))"""
    self._require_phase(cid, PHASE_SCORE_COMMIT)
    m: Member = self._members[cid][msg.sender]
    assert m.elected, "not an elected validator"
    assert m.score_digest == empty(bytes32), "already committed"
    assert digest != empty(bytes32), "empty digest"
    self._members[cid][msg.sender].score_digest = digest
    log ScoresCommitted(competition_id=cid, validator=msg.sender, digest=digest)


@external
def reveal_scores(cid: uint256, scores: DynArray[uint256, MAX_TRAINERS], salt: bytes32):
    """
    @notice open a score vector: one score per submission in commit order (higher is
            better; those of unrevealed or duplicate submissions are ignored)
    """
    self._require_phase(cid, PHASE_SCORE_REVEAL)
    m: Member = self._members[cid][msg.sender]
    assert m.score_digest != empty(bytes32), "no commitment"
    assert not m.revealed, "already revealed"
    assert keccak256(abi_encode(cid, msg.sender, scores, salt)) == m.score_digest, "reveal does not match commitment"
    assert len(scores) == len(self._subs[cid]), "one score per submission"
    for s: uint256 in scores:
        assert s <= MAX_SCORE, "score too large"
    self._scores[cid][msg.sender] = scores
    self._members[cid][msg.sender].revealed = True
    log ScoresRevealed(competition_id=cid, validator=msg.sender, scores=scores, salt=salt)


# ---------------------------------------------------------------- settlement

@internal
@view
def _rank(cid: uint256, voters: DynArray[address, MAX_ELECTED], weights: DynArray[uint256, MAX_ELECTED], total: uint256) -> (DynArray[uint256, MAX_TRAINERS], DynArray[uint256, MAX_TRAINERS]):
    """
    The median of every submission (by index; 0 for those that do not count) and the
    indices of those that count, best first (ties: the earlier commit)
    """
    n: uint256 = len(self._subs[cid])
    medians: DynArray[uint256, MAX_TRAINERS] = []
    order: DynArray[uint256, MAX_TRAINERS] = []
    for i: uint256 in range(MAX_TRAINERS):
        if i >= n:
            break
        medians.append(0)
        if total == 0 or not self._subs[cid][i].revealed or self._subs[cid][i].duplicate:
            continue
        values: DynArray[uint256, MAX_ELECTED] = []
        for v: address in voters:
            values.append(self._scores[cid][v][i])
        median: uint256 = self._weighted_median(values, weights, total)
        medians[i] = median
        # insertion by (median desc, index asc): i grows, so equal medians stay in commit order
        order.append(i)
        j: uint256 = len(order) - 1
        for k: uint256 in range(MAX_TRAINERS):
            if j == 0 or medians[order[j - 1]] >= median:
                break
            order[j] = order[j - 1]
            order[j - 1] = i
            j -= 1
    return medians, order


@internal
def _pay_trainers(cid: uint256, order: DynArray[uint256, MAX_TRAINERS], medians: DynArray[uint256, MAX_TRAINERS], pool: uint256) -> (uint256, uint256):
    """
    Rank k's share is decay^k of rank 0's; only medians above 0 are ranked (validators
    score 0 a model nobody serves: withholding it must earn nothing). Returns what was
    paid and how many were ranked.
    """
    decay: uint256 = self._params[cid].rank_decay_bps
    weights: DynArray[uint256, MAX_TRAINERS] = []
    w: uint256 = ONE
    total: uint256 = 0
    for i: uint256 in order:
        if medians[i] == 0:
            break  # best first: every later one is 0 too
        weights.append(w)
        total += w
        w = w * decay // BPS
    paid: uint256 = 0
    for k: uint256 in range(MAX_TRAINERS):
        if k >= len(weights):
            break
        i: uint256 = order[k]
        reward: uint256 = pool * weights[k] // total
        trainer: address = self._subs[cid][i].trainer
        self._subs[cid][i].median = medians[i]
        self._subs[cid][i].rank = k + 1
        self._pay(cid, trainer, reward)
        paid += reward
        log Ranked(competition_id=cid, trainer=trainer, index=i, rank=k + 1, median=medians[i], reward=reward)
    return paid, len(weights)


@internal
def _pay_validators(cid: uint256, order: DynArray[uint256, MAX_TRAINERS], medians: DynArray[uint256, MAX_TRAINERS], pool: uint256, slashes: DynArray[uint256, MAX_ELECTED]) -> uint256:
    """Shares by capped stake times closeness to the medians; returns what was paid"""
    p: Params = self._params[cid]
    elected: DynArray[address, MAX_ELECTED] = self._elected[cid]
    closeness: DynArray[uint256, MAX_ELECTED] = []
    revealed: DynArray[bool, MAX_ELECTED] = []
    shares: DynArray[uint256, MAX_ELECTED] = []
    total: uint256 = 0
    for v: address in elected:
        c: uint256 = 0
        revealed.append(self._members[cid][v].revealed)
        if revealed[len(revealed) - 1]:
            if len(order) == 0:
                c = BPS  # nothing to score: revealing is all there was to do
            for i: uint256 in order:
                c += self._closeness(self._scores[cid][v][i], medians[i], p.tolerance_bps)
        closeness.append(c)
        share: uint256 = self._weight(cid, v) * c
        shares.append(share)
        total += share
    paid: uint256 = 0
    for k: uint256 in range(MAX_ELECTED):
        if k >= len(elected):
            break
        reward: uint256 = 0
        if total > 0:
            reward = pool * shares[k] // total
        self._pay(cid, elected[k], reward)
        paid += reward
        log ValidatorSettled(
            competition_id=cid, validator=elected[k], revealed=revealed[k],
            closeness=closeness[k], reward=reward, slashed=slashes[k],
        )
    return paid


@external
def finalise(cid: uint256):
    """@notice anyone, once the score reveal is over: medians, ranks, payouts, stakes released"""
    self._require_phase(cid, PHASE_CLOSED)
    self._comps[cid].finalised = True
    p: Params = self._params[cid]
    c: Competition = self._comps[cid]

    # stakes back, less the slash of each elected validator that did not reveal
    # and every pool's backing unlocked, less the same slash
    for t: address in self._trainers[cid]:
        self.claimable[t] += self._members[cid][t].stake
        self._unlock(cid, t)
    for v: address in self._validators[cid]:
        self._unlock(cid, v)
        if not self._members[cid][v].elected:
            self.claimable[v] += self._members[cid][v].stake
    slashed: uint256 = 0
    slashes: DynArray[uint256, MAX_ELECTED] = []
    voters: DynArray[address, MAX_ELECTED] = []
    weights: DynArray[uint256, MAX_ELECTED] = []
    revealed_weight: uint256 = 0
    for v: address in self._elected[cid]:
        m: Member = self._members[cid][v]
        cut: uint256 = 0
        if m.revealed:
            voters.append(v)
            weights.append(self._weight(cid, v))
            revealed_weight += self._weight(cid, v)
        else:
            cut = m.stake * p.slash_bps // BPS
            pool_cut: uint256 = self.backing[cid][v] * p.slash_bps // BPS
            if pool_cut > 0:
                self._pools[v].stake -= pool_cut
                slashed += pool_cut
                log PoolSlashed(operator=v, competition_id=cid, amount=pool_cut)
        slashes.append(cut)
        slashed += cut
        self.claimable[v] += m.stake - cut

    medians: DynArray[uint256, MAX_TRAINERS] = []
    order: DynArray[uint256, MAX_TRAINERS] = []
    medians, order = self._rank(cid, voters, weights, revealed_weight)
    trainer_pool: uint256 = p.reward_pool * p.trainer_share_bps // BPS
    validator_pool: uint256 = 0
    burned: uint256 = 0
    if revealed_weight == 0:
        burned = slashed  # nobody revealed: no one to hand the slashes to
    else:
        validator_pool = p.reward_pool - trainer_pool + slashed
    paid: uint256 = 0
    ranked: uint256 = 0
    if len(order) > 0:
        paid, ranked = self._pay_trainers(cid, order, medians, trainer_pool)
    paid += self._pay_validators(cid, order, medians, validator_pool, slashes)
    refund: uint256 = p.reward_pool + slashed - burned - paid
    if c.eval_set_hash == empty(bytes32):
        burned += p.creator_bond
    else:
        refund += p.creator_bond
    self.claimable[c.creator] += refund
    self.burned += burned
    log Finalised(competition_id=cid, ranked=ranked, revealed_weight=revealed_weight, creator_refund=refund, burned=burned)


@external
def claim() -> uint256:
    """@notice pull every released stake and reward of the caller"""
    amount: uint256 = self.claimable[msg.sender]
    assert amount > 0, "nothing to claim"
    self.claimable[msg.sender] = 0
    assert extcall token.transfer(msg.sender, amount, default_return_value=True), "transfer failed"
    log Claimed(account=msg.sender, amount=amount)
    return amount


# ---------------------------------------------------------------- delegation

@external
def delegate(operator: address, amount: uint256) -> uint256:
    """
    @notice add stake (pulled from the caller) to an operator's pool; it backs the
            operator's next seats and shares their rewards and slashes pro rata.
            Returns the shares minted.
    """
    assert amount > 0, "zero amount"
    assert operator != empty(address) and operator != msg.sender, "not an operator"
    pool: Pool = self._pools[operator]
    if pool.reward_per_share == 0:
        # never zero again: finalise then rewrites a used slot instead of filling one
        # (which costs 17k gas more a pool, at the caps too much for one transaction)
        self._pools[operator].reward_per_share = 1
    shares: uint256 = amount
    if pool.total_shares > 0:
        # a share is worth at most one token (slashes lower it, rewards are kept apart)
        # and a pool with shares keeps some stake: never zero shares, never a zero division
        shares = amount * pool.total_shares // pool.stake
    self._settle_rewards(operator, msg.sender)
    self._shares[operator][msg.sender] += shares
    self._pools[operator].total_shares = pool.total_shares + shares
    self._pools[operator].stake = pool.stake + amount
    self._pull(msg.sender, amount)
    log Delegated(operator=operator, delegator=msg.sender, amount=amount, shares=shares)
    return shares


@external
def undelegate(operator: address, shares: uint256) -> uint256:
    """
    @notice redeem shares of an operator's pool for their stake, claimable after
            UNBONDING_BLOCKS (a later undelegation restarts the wait for the whole
            amount). Only the pool's free stake can leave, not its locked backing.
            Returns the amount.
    """
    assert shares > 0, "zero shares"
    assert shares <= self._shares[operator][msg.sender], "not enough shares"
    pool: Pool = self._pools[operator]
    amount: uint256 = shares * pool.stake // pool.total_shares
    assert amount <= pool.stake - pool.locked, "stake locked in a competition"
    self._settle_rewards(operator, msg.sender)
    self._shares[operator][msg.sender] -= shares
    self._pools[operator].total_shares = pool.total_shares - shares
    self._pools[operator].stake = pool.stake - amount
    release: uint256 = block.number + UNBONDING_BLOCKS
    self._unbonding[msg.sender].amount += amount
    self._unbonding[msg.sender].release_block = release
    log Undelegated(operator=operator, delegator=msg.sender, amount=amount, shares=shares, release_block=release)
    return amount


@external
def release_unbonded() -> uint256:
    """@notice once unbonded, make the caller's undelegated stake claimable"""
    u: Unbonding = self._unbonding[msg.sender]
    assert u.amount > 0, "nothing unbonding"
    assert block.number >= u.release_block, "still unbonding"
    self._unbonding[msg.sender] = empty(Unbonding)
    self.claimable[msg.sender] += u.amount
    return u.amount


@external
def collect(operator: address):
    """@notice make the caller's share of the pool's rewards so far claimable"""
    assert self._shares[operator][msg.sender] > 0, "no shares"
    self._settle_rewards(operator, msg.sender)


@external
def set_commission(commission_bps: uint256):
    """
    @notice the caller's commission on its pool's part of its rewards, from
            COMMISSION_DELAY_BLOCKS on; at most one change per delay
    """
    assert commission_bps <= MAX_COMMISSION_BPS, "commission too high"
    from_block: uint256 = self._pools[msg.sender].commission_from
    assert from_block == 0 or block.number >= from_block, "commission change pending"
    self._pools[msg.sender].commission_bps = self._commission(msg.sender)
    self._pools[msg.sender].next_commission_bps = commission_bps
    self._pools[msg.sender].commission_from = block.number + COMMISSION_DELAY_BLOCKS
    log CommissionChanged(operator=msg.sender, commission_bps=commission_bps, from_block=block.number + COMMISSION_DELAY_BLOCKS)


# ---------------------------------------------------------------- views

@external
@view
def get_params(cid: uint256) -> Params:
    return self._params[cid]


@external
@view
def get_competition(cid: uint256) -> Competition:
    return self._comps[cid]


@external
@view
def get_member(cid: uint256, who: address) -> Member:
    return self._members[cid][who]


@external
@view
def get_trainers(cid: uint256) -> DynArray[address, MAX_TRAINERS]:
    return self._trainers[cid]


@external
@view
def get_validators(cid: uint256) -> DynArray[address, MAX_VALIDATORS]:
    return self._validators[cid]


@external
@view
def get_elected(cid: uint256) -> DynArray[address, MAX_ELECTED]:
    return self._elected[cid]


@external
@view
def get_submissions(cid: uint256) -> DynArray[Submission, MAX_TRAINERS]:
    return self._subs[cid]


@external
@view
def get_scores(cid: uint256, validator: address) -> DynArray[uint256, MAX_TRAINERS]:
    return self._scores[cid][validator]


@external
@view
def phase(cid: uint256) -> uint8:
    return self._phase(cid)


@external
@view
def deadlines(cid: uint256) -> (uint256, uint256, uint256, uint256, uint256):
    """@notice the first block after each phase: join, submit, reveal, score commit, score reveal"""
    return self._ends(cid)


@external
@view
def seed(cid: uint256) -> bytes32:
    """@notice the election seed: fixed by the first election, else while readable, else empty"""
    seed: bytes32 = self._comps[cid].seed
    if seed == empty(bytes32):
        seed = self._computed_seed(cid)
    return seed


@external
@view
def election_threshold(cid: uint256, who: address) -> uint256:
    """@notice who is elected iff first8(beta) < this (0 = never, 2**64 = always)"""
    return self._threshold(cid, who)


@external
@view
def get_pool(operator: address) -> Pool:
    return self._pools[operator]


@external
@view
def commission(operator: address) -> uint256:
    """@notice the commission in force for a reward paid now"""
    return self._commission(operator)


@external
@view
def shares_of(operator: address, holder: address) -> uint256:
    return self._shares[operator][holder]


@external
@view
def pending_rewards(operator: address, holder: address) -> uint256:
    """@notice what collect() would make claimable now"""
    rps: uint256 = self._pools[operator].reward_per_share
    return self._shares[operator][holder] * (rps - self._reward_paid[operator][holder]) // ONE


@external
@view
def get_unbonding(holder: address) -> Unbonding:
    return self._unbonding[holder]
