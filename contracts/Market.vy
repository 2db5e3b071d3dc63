# pragma version ~=0.4.3
# pragma optimize codesize
"""
@title flockd market
@notice Finished models listed for use, in one table of two kinds. A task listing
        names a finished task of the TaskRegistry; the contract reads the registry and
        accepts it only when the task is finished, the model hash is the one the
        registry recorded for the task's last round, the spec hashes to the task's
        recipe hash, and the lister is the task's creator or one of its (not withdrawn)
        participants; its lineage root is the task's initial model hash. A competition
        listing names a finalised competition of the Arena; it is accepted only when the
        model hash is the competition's rank-1 submission, the spec hashes to the
        competition's recipe hash, and the lister is the competition's creator or the
        winning trainer; its lineage root is the competition's base model hash. A
        lister unlists its own listings. Spec: protocol/spec/market.md.
"""

# Bounds on every string a listing stores (a longer one does not ABI-decode: revert).
MAX_NAME_LEN: constant(uint256) = 64
MAX_DESCRIPTION_LEN: constant(uint256) = 512
MAX_LICENCE_LEN: constant(uint256) = 64
MAX_SPEC_LEN: constant(uint256) = 2048
MAX_RECIPE_LEN: constant(uint256) = 64  # the registry's
MAX_PROPOSALS: constant(uint256) = 16  # the registry's

STATUS_FINISHED: constant(uint8) = 3  # the registry's
MAX_TRAINERS: constant(uint256) = 24  # the Arena's: at most this many submissions

KIND_TASK: constant(uint8) = 1
KIND_COMPETITION: constant(uint8) = 2


# The registry's structs, field for field (their ABI is what the calls decode).
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
    total_stake: uint256
    pool: uint256

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
    accept_stake: uint256[MAX_PROPOSALS]
    reject_stake: uint256[MAX_PROPOSALS]
    finalised: bool
    accepted_mask: uint256
    model_hash: bytes32


interface TaskRegistry:
    def get_params(task_id: uint256) -> TaskParams: view
    def get_state(task_id: uint256) -> TaskState: view
    def get_participant(task_id: uint256, who: address) -> Participant: view
    def get_round(task_id: uint256, r: uint256) -> Round: view


# The Arena's structs, field for field, as far as the calls below need them.
struct ArenaParams:
    recipe_hash: bytes32
    base_model_hash: bytes32
    eval_commitment: bytes32
    join_blocks: uint256
    submit_blocks: uint256
    reveal_blocks: uint256
    score_commit_blocks: uint256
    score_reveal_blocks: uint256
    reward_pool: uint256
    creator_bond: uint256
    trainer_stake: uint256
    validator_stake: uint256
    validator_cap: uint256
    expected_validators: uint256
    trainer_share_bps: uint256
    rank_decay_bps: uint256
    tolerance_bps: uint256
    slash_bps: uint256

struct Competition:
    creator: address
    start_block: uint256
    seed: bytes32
    eval_set_hash: bytes32
    validator_weight: uint256
    finalised: bool

struct Submission:
    trainer: address
    digest: bytes32
    model_hash: bytes32
    revealed: bool
    duplicate: bool
    median: uint256
    rank: uint256  # 1 = best; 0 = unranked


interface Arena:
    def get_params(cid: uint256) -> ArenaParams: view
    def get_competition(cid: uint256) -> Competition: view
    def get_submissions(cid: uint256) -> DynArray[Submission, MAX_TRAINERS]: view


struct Listing:
    lister: address
    kind: uint8  # KIND_TASK or KIND_COMPETITION
    task_id: uint256  # 0 for a competition listing
    competition_id: uint256  # 0 for a task listing
    model_hash: bytes32
    lineage_root: bytes32  # the task's model_init_hash, or the competition's base_model_hash
    recipe_hash: bytes32  # keccak256(spec)
    listed_block: uint256
    active: bool
    name: String[MAX_NAME_LEN]
    description: String[MAX_DESCRIPTION_LEN]
    licence: String[MAX_LICENCE_LEN]
    spec: String[MAX_SPEC_LEN]  # the task's or the competition's spec (canonical JSON): what rebuilds the model


event ModelListed:
    listing_id: indexed(uint256)
    task_id: indexed(uint256)
    lister: indexed(address)
    model_hash: bytes32
    lineage_root: bytes32
    name: String[MAX_NAME_LEN]

event WinnerListed:
    listing_id: indexed(uint256)
    competition_id: indexed(uint256)
    lister: indexed(address)
    model_hash: bytes32
    lineage_root: bytes32
    name: String[MAX_NAME_LEN]

event ModelUnlisted:
    listing_id: indexed(uint256)
    lister: indexed(address)


registry: public(immutable(TaskRegistry))
arena: public(immutable(Arena))
listing_count: public(uint256)

_listings: HashMap[uint256, Listing]
# the active listing of a task (of a competition) by a lister (0: none): one at a time
_listed: HashMap[uint256, HashMap[address, uint256]]
_winner_listed: HashMap[uint256, HashMap[address, uint256]]


@deploy
def __init__(task_registry: address, arena_contract: address):
    registry = TaskRegistry(task_registry)
    arena = Arena(arena_contract)


@external
def list_model(
    task_id: uint256,
    name: String[MAX_NAME_LEN],
    description: String[MAX_DESCRIPTION_LEN],
    model_hash: bytes32,
    licence: String[MAX_LICENCE_LEN],
    spec: String[MAX_SPEC_LEN],
) -> uint256:
    """@notice list the final model of a finished task; returns the listing id"""
    assert len(name) > 0, "empty name"
    assert model_hash != empty(bytes32), "empty model hash"
    state: TaskState = staticcall registry.get_state(task_id)
    assert state.status == STATUS_FINISHED, "task not finished"
    if msg.sender != state.creator:
        assert (staticcall registry.get_participant(task_id, msg.sender)).active, "not the creator or a participant"
    assert self._listed[task_id][msg.sender] == 0, "already listed"
    p: TaskParams = staticcall registry.get_params(task_id)
    # a task cancelled before its start is finished too, with no model recorded
    final: bytes32 = (staticcall registry.get_round(task_id, p.rounds - 1)).model_hash
    assert final != empty(bytes32), "task has no final model"
    assert model_hash == final, "not the task's final model"
    assert keccak256(spec) == p.recipe_hash, "spec does not hash to the recipe hash"
    listing_id: uint256 = self.listing_count + 1
    self.listing_count = listing_id
    self._listings[listing_id] = Listing(
        lister=msg.sender,
        kind=KIND_TASK,
        task_id=task_id,
        competition_id=0,
        model_hash=model_hash,
        lineage_root=p.model_init_hash,
        recipe_hash=p.recipe_hash,
        listed_block=block.number,
        active=True,
        name=name,
        description=description,
        licence=licence,
        spec=spec,
    )
    self._listed[task_id][msg.sender] = listing_id
    log ModelListed(
        listing_id=listing_id,
        task_id=task_id,
        lister=msg.sender,
        model_hash=model_hash,
        lineage_root=p.model_init_hash,
        name=name,
    )
    return listing_id


@external
def list_winner(
    competition_id: uint256,
    name: String[MAX_NAME_LEN],
    description: String[MAX_DESCRIPTION_LEN],
    model_hash: bytes32,
    licence: String[MAX_LICENCE_LEN],
    spec: String[MAX_SPEC_LEN],
) -> uint256:
    """@notice list the winning model of a finalised Arena competition; returns the listing id"""
    assert len(name) > 0, "empty name"
    assert model_hash != empty(bytes32), "empty model hash"
    c: Competition = staticcall arena.get_competition(competition_id)
    assert c.finalised, "competition not finalised"  # an unknown competition too
    winner: Submission = empty(Submission)
    for s: Submission in staticcall arena.get_submissions(competition_id):
        if s.rank == 1:  # ranks are unique; only counted submissions are ranked
            winner = s
            break
    assert winner.rank == 1, "competition has no winner"
    assert msg.sender == c.creator or msg.sender == winner.trainer, "not the creator or the winner"
    assert self._winner_listed[competition_id][msg.sender] == 0, "already listed"
    assert model_hash == winner.model_hash, "not the competition's winning model"
    p: ArenaParams = staticcall arena.get_params(competition_id)
    assert keccak256(spec) == p.recipe_hash, "spec does not hash to the recipe hash"
    listing_id: uint256 = self.listing_count + 1
    self.listing_count = listing_id
    self._listings[listing_id] = Listing(
        lister=msg.sender,
        kind=KIND_COMPETITION,
        task_id=0,
        competition_id=competition_id,
        model_hash=model_hash,
        lineage_root=p.base_model_hash,
        recipe_hash=p.recipe_hash,
        listed_block=block.number,
        active=True,
        name=name,
        description=description,
        licence=licence,
        spec=spec,
    )
    self._winner_listed[competition_id][msg.sender] = listing_id
    log WinnerListed(
        listing_id=listing_id,
        competition_id=competition_id,
        lister=msg.sender,
        model_hash=model_hash,
        lineage_root=p.base_model_hash,
        name=name,
    )
    return listing_id


@external
def unlist(listing_id: uint256):
    """@notice the lister withdraws its listing (it stays readable, marked inactive)"""
    lister: address = self._listings[listing_id].lister  # not the whole struct: its strings cost
    assert lister != empty(address), "no such listing"
    assert msg.sender == lister, "only the lister"
    assert self._listings[listing_id].active, "already unlisted"
    self._listings[listing_id].active = False
    if self._listings[listing_id].kind == KIND_TASK:
        self._listed[self._listings[listing_id].task_id][msg.sender] = 0
    else:
        self._winner_listed[self._listings[listing_id].competition_id][msg.sender] = 0
    log ModelUnlisted(listing_id=listing_id, lister=msg.sender)


@external
@view
def get_listing(listing_id: uint256) -> Listing:
    """@notice listing ids run 1..listing_count; an unknown id reads as all zeros"""
    return self._listings[listing_id]


@external
@view
def listed_by(task_id: uint256, lister: address) -> uint256:
    """@notice the lister's active listing of the task, 0 if none"""
    return self._listed[task_id][lister]


@external
@view
def winner_listed_by(competition_id: uint256, lister: address) -> uint256:
    """@notice the lister's active listing of the competition's winner, 0 if none"""
    return self._winner_listed[competition_id][lister]
