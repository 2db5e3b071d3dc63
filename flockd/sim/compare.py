"""What the simulation and a multi-process testnet share, checked on a finished testnet.

    python -m flockd.sim.compare WORKDIR [--task 1]

Reads node0's chain database and every node's store under a stopped `scripts/testnet`
workdir, and recomputes with the simulation's own code (`flockd.sim.learn.Learner`, so
the same Worker the simulation runs):

1. the initial model: the hash the testnet put on chain is the simulation's;
2. the lineage: for each round, the base model plus the deltas the testnet's chain
   accepted, aggregated by the simulation, gives the model hash the testnet recorded;
3. round 0's proposals: node i's delta, trained by the simulation from the initial model
   with node i's data split and training seed, has the delta hash the testnet's node i
   committed on chain (byte-identical training, codec and hashing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flockd.chain.client.addresses import TASK_REGISTRY_ADDRESS
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis
from flockd.chain.node.records import CallRequest
from flockd.fl.attacks import HONEST
from flockd.sim.chain import REGISTRY
from flockd.sim.learn import Learner
from flockd.store import Store
from flockd.tasks.bridge import as_address
from flockd.tasks.spec import TaskSpec


def compare(workdir: Path, task_id: int = 1) -> list[str]:
    """One line per check; raises AssertionError at the first difference."""
    chain = EmbeddedChain(Genesis.load(workdir / "node0" / "genesis.json"), workdir / "node0" / "chain" / "chain.sqlite")

    def view(fn: str, *args: Any) -> Any:
        data = chain.call(CallRequest(to=TASK_REGISTRY_ADDRESS, data=REGISTRY.encode_call(fn, *args)))
        out = REGISTRY.decode_output(fn, data)
        return out[0] if len(out) == 1 else out

    stores = [Store(d / "store") for d in sorted(workdir.glob("node*"))]
    spec = TaskSpec.from_json(_spec_of(stores[0], task_id))
    learner = Learner(spec)
    params = view("get_params", task_id)
    participants = [as_address(a) for a in view("get_participants", task_id)]
    lines = []
    init = learner.initial_model()
    assert init == params[2], f"initial model {init.hex()} != testnet's {params[2].hex()}"
    lines.append(f"initial model 0x{init.hex()[:12]}…: identical")
    base = init
    for r in range(params[3]):
        info, proposals = view("get_round", task_id, r), view("get_proposals", task_id, r)
        hashes = [bytes(h) for _, h in proposals]
        accepted = sorted(h for i, h in enumerate(hashes) if info[7] >> i & 1)
        deltas = [_delta(stores, h) for h in accepted]
        model = learner.aggregate(base, deltas) if deltas else base
        assert model == bytes(info[8]), f"round {r}: simulation aggregates {model.hex()}, chain has {bytes(info[8]).hex()}"
        lines.append(f"round {r}: {len(accepted)}/{len(hashes)} accepted -> model 0x{model.hex()[:12]}…: identical")
        if r == 0:
            for who, h in proposals:
                index = participants.index(as_address(who))
                work = learner.worker(index, HONEST, frozenset())
                ours = learner.deltas.setdefault(h, learner.train(work, init, 0))
                assert _keccak(ours) == bytes(h), f"round 0: node {index}'s delta differs"
                lines.append(f"round 0: node {index}'s delta 0x{bytes(h).hex()[:12]}… retrained here: identical")
        base = model
    return lines


def _spec_of(store: Store, task_id: int) -> Any:
    import json

    joined = json.loads((store.root / "tasks" / "joined.json").read_text())
    return next(j["spec"] for j in joined if j["task_id"] == task_id)


def _delta(stores: list[Store], digest: bytes) -> bytes:
    for store in stores:
        data = store.get_delta(digest)
        if data is not None:
            return data
    raise AssertionError(f"no node stored delta {digest.hex()}")


def _keccak(data: bytes) -> bytes:
    from eth_utils import keccak

    return bytes(keccak(data))


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m flockd.sim.compare", description=__doc__)
    p.add_argument("workdir", type=Path)
    p.add_argument("--task", type=int, default=1)
    args = p.parse_args(argv)
    for line in compare(args.workdir, args.task):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
