"""The systems `scripts/bench attack` compares, and one federation of any of them: plain
FedAvg (`flockd.fl.simulate`), flockd on an in-process chain (`flockd.sim`) and Flower
(`flockd.bench.flower`), each reporting the same per-round record."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, TypeAlias

from flockd.fl.vote_scoring import DEFAULT_ROOT_ROWS, DEFAULT_VOTE_SCORING

if TYPE_CHECKING:
    from flockd.fl.attacks import Behaviour

SYSTEMS: dict[str, str] = {
    "fedavg": "plain FedAvg, no defence (everyone trains, no vote)",
    "flockd-whole-round": "flockd, FLock's whole-round vote",
    "flockd-per-proposal": "flockd, per-proposal vote",
    "flockd-local-model-vote": "flockd, per-proposal vote (`local-model`)",
    "flockd-robust": "flockd, per-proposal vote + robust rule",
    "flower-fedavg": "Flower FedAvg",
    "flower-multi-krum": "Flower Multi-Krum",
}
FLOCKD_SYSTEMS = ("flockd-whole-round", "flockd-per-proposal", "flockd-local-model-vote", "flockd-robust")
# A system that fixes how its honest voters score, whatever --vote-scoring says: the
# own-model vote beside the default, on the same seeds (issue 12's comparison).
FIXED_SCORING = {"flockd-local-model-vote": "local-model"}

FLOWER_SYSTEMS = ("flower-fedavg", "flower-multi-krum")
# The systems of the per-attack table.
PER_ATTACK_SYSTEMS = ("fedavg", "flockd-per-proposal", "flower-fedavg", "flower-multi-krum")
TARGET = 0.95  # "time to 95%" threshold


def scoring_of(meta_or_record: dict[str, Any]) -> str:
    """The vote scoring a run's meta or record names; runs from before the option scored
    by `local-model`, the only vote there was."""
    return str(meta_or_record.get("vote_scoring", "local-model"))


def system_label(meta: dict[str, Any], system: str) -> str:
    """A system's name in the tables; a flockd system whose voters did not score by the
    default says how they did."""
    scoring = scoring_of(meta)
    if system in FLOCKD_SYSTEMS and system not in FIXED_SCORING and scoring != DEFAULT_VOTE_SCORING:
        return f"{SYSTEMS[system]} (`{scoring}`)"
    return SYSTEMS[system]


@dataclass(frozen=True)
class Job:
    system: str
    attack: str
    fraction: float
    seed: int
    nodes: int
    rounds: int
    proposers: int  # expected proposers per round (flockd systems)
    robust_rule: str
    partition: str = "iid"  # how the data is split across nodes (flockd.fl.data.Partition)
    vote_scoring: str = DEFAULT_VOTE_SCORING  # flockd systems: how honest voters score (fl.score.VoteScoring)
    creator_steps: int = 0  # flockd systems: start from the creator's model (SimConfig.creator_steps)
    root_rows: int = DEFAULT_ROOT_ROWS  # flockd systems on a root vote: the task's root set (SimConfig.root_rows)

    @property
    def cost(self) -> float:
        """Rough relative run time, to start the slow runs first."""
        per_round = {"fedavg": 0.15, "flower-fedavg": 0.35, "flower-multi-krum": 0.4}
        return self.rounds * per_round.get(self.system, 3.0) * self.nodes / 20


@dataclass
class RoundLog:
    """Each round's record and when its global model existed, from the federation's launch."""

    started: float = field(default_factory=time.perf_counter)
    stamps: list[float] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)

    def mark(self, row: dict[str, Any]) -> None:
        self.stamps.append(time.perf_counter() - self.started)
        self.rounds.append(row)


# A system's runner: one federation, logging its rounds; returns the initial accuracy and
# the system's own extra fields of the record.
Runner: TypeAlias = "Callable[[Job, dict[int, Behaviour], RoundLog], tuple[float, dict[str, Any]]]"


def run_plain_fedavg(
    job: Job, behaviours: dict[int, Behaviour], log: RoundLog
) -> tuple[float, dict[str, Any]]:
    from flockd.fl.codec import DeltaOutOfBounds, NonFiniteDelta
    from flockd.fl.data import DataSpec
    from flockd.fl.recipe import load_recipe
    from flockd.fl.simulate import RoundFigures as PlainRound
    from flockd.fl.simulate import simulate

    def plain(f: PlainRound) -> None:
        log.mark({"accuracy": f.accuracy, "loss": f.loss, "seconds": f.seconds})

    recipe = load_recipe("digits-mlp")
    extra: dict[str, Any] = {}
    try:
        result = simulate(
            recipe,
            nodes=job.nodes,
            rounds=job.rounds,
            seed=job.seed,
            partition=job.partition,
            behaviours=behaviours,
            on_round=plain,
        )
        initial = result.initial["accuracy"]
    except (NonFiniteDelta, DeltaOutOfBounds):
        # The global model blew up (huge or inf weights), so the next deltas are out of
        # bounds or NaN and the codec refuses them: the run cannot go on. Keep its rounds.
        extra = {"diverged_round": len(log.rounds) + 1}
        test = recipe.load_test(DataSpec(0, job.nodes, job.partition, job.seed))
        initial = recipe.evaluate(recipe.build_model(job.seed), test)["accuracy"]
        if not log.rounds:
            raise
    return initial, extra


def run_flockd(
    job: Job, behaviours: dict[int, Behaviour], log: RoundLog
) -> tuple[float, dict[str, Any]]:
    from flockd.fl.vote_scoring import parse_vote_scoring
    from flockd.sim import RoundFigures as SimRound
    from flockd.sim import SimConfig, run_simulation

    def on_chain(f: SimRound) -> None:
        log.mark(
            {
                "accuracy": f.accuracy,
                "loss": f.loss,
                "seconds": f.seconds,
                "proposers": f.proposers,
                "accepted": f.accepted,
                "malicious_proposers": f.malicious_proposers,
                "malicious_accepted": f.malicious_accepted,
                "blocks": f.blocks,
                "gas_used": f.gas_used,
                "malicious_stake_share": f.malicious_stake_share,
            }
        )

    cfg = SimConfig(
        nodes=job.nodes,
        rounds=job.rounds,
        seed=job.seed,
        partition=job.partition,
        vote_mode="whole-round" if job.system == "flockd-whole-round" else "per-proposal",
        rule=job.robust_rule if job.system == "flockd-robust" else "fedavg",
        expected_proposers=job.proposers,
        behaviours=behaviours,
        vote_scoring=parse_vote_scoring(job.vote_scoring),
        creator_steps=job.creator_steps,
        root_rows=job.root_rows,
    )
    sim = run_simulation(cfg, on_round=on_chain)
    return sim.initial_accuracy, {
        "blocks": sim.blocks,
        "transactions": sim.transactions,
        "reverted": sim.reverted,
        "model_hash": sim.final_model_hash,
        "initial_malicious_stake_share": sim.initial_malicious_stake_share,
        "final_stakes": {str(i): str(stake) for i, stake in sorted(sim.final_stakes.items())},  # wei
    }


def run_flower_system(
    job: Job, behaviours: dict[int, Behaviour], log: RoundLog
) -> tuple[float, dict[str, Any]]:
    from flockd.bench.flower import FlowerRound, run_flower

    def on_flower(f: FlowerRound) -> None:
        log.mark({"accuracy": f.accuracy, "loss": f.loss, "seconds": f.seconds})

    run = run_flower(
        strategy=job.system.removeprefix("flower-"),
        nodes=job.nodes,
        rounds=job.rounds,
        seed=job.seed,
        behaviours=behaviours,
        partition=job.partition,
        on_round=on_flower,
    )
    return run.initial_accuracy, {
        "flwr_version": run.flwr_version,
        "connect_seconds": run.setup_seconds,
    }


def runner_for(system: str) -> Runner:
    if system == "fedavg":
        return run_plain_fedavg
    if system in FLOCKD_SYSTEMS:
        return run_flockd
    if system in FLOWER_SYSTEMS:
        return run_flower_system
    raise ValueError(f"unknown system {system!r}")


def run_job(job: Job) -> dict[str, Any]:
    """One federation; returns a JSON-able record (runs in a pool worker)."""
    from flockd.fl.attacks import assign_behaviours
    from flockd.fl.recipe import limit_torch_threads

    limit_torch_threads(1)
    behaviours = assign_behaviours(job.nodes, job.fraction, job.attack, job.seed)
    log = RoundLog()
    initial, extra = runner_for(job.system)(job, behaviours, log)
    wall = time.perf_counter() - log.started
    stamps, rounds = log.stamps, log.rounds
    reached = next((i for i, r in enumerate(rounds) if r["accuracy"] >= TARGET), None)
    fields = asdict(job)
    if not job.root_rows:  # records read as they did before the option
        del fields["root_rows"]
    return {
        **fields,
        "malicious": sorted(behaviours),
        "initial_accuracy": initial,
        "final_accuracy": rounds[-1]["accuracy"],
        "wall_seconds": wall,
        # Wall time from launching the federation (chain / gRPC server / data set-up
        # included) to each round's global model existing.
        "model_at": stamps,
        "first_model_seconds": stamps[0],
        "seconds_per_round": (stamps[-1] - stamps[0]) / (len(stamps) - 1)
        if len(stamps) > 1
        else stamps[0],
        "seconds_to_target": None if reached is None else stamps[reached],
        "rounds_to_target": None if reached is None else reached + 1,
        "rounds": rounds,
        **extra,
    }


def worker_init(systems: Sequence[str]) -> None:
    """Import everything a run needs up front, so no run's timing includes a cold start of
    torch, py-evm or flwr in a fresh worker."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import flockd.fl.simulate  # noqa: F401 - torch, the FL core

    if any(s in FLOCKD_SYSTEMS for s in systems):
        import flockd.sim  # noqa: F401 - py-evm, the contracts
    if any(s in FLOWER_SYSTEMS for s in systems):
        from flockd.bench.flower import flower_available

        flower_available()
