"""The two translations between the task registry and the round machine, shared by the
daemon's TaskRunner and the in-process simulation (flockd.sim) so both speak to the chain
the same way:

    round_events(name, args, block_hash)   a decoded registry log -> round machine events
    transaction(action)                    a Submit* action -> (kind, registry function, args)

Pure: no I/O. The caller looks up the hash of a RoundOpened log's open block (the round
seed needs it) and passes it in.
"""

from __future__ import annotations

from typing import Any

from flockd import round as rnd


def as_address(value: Any) -> bytes:
    """A 20-byte address from a decoded log argument (bytes, or '0x' hex)."""
    if isinstance(value, bytes):
        return value
    return bytes.fromhex(str(value)[2:])


def round_events(name: str, args: dict[str, Any], block_hash: bytes | None = None) -> list[rnd.Event]:
    """The round events one registry log means; [] for logs the machine does not follow.
    ``block_hash`` is needed (only) for RoundOpened: the hash of its open block."""
    r = args.get("round", 0)
    if name == "RoundOpened":
        if block_hash is None:
            raise ValueError("RoundOpened needs the hash of its open block")
        seed = args.get("seed", bytes(32))  # zero in round 0's log: computed from block_hash
        return [rnd.RoundOpened(r, args["open_block"], block_hash, None if seed == bytes(32) else seed)]
    if name == "Proposed":
        return [rnd.ProposalOnChain(r, args["index"], as_address(args["proposer"]), args["delta_hash"])]
    if name == "Declined":
        return [rnd.DeclinedOnChain(r, as_address(args["participant"]))]
    if name == "FallbackOpened":
        return [rnd.FallbackOnChain(r, as_address(args["proposer"]), args["last_block"])]
    if name == "PhaseClosed":
        return [rnd.PhaseClosedOnChain(r, rnd.ChainPhase(args["phase"]), args["last_block"])]
    if name == "VoteCommitted":
        return [rnd.VoteCommittedOnChain(r, as_address(args["voter"]), args["digest"])]
    if name == "VoteRevealed":
        return [rnd.VoteRevealedOnChain(r, as_address(args["voter"]), tuple(args["votes"]))]
    if name == "VotersSettled":
        return [rnd.VotersSettledOnChain(r, args["settled"])]
    if name == "RoundFinalised":
        return [rnd.RoundFinalisedOnChain(r, args["accepted_mask"], args["n_proposals"])]
    if name == "ModelRecorded":
        return [rnd.ModelRecordedOnChain(r, args["model_hash"])]
    return []


Submission = (
    rnd.SubmitPropose
    | rnd.SubmitDecline
    | rnd.SubmitCommit
    | rnd.SubmitReveal
    | rnd.SubmitFinalise
    | rnd.SubmitRecordModel
)


def transaction(action: Submission) -> tuple[rnd.TxKind, str, tuple[Any, ...]]:
    """The registry call a Submit* action asks for: its kind, the function, and the
    arguments after ``(task_id, round)``."""
    match action:
        case rnd.SubmitPropose():
            return rnd.TxKind.PROPOSE, "propose", (action.delta_hash, action.proof)
        case rnd.SubmitDecline():
            return rnd.TxKind.DECLINE, "decline", (action.proof,)
        case rnd.SubmitCommit():
            return rnd.TxKind.COMMIT, "commit_vote", (action.digest, action.proposals_digest)
        case rnd.SubmitReveal():
            return rnd.TxKind.REVEAL, "reveal_vote", (list(action.votes), action.salt)
        case rnd.SubmitFinalise():
            return rnd.TxKind.FINALISE, "finalise", ()
        case rnd.SubmitRecordModel():
            return rnd.TxKind.RECORD_MODEL, "record_model", (action.model_hash,)
    raise TypeError(f"{type(action).__name__} is not a transaction")
