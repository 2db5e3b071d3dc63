"""task_*, round_* and model_* methods: learning tasks on this node."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import trio

from flockd.arena.handoff import HandoffError
from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractRevert
from flockd.config import PolicySection
from flockd.rpc.errors import RPCError
from flockd.rpc.round_view import current_round_view
from flockd.tasks.policy import PolicyError, check_join
from flockd.tasks.service import TaskError, TaskService
from flockd.tasks.spec import SpecError, TaskSpec, default_root_rows
from flockd.tasks.verify import verify_lineage

TASK_ERROR = -32020
E18 = 10**18


class _TaskErrors:
    """Maps the task layer's errors onto JSON-RPC errors with a message that says why."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if isinstance(exc, PolicyError):
            raise RPCError(TASK_ERROR, f"not joining: {exc}") from None
        if isinstance(exc, SpecError):
            raise RPCError(-32602, str(exc)) from None
        if isinstance(exc, ContractRevert):
            raise RPCError(TASK_ERROR, f"the registry refused: {exc.reason}") from None
        if isinstance(exc, TaskError | ChainError | HandoffError):
            raise RPCError(TASK_ERROR, f"{type(exc).__name__}: {exc}") from None


class TaskNamespace:
    namespace = "task"

    def __init__(self, tasks: TaskService, policy: PolicySection | None = None) -> None:
        self._tasks = tasks
        self._policy = policy or PolicySection()

    async def task_create(
        self,
        recipe: str,
        rounds: int = 10,
        config: dict[str, Any] | None = None,
        rule: str = "fedavg",
        partition: str = "iid",
        num_nodes: int = 1,
        seed: int = 0,
        expected_proposers: int = 3,
        min_participants: int = 1,
        stake_unit: int = E18,
        min_stake: int = E18,
        propose_blocks: int = 8,
        commit_blocks: int = 6,
        reveal_blocks: int = 8,
        reward_pool: int = 0,
        vote_mode: Literal["per-proposal", "whole-round"] = "per-proposal",
        max_proposals: int = 16,
        competition: int | None = None,
        root_rows: int | None = None,
    ) -> dict[str, Any]:
        """Create a task on chain; returns its id and the spec every joiner must present.
        competition: a finalised Arena competition whose winning model is round 0's base
        (recipe, config and seed must be the competition's). root_rows: a public root set
        of that many rows of the recipe's bundled data, for the root votes (0: none;
        default: the recipe's, 100 rows or paragraphs for the built-in recipes)."""
        def build() -> TaskSpec:
            return TaskSpec(recipe=recipe, config=config or {}, rule=rule, partition=partition, num_nodes=num_nodes,
                            seed=seed, competition=competition,
                            root_rows=default_root_rows(recipe) if root_rows is None else root_rows)

        with _TaskErrors():
            # A spec loads its recipe, so torch on first use: 40 s of import at load 25 that
            # must not hold the event loop (docs/benchmarks.md, "32 daemons").
            spec = await trio.to_thread.run_sync(build)
            created = await self._tasks.create(
                spec, rounds=rounds, expected_proposers=expected_proposers, min_participants=min_participants,
                min_stake=min_stake, stake_unit=stake_unit, propose_blocks=propose_blocks,
                commit_blocks=commit_blocks, reveal_blocks=reveal_blocks, reward_pool=reward_pool,
                vote_mode=0 if vote_mode == "per-proposal" else 1, max_proposals=max_proposals,
            )
            return {**created, "spec": spec.to_json()}

    async def task_join(self, task_id: int, spec: dict[str, Any], stake: int = 100 * E18, data_path: str | None = None) -> dict[str, Any]:
        """Stake on a task and take part in its rounds (spec: as task_create returned it)."""
        with _TaskErrors():
            params = await self._tasks.registry.get_params(task_id)
            check_join(self._policy, task_id, params, self._tasks.ctx.confirmations)
            joined = await trio.to_thread.run_sync(TaskSpec.from_json, spec)  # as task_create's build
            return await self._tasks.join(task_id, joined, stake, data_path)

    async def task_start(self, task_id: int) -> dict[str, Any]:
        """Start a task's first round (its creator, once enough participants joined)."""
        with _TaskErrors():
            return await self._tasks.start(task_id)

    async def task_status(self, task_id: int) -> dict[str, Any]:
        """State, participants, this node's rounds so far (accuracy, accepted, model hash)."""
        with _TaskErrors():
            return await self._tasks.status(task_id)


class RoundNamespace:
    namespace = "round"

    def __init__(self, tasks: TaskService) -> None:
        self._tasks = tasks

    def round_status(self, task_id: int) -> dict[str, Any]:
        """The current round as this node sees it: phase, role, proposals, votes."""
        with _TaskErrors():
            return current_round_view(self._tasks.task_machine(task_id))


class ModelNamespace:
    namespace = "model"

    def __init__(self, tasks: TaskService, export_dir: Path) -> None:
        self._tasks = tasks
        self._export_dir = export_dir

    async def model_export(self, task_id: int, path: str | None = None) -> dict[str, Any]:
        """Write this node's latest model of a task as a safetensors file."""
        with _TaskErrors():
            status = await self._tasks.status(task_id)
            if not status["model_hash"]:
                raise TaskError(f"no model of task {task_id} yet")
            digest = bytes.fromhex(status["model_hash"][2:])
            data = self._tasks.ctx.store.get_model_bytes(digest)
            if data is None:
                raise TaskError(f"model {status['model_hash']} is not stored")
            self._export_dir.mkdir(exist_ok=True)
            target = Path(path) if path else self._export_dir / f"task{task_id}-{status['model_hash'][2:14]}.safetensors"
            target.write_bytes(data)
            return {"path": str(target.resolve()), "model_hash": status["model_hash"], "rounds": len(status["history"])}

    async def model_verify(self, task_id: int) -> dict[str, Any]:
        """Replay the task's model lineage from the chain and the stored deltas; check every
        hash. A task seeded by a competition: the competition (arena_verify) and its winner first."""
        with _TaskErrors():
            tasks = self._tasks
            runner = tasks.runners.get(task_id)
            spec = runner.spec if runner is not None else tasks.joined(task_id).spec
            worker = runner.worker if runner is not None else await tasks.worker_for(spec, 0, tasks.joined(task_id).data_path)
            lineage = await verify_lineage(tasks.registry, tasks.ctx.store, worker, task_id, tasks.fetch_delta,
                                           start=spec.start)  # start hook
            if spec.competition is None:
                return lineage
            if tasks.handoff is None:
                raise TaskError("this node has no Arena to check the task's competition on")
            competition = await tasks.handoff.verify(spec)
            problems = [f"competition {spec.competition}: {p}" for p in competition["problems"]] + lineage["problems"]
            return {**lineage, "ok": lineage["ok"] and competition["ok"], "problems": problems, "competition": competition}
