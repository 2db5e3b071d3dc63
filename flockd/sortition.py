"""Round seed and stake-weighted sortition, in exact integers.

The rule is protocol/spec/sortition-algorithm.md to the bit: the task contract evaluates the
same proposer test (`x >= threshold`) in Vyper, so every floor here is part of consensus,
and floats must never creep in. Each of the W stake units is worth p = expected_proposers / W;
a node holding w units is a proposer with probability min(1, w * p), i.e. when its draw
x / 2**64 is at least 1 - min(1, w * p). The chance is linear in stake, so the expected
number of proposers is expected_proposers (while no node is certain) and splitting a stake
over several keys earns no more proposals than holding it whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from eth_utils import keccak

from flockd import vrf

ONE = 1 << 64  # fixed point: a fraction f is the integer f * 2**64
_UINT256_LIMIT = 1 << 256


class SortitionError(ValueError):
    """A sortition or seed input was rejected."""


class InvalidSeedInput(SortitionError):
    """The block hash, task id or round number cannot form a round seed."""


class InvalidStakes(SortitionError):
    """Stake figures that are negative, too large for uint256, or have a zero unit."""


class InvalidOutput(SortitionError):
    """A VRF output that is not 64 bytes."""


class Role(enum.Enum):
    PROPOSER = "proposer"
    VOTER = "voter"


def _check_uint256(name: str, value: int, error: type[SortitionError]) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _UINT256_LIMIT:
        raise error(f"{name} must be an integer in [0, 2**256), got {value!r}")


def round_seed(block_hash: bytes, task_id: int, round_number: int) -> bytes:
    """keccak256(blockhash(B_r) || uint256(task_id) || uint256(r)): the VRF input alpha."""
    if not isinstance(block_hash, bytes) or len(block_hash) != 32:
        raise InvalidSeedInput("block hash must be 32 bytes")
    _check_uint256("task_id", task_id, InvalidSeedInput)
    _check_uint256("round", round_number, InvalidSeedInput)
    return keccak(block_hash + task_id.to_bytes(32, "big") + round_number.to_bytes(32, "big"))


def draw(beta: bytes) -> int:
    """The node's draw x: the first 8 bytes of beta, big-endian, a fraction x / 2**64."""
    if not isinstance(beta, bytes) or len(beta) != vrf.OUTPUT_BYTES:
        raise InvalidOutput(f"VRF output must be {vrf.OUTPUT_BYTES} bytes")
    return int.from_bytes(beta[:8], "big")


@dataclass(frozen=True)
class Stakes:
    """One node's standing in a task round: what sortition needs besides the draw."""

    stake: int
    total_stake: int
    stake_unit: int
    expected_proposers: int

    def __post_init__(self) -> None:
        for name in ("stake", "total_stake", "stake_unit", "expected_proposers"):
            _check_uint256(name, getattr(self, name), InvalidStakes)
        if self.stake_unit == 0:
            raise InvalidStakes("stake_unit must be positive")

    @property
    def units(self) -> int:
        return self.stake // self.stake_unit

    @property
    def total_units(self) -> int:
        return self.total_stake // self.stake_unit

    @property
    def unit_probability(self) -> int:
        """p, the chance that one stake unit is drawn, floored to 64.64 fixed point."""
        if self.total_units == 0:
            return 0
        return min(ONE, self.expected_proposers * ONE // self.total_units)

    @property
    def chance(self) -> int:
        """min(1, w * p), the node's chance of being drawn, in 64.64 fixed point."""
        return min(ONE, self.units * self.unit_probability)

    @property
    def threshold(self) -> int:
        """A proposer iff x >= this; ONE (unreachable) when the node has no chance at all."""
        return ONE - self.chance

    def elects(self, x: int) -> bool:
        """Whether the draw x makes the node a proposer (it proposes once a round at most)."""
        if not 0 <= x < ONE:
            raise InvalidOutput("draw must be in [0, 2**64)")
        return x >= self.threshold


@dataclass(frozen=True)
class Election:
    """The outcome of one node's draw in one round, with the proof anyone can check."""

    proof: bytes  # pi, 80 bytes
    output: bytes  # beta, 64 bytes
    elected: bool  # a proposer this round

    @property
    def role(self) -> Role:
        return Role.PROPOSER if self.elected else Role.VOTER


def _check_seed(seed: bytes) -> None:
    # The contract hands the precompile exactly 32 bytes of alpha; a longer or shorter
    # input would verify off chain and fail on chain.
    if not isinstance(seed, bytes) or len(seed) != 32:
        raise InvalidSeedInput("round seed must be 32 bytes")


def _decide(proof: bytes, output: bytes, stakes: Stakes) -> Election:
    return Election(proof=proof, output=output, elected=stakes.elects(draw(output)))


def elect(vrf_secret: bytes, seed: bytes, stakes: Stakes) -> Election:
    """This node's own draw: prove on the round seed, then apply the sortition rule."""
    _check_seed(seed)
    proof = vrf.prove(vrf_secret, seed)
    return _decide(proof, vrf.proof_to_hash(proof), stakes)


def check_election(vrf_public_key: bytes, seed: bytes, proof: bytes, stakes: Stakes) -> Election:
    """Another node's claimed draw, verified (raises a vrf.VRFError on a bad proof)."""
    _check_seed(seed)
    return _decide(proof, vrf.verify(vrf_public_key, seed, proof), stakes)
