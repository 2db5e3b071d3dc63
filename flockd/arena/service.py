"""The node's part in Arena competitions: create, join and submit (the arena_* RPC
methods call these), a driver per competition that acts in each phase (flockd.arena.roles),
and the evaluation set served to peers (flockd.arena.exchange)."""

from __future__ import annotations

import secrets
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import trio
from eth_utils import to_checksum_address

from flockd.arena.exchange import (
    EVAL_KIND,
    MAX_EVAL_REQUEST,
    EvalExchangeError,
    decode_eval_request,
    encode_eval_reply,
)
from flockd.arena.records import Membership, Records, Role
from flockd.arena.snapshot import CompetitionSnapshot, read_competition
from flockd.arena.spec import ArenaSpec, TrainerSettings, creator_eval_set, train_submission
from flockd.chain.client.arena import (
    ARENA_PHASE_FINALISED,
    ARENA_PHASE_JOIN,
    ARENA_PHASE_SCORE_COMMIT,
    ARENA_PHASE_SUBMIT,
    ROLE_TRAINER,
    ROLE_VALIDATOR,
    Arena,
    CompetitionParams,
    eval_commitment,
    submission_digest,
)
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.registry import Token
from flockd.fl.checkpoint import model_hash
from flockd.logs import get_logger
from flockd.stats import Counters
from flockd.tasks.context import NodeContext, hex0x

if TYPE_CHECKING:
    from trio_typing import TaskStatus

log = get_logger("flockd.arena")


class ArenaError(Exception):
    """An Arena operation cannot be done here and now; the message says why."""


class ArenaService:
    def __init__(self, ctx: NodeContext, arena: Arena, token: Token) -> None:
        self.ctx = ctx
        self.arena = arena
        self.token = token
        self.records = Records(ctx.store.root / "arena")
        self.members: dict[int, Membership] = self.records.load_all()
        self.errors: dict[int, list[str]] = {}  # per competition: failed steps, newest last
        self.counters = Counters()
        self._nursery: trio.Nursery | None = None

    async def run(self, *, task_status: TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.ctx.network.handle_blobs(EVAL_KIND, self.answer_eval_request, max_size=MAX_EVAL_REQUEST)
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for cid in self.members:
                nursery.start_soon(self._drive, cid)
            task_status.started()
            await trio.sleep_forever()

    def remember(self, m: Membership) -> None:
        self.records.save(m)
        self.members[m.competition_id] = m

    def record_error(self, cid: int, step: str, reason: str) -> None:
        self.counters.incr("action_failures")
        self.errors.setdefault(cid, []).append(f"{step}: {reason}")
        del self.errors[cid][:-8]  # the newest few: a status, not a log
        log.warning("arena step failed", competition=cid, step=step, reason=reason)

    async def snapshot(self, cid: int) -> CompetitionSnapshot:
        snap = await read_competition(self.arena, cid)
        if snap is None:
            raise ArenaError(f"no competition {cid}")
        return snap

    # -- operations ----------------------------------------------------------------------

    async def create(self, spec: ArenaSpec, eval_path: str | None, params: CompetitionParams) -> dict[str, Any]:
        if await self.arena.token() != self.token.address:  # also fails here when no Arena is configured
            raise ArenaError(f"the Arena at {hex0x(self.arena.address)} takes another token than this node's")
        def prepare() -> tuple[bytes, bytes, bytes]:
            data, set_hash = creator_eval_set(spec, eval_path)
            return data, set_hash, model_hash(spec.base_model())

        data, set_hash, base_hash = await trio.to_thread.run_sync(prepare)
        salt = secrets.token_bytes(32)
        params = replace(
            params, recipe_hash=spec.spec_hash, base_model_hash=base_hash, eval_commitment=eval_commitment(set_hash, salt)
        )
        pending = self.records.put_pending_eval_set(params.eval_commitment, salt, data)
        await self.token.approve(self.arena.address, params.reward_pool + params.creator_bond)
        cid = await self.arena.create(params)
        self.records.adopt_eval_set(pending, cid)
        self.remember(Membership(cid, "creator", spec.to_json(), eval_salt=salt.hex(), eval_set_hash=set_hash.hex()))
        self._start_driver(cid)
        log.info("competition created", competition=cid, recipe=spec.recipe)
        return {"competition_id": cid, "spec": spec.to_json(), "base_model_hash": hex0x(base_hash),
                "eval_set_hash": hex0x(set_hash), "eval_set_bytes": len(data)}

    async def join(self, cid: int, spec: ArenaSpec, role: Role, stake: int) -> dict[str, Any]:
        snap = await self.snapshot(cid)
        if spec.spec_hash != snap.params.recipe_hash:
            raise ArenaError(f"competition {cid}: this spec hashes to {hex0x(spec.spec_hash)}, the competition's is {hex0x(snap.params.recipe_hash)}")
        if cid in self.members:
            raise ArenaError(f"this node is already the {self.members[cid].role} of competition {cid}")
        if snap.phase != ARENA_PHASE_JOIN:
            raise ArenaError(f"competition {cid} is in its {snap.phase_name} phase: joining is over")
        least = snap.params.trainer_stake if role == "trainer" else snap.params.validator_stake
        if stake < least:
            raise ArenaError(f"a {role} stakes at least {least}, not {stake}")
        # Before staking: this node must hold the competition's base model (an LM's base
        # store); loading it now also spares the later phases' deadlines its loading time.
        base_hash = await trio.to_thread.run_sync(_base_model_hash, spec)
        if base_hash != snap.params.base_model_hash:
            raise ArenaError(f"competition {cid}: this node's base model hashes to {hex0x(base_hash)}, "
                             f"the competition's is {hex0x(snap.params.base_model_hash)}")
        await self.token.approve(self.arena.address, stake)
        vrf_pk = self._vrf_public_key() if role == "validator" else bytes(32)
        await self.arena.join(cid, ROLE_TRAINER if role == "trainer" else ROLE_VALIDATOR, stake, vrf_pk)
        self.remember(Membership(cid, role, spec.to_json()))
        self._start_driver(cid)
        return {"competition_id": cid, "role": role, "stake": stake}

    async def submit(self, cid: int, settings: TrainerSettings) -> dict[str, Any]:
        """Train, store the model for the validators to fetch, commit it; the driver
        reveals it in the reveal phase."""
        m = self.members.get(cid)
        if m is None or m.role != "trainer":
            raise ArenaError(f"this node is not a trainer of competition {cid} (arena_join first)")
        if m.model_hash is not None:
            raise ArenaError(f"this node already submitted {m.model_hash[:18]}... to competition {cid}")
        snap = await self.snapshot(cid)
        if snap.phase not in (ARENA_PHASE_JOIN, ARENA_PHASE_SUBMIT):
            raise ArenaError(f"competition {cid} is in its {snap.phase_name} phase: submissions are closed")
        spec = ArenaSpec.from_json(m.spec)
        state = await trio.to_thread.run_sync(train_submission, spec, settings)
        digest = await trio.to_thread.run_sync(self.ctx.store.put_model, state)
        salt = secrets.token_bytes(32)
        # the salt first: a commit whose salt is lost can never be revealed
        self.remember(replace(m, model_hash=digest.hex(), submission_salt=salt.hex()))
        try:
            index = await self.arena.commit_submission(cid, submission_digest(cid, self.ctx.address, digest, salt))
        except ContractRevert:
            self.remember(m)  # refused (the phase ended meanwhile?): nothing is committed
            raise
        return {"competition_id": cid, "index": index, "model_hash": hex0x(digest)}

    async def claim(self) -> dict[str, Any]:
        """Pull every stake and reward the Arena released to this node."""
        amount = await self.arena.claimable(self.ctx.address)
        if amount == 0:
            raise ArenaError("nothing to claim")
        receipt = await self.arena.claim()
        return {"claimed": amount, "tx_hash": hex0x(receipt.tx_hash), "block": receipt.block_number}

    # -- the phases ----------------------------------------------------------------------

    def _start_driver(self, cid: int) -> None:
        if self._nursery is not None:  # else run() starts it with the others
            self._nursery.start_soon(self._drive, cid)

    async def _drive(self, cid: int) -> None:
        from flockd.arena.roles import drive

        try:
            await drive(self, cid)
        except Exception as exc:  # a bug: it ends this competition's driver, not the node
            self.errors.setdefault(cid, []).append(f"driver stopped: {type(exc).__name__}: {exc}")
            log.exception("arena driver failed", competition=cid)

    def _vrf_public_key(self) -> bytes:
        from flockd.vrf import public_key

        return public_key(self.ctx.vrf_secret)

    # -- the evaluation set to peers -----------------------------------------------------

    async def answer_eval_request(self, peer_id: str, kind: str, data: bytes) -> bytes | None:
        """The blob handler of arena.eval.1 (registered by run)."""
        try:
            cid = decode_eval_request(data)
        except EvalExchangeError:
            self.ctx.network.penalize_peer(peer_id, 5.0, "malformed arena eval request")
            return None
        held = self.records.eval_set(cid)
        if held is None:
            return None
        snap = await read_competition(self.arena, cid)
        if snap is None:
            return None
        if snap.competition.eval_set_hash == bytes(32):  # not yet public: elected validators only
            if not ARENA_PHASE_SCORE_COMMIT <= snap.phase < ARENA_PHASE_FINALISED:
                return None
            address = next((p.address for p in self.ctx.network.peers() if p.peer_id == peer_id), None)
            if address is None or address not in {to_checksum_address(v) for v in snap.elected}:
                self.counters.incr("eval_requests_refused")
                return None
        self.counters.incr("eval_sets_served")
        return encode_eval_reply(*held)


def _base_model_hash(spec: ArenaSpec) -> bytes:
    try:
        return model_hash(spec.base_model())
    except Exception as exc:  # a missing or refused base (flockd.lm.base), any recipe's load error
        raise ArenaError(f"this node cannot build the competition's base model: {type(exc).__name__}: {exc}") from None
