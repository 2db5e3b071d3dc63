"""What every participant of a task must agree on off chain, pinned on chain by its hash.

The registry stores the recipe's name and `recipe_hash`; flockd sets that hash to
keccak256 of the canonical JSON of the whole TaskSpec (recipe config, aggregation rule,
data partition, voting tolerance), so a node that joins with different settings is
refused before it can disagree with everyone else's model bytes.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

from eth_utils import keccak

from flockd.fl.aggregate import Rule
from flockd.fl.data import MAX_ROOT_ROWS, Partition
from flockd.fl.recipe import RecipeError, canonical_json, load_recipe, recipe_class
from flockd.tasks.start import check_start


class SpecError(ValueError):
    """A task spec is malformed or does not match the task's on-chain hash."""


def default_root_rows(recipe: str) -> int:
    """The root set a task of ``recipe`` gets when its creator names none (0 for a recipe
    that does not load: the spec then says why)."""
    try:
        return recipe_class(recipe).root_rows_default
    except RecipeError:
        return 0


@dataclass(frozen=True)
class TaskSpec:
    recipe: str
    config: dict[str, Any] = field(default_factory=dict)
    rule: str = "fedavg"  # aggregation rule (flockd.fl.aggregate.Rule syntax)
    partition: str = "iid"  # iid | dirichlet:ALPHA (how the bundled data is split across nodes)
    num_nodes: int = 1  # the bundled data is split into this many parts
    seed: int = 0  # data split and initial model
    max_accuracy_drop: float = 0.10  # a voter rejects a delta costing more validation accuracy
    # An Arena competition whose winning model is round 0's base (docs/arena.md "Hand-off");
    # None: the recipe's model built from `seed`. Left out of the canonical JSON when None,
    # so the hash of every spec without one stays what it was.
    competition: int | None = None
    # Where the initial model comes from when not the recipe's (flockd.tasks.start): {} or
    # {"model_hash": "0x…", ...where it was listed}. Left out of the hash while empty.
    start: dict[str, Any] = field(default_factory=dict)
    # Rows of the public root set the `root-direction` vote trains on (flockd.fl.data
    # root_sample; 0: none). Left out of the hash while 0.
    root_rows: int = 0

    def __post_init__(self) -> None:
        try:
            load_recipe(self.recipe, self.config)
            Rule.parse(self.rule)
            Partition.parse(self.partition)
        except Exception as exc:
            raise SpecError(f"bad task spec: {exc}") from None
        if not 1 <= self.num_nodes <= 1024:
            raise SpecError("num_nodes must be in [1, 1024]")
        if not 0.0 <= self.max_accuracy_drop <= 1.0:
            raise SpecError("max_accuracy_drop must be in [0, 1]")
        if self.competition is not None and not (type(self.competition) is int and 1 <= self.competition < 2**64):
            raise SpecError("competition must be an Arena competition id in [1, 2**64)")
        check_start(self.start)
        if not (type(self.root_rows) is int and 0 <= self.root_rows <= MAX_ROOT_ROWS):
            raise SpecError(f"root_rows must be an integer in [0, {MAX_ROOT_ROWS}]")
        if self.start and self.competition is not None:
            raise SpecError("a task starts from a competition's winner or from `start`, not both")

    def _fields(self) -> dict[str, Any]:
        fields = asdict(self)
        if self.competition is None:
            del fields["competition"]
        if not self.start:
            del fields["start"]
        if not self.root_rows:
            del fields["root_rows"]
        return fields

    @property
    def spec_hash(self) -> bytes:
        return keccak(self.canonical())

    def canonical(self) -> bytes:
        """The canonical JSON the recipe hash covers (a spec without `competition`, `start`
        or `root_rows` hashes as before they existed)."""
        return canonical_json(self._fields())

    def to_json(self) -> dict[str, Any]:
        return json.loads(self.canonical())

    @classmethod
    def from_json(cls, data: Any) -> TaskSpec:
        if not isinstance(data, dict):
            raise SpecError("a task spec is a JSON object")
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(data) - known)
        if unknown:
            raise SpecError(f"unknown task spec keys {unknown}")
        if "recipe" not in data:
            raise SpecError("a task spec needs a recipe")
        return cls(**data)
