"""The node's learning tasks: create, join and start them on chain, run a TaskRunner for
each joined task (and resume it after a restart), and serve deltas and models to peers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from flockd.chain.client.registry import Registry, TaskParams, Token
from flockd.files import write_new_file
from flockd.fl.attacks import HONEST, Behaviour
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import delta_hash
from flockd.fl.recipe import load_recipe
from flockd.fl.tensors import model_state
from flockd.fl.vote_scoring import DEFAULT_VOTE_SCORING, VoteScoring
from flockd.logs import get_logger
from flockd.p2p.abc import P2PError
from flockd.p2p.blobs import BlobError
from flockd.round import TaskMachine
from flockd.stats import Counters
from flockd.tasks.abc import TaskWork
from flockd.tasks.exchange import (
    FETCH_KIND,
    MAX_FETCH_REQUEST,
    FetchRequest,
    decode_fetch,
    encode_fetch,
    max_delta_bytes,
)
from flockd.tasks.pushes import PushInbox, TaskPushes
from flockd.tasks.runner import NodeContext, TaskRunner, round_history
from flockd.tasks.spec import SpecError, TaskSpec
from flockd.tasks.start import start_hash
from flockd.tasks.trainer import ChildTrainedWork
from flockd.tasks.work import Worker

if TYPE_CHECKING:
    from trio_typing import TaskStatus  # trio's own TaskStatus is hidden by trio-stubs

    from flockd.arena.handoff import Handoff

log = get_logger("flockd.tasks")
STATUS_NAMES = {0: "none", 1: "joining", 2: "running", 3: "finished"}
JOINED_FILE = "joined.json"


class TaskError(Exception):
    """A task operation cannot be done (unknown task, spec mismatch, wrong state)."""


@dataclass(frozen=True)
class Joined:
    task_id: int
    spec: TaskSpec
    data_path: str | None


class TaskService:
    def __init__(
        self,
        ctx: NodeContext,
        token: Token,
        *,
        behaviour: Behaviour = HONEST,
        colluders: frozenset[bytes] = frozenset(),
        scoring: VoteScoring = DEFAULT_VOTE_SCORING,
    ) -> None:
        self.ctx = ctx
        self.token = token
        self.behaviour = behaviour  # malicious only in attack experiments ([attack] config)
        self.colluders = colluders
        self.scoring = scoring  # how this node votes on proposals ([vote] scoring)
        self.runners: dict[int, TaskRunner] = {}
        self.counters = Counters()
        self.pushes = PushInbox(ctx.network, self.counters)
        self._joined: dict[int, Joined] = self._load_joined()
        self._nursery: trio.Nursery | None = None
        self.handoff: Handoff | None = None  # the node's Arena, for specs naming a competition

    @property
    def registry(self) -> Registry:
        return self.ctx.registry

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.pushes.listen()
        self.ctx.network.handle_blobs(FETCH_KIND, self._on_fetch, max_size=MAX_FETCH_REQUEST)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for joined in self._joined.values():
                nursery.start_soon(self._run_task, joined)
            task_status.started()
            await trio.sleep_forever()  # joins add runners to this nursery

    # -- operations (the task_* RPC methods call these) ------------------------------------

    async def create(
        self, spec: TaskSpec, *, rounds: int, expected_proposers: int, min_participants: int,
        min_stake: int, stake_unit: int, propose_blocks: int, commit_blocks: int, reveal_blocks: int,
        reward_pool: int, vote_mode: int, max_proposals: int,
    ) -> dict[str, Any]:
        start = start_hash(spec.start)  # start hook: a task started from another's model
        if start is not None:
            init_hash = start
        elif spec.competition is None:
            init_hash = await trio.to_thread.run_sync(_initial_model_hash, spec)
        else:
            from flockd.arena.handoff import initial_model_hash

            init_hash = await trio.to_thread.run_sync(initial_model_hash, spec, await self._handoff().base_model(spec))
        params = TaskParams(
            recipe=spec.recipe, recipe_hash=spec.spec_hash, model_init_hash=init_hash, rounds=rounds,
            min_participants=min_participants, min_stake=min_stake, stake_unit=stake_unit,
            expected_proposers=expected_proposers, max_proposals=max_proposals,
            propose_blocks=propose_blocks, commit_blocks=commit_blocks, reveal_blocks=reveal_blocks,
            reward_pool=reward_pool, vote_mode=vote_mode,
        )
        if reward_pool:
            await self.token.approve(self.registry.address, reward_pool)
        task_id = await self.registry.create_task(params)
        log.info("task created", task=task_id, recipe=spec.recipe, rounds=rounds)
        return {"task_id": task_id, "spec_hash": _hex(spec.spec_hash), "model_init_hash": _hex(init_hash)}

    async def join(self, task_id: int, spec: TaskSpec, stake: int, data_path: str | None) -> dict[str, Any]:
        params = await self._params(task_id)
        if spec.spec_hash != params.recipe_hash:
            raise TaskError(f"task {task_id}: this spec hashes to {_hex(spec.spec_hash)}, the task's is {_hex(params.recipe_hash)}")
        if task_id in self._joined:
            raise TaskError(f"already joined task {task_id}")
        if spec.competition is not None:  # the creator's claim of the winner, checked before we stake
            from flockd.arena.handoff import initial_model_hash

            seeded = await trio.to_thread.run_sync(initial_model_hash, spec, await self._handoff().base_model(spec))
            if seeded != params.model_init_hash:
                raise TaskError(f"task {task_id} does not start from competition {spec.competition}'s winner")
        await self.token.approve(self.registry.address, stake)
        await self.registry.join(task_id, stake, self._vrf_public_key())
        joined = Joined(task_id, spec, data_path)
        self._joined[task_id] = joined
        self._save_joined()
        assert self._nursery is not None
        self._nursery.start_soon(self._run_task, joined)
        return {"task_id": task_id, "joined": True, "stake": stake}

    async def start(self, task_id: int) -> dict[str, Any]:
        await self.registry.start_task(task_id)
        return {"task_id": task_id, "started": True}

    async def status(self, task_id: int) -> dict[str, Any]:
        params = await self._params(task_id)
        state = await self.registry.get_state(task_id)
        participants = await self.registry.get_participants(task_id)
        last = params.rounds - 1
        # Finished: the final model is the last round's, recorded after the chain says
        # finished; until then there is none to agree with (not an earlier round's).
        oldest = last if state.status == 3 else 0
        chain_model = await self._latest_recorded_model(task_id, min(state.current_round, last), oldest)
        runner = self.runners.get(task_id)
        history = round_history(self.ctx.store.history(task_id))
        return {
            "task_id": task_id,
            "state": STATUS_NAMES.get(state.status, str(state.status)),
            "recipe": params.recipe,
            "rounds": params.rounds,
            "round": state.current_round,
            "participants": [_checksum(p) for p in participants],
            "me": _checksum(self.ctx.address),
            "joined": task_id in self._joined,
            "role": runner.status()["role"] if runner else None,
            "error": runner.error if runner else None,  # the bug that stopped this task's runner
            "model_hash": history[-1]["model_hash"] if history else None,
            "chain_model_hash": _hex(chain_model) if chain_model else None,
            "history": history,
        }

    async def _latest_recorded_model(self, task_id: int, newest_round: int, oldest_round: int = 0) -> bytes | None:
        for r in range(newest_round, oldest_round - 1, -1):
            info = await self.registry.get_round(task_id, r)
            if any(info.model_hash):
                return info.model_hash
        return None

    def task_machine(self, task_id: int) -> TaskMachine:
        """The round machine of a task this node runs (round_status formats it)."""
        runner = self.runners.get(task_id)
        if runner is None:
            raise TaskError(f"this node runs no task {task_id}")
        return runner.machine

    def joined(self, task_id: int) -> Joined:
        try:
            return self._joined[task_id]
        except KeyError:
            raise TaskError(f"this node has not joined task {task_id}") from None

    # -- running a joined task -------------------------------------------------------------

    async def _run_task(self, joined: Joined) -> None:
        try:
            await self._run_joined(joined)
        except Exception:  # one task's failure must not stop the node or its other tasks
            log.exception("task runner failed", task=joined.task_id)

    async def _run_joined(self, joined: Joined) -> None:
        task_id = joined.task_id
        while True:  # wait for the creator's start_task
            state = await self.registry.get_state(task_id)
            if state.status != 1:
                break
            await trio.sleep(0.5)
        if state.status != 2:
            log.info("task not running", task=task_id, state=STATUS_NAMES.get(state.status))
            return
        params = await self._params(task_id)
        participants = await self.registry.get_participants(task_id)
        node_index = participants.index(self.ctx.address)
        worker = await self.worker_for(joined.spec, node_index, joined.data_path)
        work: TaskWork = worker
        if worker.recipe.train_in_child:
            work = ChildTrainedWork(worker, self.behaviour)
        try:
            await self._run(joined, params, participants, worker, work)
        finally:
            if isinstance(work, ChildTrainedWork):
                with trio.CancelScope(shield=True):
                    await trio.to_thread.run_sync(work.close)

    async def _run(
        self, joined: Joined, params: TaskParams, participants: list[bytes], worker: Worker, work: TaskWork
    ) -> None:
        task_id = joined.task_id
        runner = TaskRunner(self.ctx, task_id, joined.spec, params, participants, work)
        self.runners[task_id] = runner
        self.pushes.open_task(task_id, TaskPushes(
            participants=frozenset(participants),
            me=self.ctx.address,
            max_delta=max_delta_bytes(worker.layout),
            per_round=4 * params.max_proposals,  # as many as the round machine buffers
            current_round=lambda: runner.machine.current_round,
            deliver=runner.on_delta_push,
        ))
        try:
            await runner.run()
        finally:
            self.pushes.close_task(task_id)

    async def worker_for(self, spec: TaskSpec, node_index: int, data_path: str | None) -> Worker:
        """This node's worker for a task; its initial model the competition winner's when
        the spec names a competition (fetched and checked against the chain)."""
        make_worker: Callable[..., Worker] = partial(
            Worker, behaviour=self.behaviour, colluders=self.colluders, scoring=self.scoring
        )
        if spec.competition is not None:
            from flockd.arena.handoff import SeededWorker

            make_worker = partial(SeededWorker, base=await self._handoff().base_model(spec),
                                  behaviour=self.behaviour, colluders=self.colluders, scoring=self.scoring)
        return await trio.to_thread.run_sync(make_worker, spec, node_index, data_path)

    def _handoff(self) -> Handoff:
        if self.handoff is None:
            raise TaskError("this node has no Arena to read a competition from")
        return self.handoff

    async def _params(self, task_id: int) -> TaskParams:
        params = await self.registry.get_params(task_id)
        if not params.recipe:
            raise TaskError(f"no task {task_id}")
        return params

    async def fetch_delta(self, digest: bytes) -> bytes | None:
        """A delta from any connected peer, kept only if it hashes to `digest`."""
        request = encode_fetch(FetchRequest("delta", digest))
        for peer in self.ctx.network.peers():
            try:
                data = await self.ctx.network.send_blob(peer.peer_id, FETCH_KIND, request)
            except (P2PError, BlobError):
                continue
            # Model-sized: hashed (and written) in a worker thread, never on the event loop.
            if data and await trio.to_thread.run_sync(delta_hash, data) == digest:
                await trio.to_thread.run_sync(self.ctx.store.put_delta, data)
                return data
        return None

    # -- blobs from peers ------------------------------------------------------------------

    async def _on_fetch(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        request = decode_fetch(data)
        store = self.ctx.store
        # A read from disk and (for a delta) a hash of model size: off the event loop.
        if request.what == "delta":
            return await trio.to_thread.run_sync(store.get_delta, request.digest)
        return await trio.to_thread.run_sync(store.get_model_bytes, request.digest)

    # -- persistence -----------------------------------------------------------------------

    def _vrf_public_key(self) -> bytes:
        from flockd.vrf import public_key

        return public_key(self.ctx.vrf_secret)

    @property
    def _joined_path(self) -> Path:
        return self.ctx.store.root / "tasks" / JOINED_FILE

    def _load_joined(self) -> dict[int, Joined]:
        if not self._joined_path.exists():
            return {}
        out = {}
        for entry in json.loads(self._joined_path.read_text()):
            try:
                out[entry["task_id"]] = Joined(entry["task_id"], TaskSpec.from_json(entry["spec"]), entry.get("data_path"))
            except (KeyError, SpecError) as exc:
                raise TaskError(f"{self._joined_path} is corrupt: {exc}") from None
        return out

    def _save_joined(self) -> None:
        entries = [{"task_id": j.task_id, "spec": j.spec.to_json(), "data_path": j.data_path} for j in self._joined.values()]
        tmp = self._joined_path.with_suffix(".new")
        tmp.unlink(missing_ok=True)
        write_new_file(tmp, json.dumps(entries, indent=2).encode(), mode=0o644)
        tmp.replace(self._joined_path)


def _initial_model_hash(spec: TaskSpec) -> bytes:
    recipe = load_recipe(spec.recipe, spec.config)
    return model_hash(recipe.initial_state(model_state(recipe.build_model(spec.seed)), spec.seed))


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _checksum(address: bytes) -> str:
    from eth_utils import to_checksum_address

    return to_checksum_address(address)
