"""Simulation mode (flockd.sim): many TaskMachines in one process on one real py-evm chain.

Small runs (5 nodes, 2 rounds): every machine finishes on the model the chain recorded
(run_simulation raises otherwise), that model is exactly the FL core's aggregate of the
deltas the chain accepted, a sign-flipping proposer is voted down, the VRF proof is
checked on chain, and a seed fixes the whole run.
"""

from __future__ import annotations

import json

import pytest
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd import sortition, vrf
from flockd.chain.client.registry import TaskParams
from flockd.fl.aggregate import aggregate, apply
from flockd.fl.attacks import parse_behaviour
from flockd.fl.checkpoint import model_hash
from flockd.fl.codec import decode_delta
from flockd.sim import SimConfig, SimError, run_simulation
from flockd.sim.__main__ import main
from flockd.sim.chain import SimChain
from flockd.sim.run import Simulation

E18 = 10**18


def small(**over: object) -> SimConfig:
    base: dict[str, object] = dict(nodes=5, rounds=2, expected_proposers=2, seed=0)
    base.update(over)
    return SimConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def honest() -> Simulation:
    sim = Simulation(small())
    sim.run()
    return sim


def test_every_node_finishes_on_the_model_the_chain_recorded(honest: Simulation) -> None:
    result = honest.result
    assert [f.round for f in result.rounds] == [0, 1]
    assert result.final_model_hash == result.chain_model_hash
    for node in honest.nodes:
        assert node.machine is not None and node.machine.finished
        assert "0x" + node.machine.model_hash.hex() == result.chain_model_hash  # type: ignore[union-attr]
    assert result.refused_events == 0
    assert all(f.proposers for f in result.rounds), "nobody proposed: the run tests nothing"
    assert result.final_accuracy > result.initial_accuracy


def test_final_stakes_are_the_registrys_pools(honest: Simulation) -> None:
    """Each node's stake after the last settlement, as the registry holds it; with nobody
    malicious and every ballot revealed, no node ends below what it joined with."""
    stakes = honest.result.final_stakes
    assert sorted(stakes) == list(range(5))
    total = int(honest.chain.view("get_state", honest.task_id)[3])
    assert sum(stakes.values()) == total
    assert min(stakes.values()) >= honest.cfg.stake


def test_the_recorded_model_is_the_aggregate_of_the_accepted_deltas(honest: Simulation) -> None:
    """Recompute the lineage from the chain alone (proposals, accepted mask) and the delta
    bytes, with the FL core: the same accepted deltas give the same model hash."""
    chain, task, learner = honest.chain, honest.task_id, honest.learner
    state = learner.models[honest.init_hash]
    layout = {k: v.shape for k, v in state.items()}
    for r in range(honest.cfg.rounds):
        info = chain.view("get_round", task, r)
        proposals = chain.view("get_proposals", task, r)
        accepted = [
            decode_delta(learner.deltas[bytes(h)], expected_shapes=layout, expected_hash=bytes(h))
            for i, (_, h) in enumerate(proposals)
            if info[7] >> i & 1
        ]
        if accepted:
            state = apply(state, aggregate(accepted, honest.cfg.rule))
        assert model_hash(state) == bytes(info[8])
        assert "0x" + model_hash(state).hex() == honest.result.rounds[r].model_hash


def test_a_sign_flipping_proposer_is_voted_down() -> None:
    # nodes 2 and 4 send -4 x their delta; with this seed (the registry's seed chain and
    # fallback proposer included) attackers propose twice in the two rounds.
    # (From the random initial model a flipped delta can still look good to a voter: with
    # seed 0, node 2's round-0 proposal gains validation accuracy and passes.)
    attack = parse_behaviour("sign-flip:4")
    result = run_simulation(small(behaviours={2: attack, 4: attack}, seed=6))
    assert sum(f.malicious_proposers for f in result.rounds) > 0, "no attacker proposed: pick another seed"
    assert sum(f.malicious_accepted for f in result.rounds) == 0
    honest_accepted = [i for f in result.rounds for i in f.accepted]
    assert honest_accepted, "honest proposals must still pass"


def test_the_chain_checks_the_vrf_proof() -> None:
    """propose() verifies the proof in the precompile: the elected node's own proof passes,
    another key's proof or a corrupted one reverts."""
    keys = [PrivateKey(keccak(b"vrf test %d" % i)) for i in range(3)]
    secrets = [keccak(b"vrf secret %d" % i) for i in range(3)]
    chain = SimChain(keys, 100 * E18)
    # one stake unit each and as many expected proposers as units: everyone is elected
    params = TaskParams(
        recipe="digits-mlp", recipe_hash=keccak(b"spec"), model_init_hash=keccak(b"init"), rounds=1,
        min_participants=3, min_stake=100 * E18, stake_unit=100 * E18, expected_proposers=3,
        max_proposals=16, propose_blocks=4, commit_blocks=2, reveal_blocks=8, reward_pool=0,
    )
    task = chain.create_task(keys[0], params, [(k, vrf.public_key(s)) for k, s in zip(keys, secrets, strict=True)], 100 * E18)
    opened = chain.seal()
    seed = sortition.round_seed(opened.hash, task, 0)
    good = vrf.prove(secrets[0], seed)
    corrupted = good[:40] + bytes([good[40] ^ 1]) + good[41:]
    chain.send(keys[0], "propose", task, 0, keccak(b"d0"), good, tag="own proof")
    chain.send(keys[1], "propose", task, 0, keccak(b"d1"), good, tag="another's proof")
    chain.send(keys[2], "propose", task, 0, keccak(b"d2"), corrupted, tag="corrupted")
    block = chain.seal()
    assert [name for name, _ in block.logs] == ["SeedFixed", "Proposed"]
    assert dict(block.failed()) == {"another's proof": "vrf proof rejected", "corrupted": "vrf proof rejected"}


def test_a_seed_fixes_the_whole_run(honest: Simulation) -> None:
    again = run_simulation(small())
    assert again.final_model_hash == honest.result.final_model_hash
    assert [f.proposers for f in again.rounds] == [f.proposers for f in honest.result.rounds]
    assert [f.gas_used for f in again.rounds] == [f.gas_used for f in honest.result.rounds]


def test_whole_round_mode_with_colluders_and_the_cli(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--nodes", "5", "--rounds", "2", "--proposers", "2", "--vote-mode", "whole-round",
                 "--malicious", "0.4", "--attack", "collude", "--seed", "2", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["config"]["vote_mode"] == "whole-round"
    assert sorted(result["config"]["behaviours"].values()) == ["collude", "collude"]
    assert result["final_model_hash"] == result["chain_model_hash"]
    assert len(result["rounds"]) == 2


def test_bad_configs_are_refused() -> None:
    with pytest.raises(ValueError):
        SimConfig(nodes=1)
    with pytest.raises(ValueError):
        SimConfig(nodes=4, behaviours={4: parse_behaviour("accept-all")})
    with pytest.raises(ValueError):
        SimConfig(rule="no-such-rule")
    assert issubclass(SimError, Exception)


def test_a_task_can_start_from_the_creators_model() -> None:
    """creator_steps: round 0 starts from node 0's own training, not from chance; 0 (the
    default) is the random model every earlier run started from."""
    cold, warm = Simulation(small()), Simulation(small(creator_steps=2))
    assert cold.init_hash == Simulation(small(creator_steps=0)).init_hash
    assert warm.init_hash != cold.init_hash
    assert warm.result.initial_accuracy > cold.result.initial_accuracy + 0.2
    with pytest.raises(ValueError, match="creator_steps"):
        small(creator_steps=-1)


def test_a_task_bigger_than_one_settlement_batch_finalises_over_two_calls() -> None:
    """finalise settles 256 voters a call (the registry's SETTLE_BATCH): with 260 nodes the
    node whose call settled the first batch sends the second, which finalises the round."""
    sim = Simulation(small(nodes=260, rounds=1, expected_proposers=4))
    seen: list[tuple[str, int]] = []
    follow = sim.ledger.log

    def log(name: str, args: dict[str, object], number: int) -> None:
        if name in ("VotersSettled", "RoundFinalised"):
            seen.append((name, number))
        follow(name, args, number)

    sim.ledger.log = log  # type: ignore[method-assign]
    result = sim.run()
    assert [name for name, _ in seen] == ["VotersSettled", "RoundFinalised"]
    assert seen[1][1] == seen[0][1] + 1  # the next block: no waiting for another turn
    assert result.final_model_hash == result.chain_model_hash
    assert all(node.machine is not None and node.machine.finished for node in sim.nodes)
