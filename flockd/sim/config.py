"""What a simulation is asked to run (SimConfig) and what it reports (SimResult)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from flockd.fl.aggregate import BadRule, Rule
from flockd.fl.attacks import Behaviour
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VoteScoring, parse_vote_scoring

E18 = 10**18


@dataclass
class SimConfig:
    recipe: str = "digits-mlp"
    nodes: int = 20
    rounds: int = 10
    seed: int = 0  # data split, initial model, node keys, attacks: the whole run
    partition: str = "iid"
    vote_mode: Literal["per-proposal", "whole-round"] = "per-proposal"
    rule: str = "fedavg"  # flockd.fl.aggregate.Rule syntax
    expected_proposers: int = 4
    max_proposals: int = 16
    propose_blocks: int = 2
    commit_blocks: int = 2
    reveal_blocks: int = 8  # the registry's MIN_REVEAL_BLOCKS
    behaviours: dict[int, Behaviour] = field(default_factory=dict)  # node index -> behaviour
    recipe_config: dict[str, Any] = field(default_factory=dict)  # recipe config overrides
    score_sample: int | None = None  # at most this many validation rows per voter
    stake: int = 100 * E18  # every node's stake (the testnet's default)
    stake_unit: int = E18
    key_seed: int | None = None  # node keys (so VRF draws, block hashes); None: `seed`
    vote_scoring: VoteScoring = DEFAULT_VOTE_SCORING  # how every honest voter scores a proposal
    # The task's initial model: a random one (0), or the creator's (node 0, always honest)
    # after this many local updates on its own split: a task that starts from a model
    # someone trained (an Arena winner, a creator's own), not from chance.
    creator_steps: int = 0
    # Rows of the task's public root set (TaskSpec.root_rows; 0: none), which the
    # root-direction vote trains its reference update on.
    root_rows: int = 0

    def __post_init__(self) -> None:
        if self.nodes < 2:
            raise ValueError("a task needs at least 2 nodes")
        if self.rounds < 1:
            raise ValueError("rounds must be >= 1")
        if self.creator_steps < 0:
            raise ValueError("creator_steps must be >= 0")
        if self.vote_mode not in ("per-proposal", "whole-round"):
            raise ValueError(f"vote_mode must be per-proposal or whole-round, not {self.vote_mode!r}")
        try:
            Rule.parse(self.rule)
        except BadRule as exc:
            raise ValueError(str(exc)) from None
        for index in self.behaviours:
            if not 0 <= index < self.nodes:
                raise ValueError(f"behaviour for node {index}, but nodes are 0..{self.nodes - 1}")
        parse_vote_scoring(self.vote_scoring)
        if self.score_sample is not None and self.score_sample < 1:
            raise ValueError("score_sample must be >= 1")

    @property
    def malicious(self) -> list[int]:
        return sorted(i for i, b in self.behaviours.items() if not b.is_honest)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["behaviours"] = {str(i): str(b) for i, b in sorted(self.behaviours.items())}
        return out


@dataclass
class RoundFigures:
    round: int
    accuracy: float  # the model the chain recorded for this round, on the held-out test split
    loss: float
    seconds: float  # wall time from the round's open block to its recorded model
    proposers: list[int]  # node indices, in proposal order
    accepted: list[int]
    malicious_proposers: int
    malicious_accepted: int
    blocks: int  # from the round's open block to its finalise block
    gas_used: int  # every transaction sent for this round (decline, propose, votes, finalise, record)
    model_hash: str
    # The malicious nodes' share of the task's stake when the round's model is recorded
    # (after its settlement), read from the registry; None when no node is malicious.
    malicious_stake_share: float | None = None


@dataclass
class SimResult:
    config: dict[str, Any]
    initial_accuracy: float
    rounds: list[RoundFigures] = field(default_factory=list)
    initial_malicious_stake_share: float | None = None  # once every node joined, before round 0
    final_accuracy: float = 0.0
    final_loss: float = 0.0
    final_model_hash: str = ""  # what every node's TaskMachine finished on
    chain_model_hash: str = ""  # what record_model put on chain for the last round
    wall_seconds: float = 0.0
    blocks: int = 0  # blocks sealed while the task ran
    transactions: int = 0
    max_block_gas: int = 0  # the fullest block (a real chain's blocks hold 30M)
    reverted: int = 0  # transactions that reverted (late record_model attestations, mostly)
    refused_events: int = 0  # events a machine refused (RoundError): 0 in a healthy run
    # Each node's stake in the task's pool after the last settlement (node index -> wei;
    # every node joined with SimConfig.stake): who the slashing and the rewards moved.
    final_stakes: dict[int, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)
