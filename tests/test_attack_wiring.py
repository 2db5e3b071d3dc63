"""A node's malicious behaviour from config to its work: the [attack] section, the
`flockd run --attack` override, and what a malicious Worker trains, sends and votes."""

import numpy as np
import pytest

from flockd.cli import _parser
from flockd.config import ConfigError, config_from_dict
from flockd.fl.attacks import HONEST, parse_behaviour
from flockd.fl.codec import decode_delta, encode_delta
from flockd.fl.simulate import main as simulate_main
from flockd.fl.simulate import simulate
from flockd.round import SCORE_BOUND
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker

COLLUDER = "0x" + "ab" * 20


# --- config ----------------------------------------------------------------------------


def test_attack_section_defaults_to_honest():
    config = config_from_dict({})
    assert config.attack.parsed() == HONEST
    assert config.attack.colluder_addresses() == frozenset()


def test_attack_section_parses_behaviour_and_colluders():
    config = config_from_dict(
        {
            "attack": {
                "behaviour": "collude",
                "colluders": [COLLUDER, COLLUDER.upper().replace("X", "x")],
            }
        }
    )
    assert config.attack.parsed() == parse_behaviour("collude")
    assert config.attack.colluder_addresses() == frozenset({bytes([0xAB]) * 20})


@pytest.mark.parametrize(
    ("attack", "message"),
    [
        ({"behaviour": "sign-flip:-1"}, r"attack.behaviour: .*> 0"),
        ({"behaviour": "evil"}, "attack.behaviour: .*unknown part 'evil'"),
        ({"behaviour": 4}, "attack.behaviour: expected str"),
        (
            {"colluders": ["0x1234"]},
            "attack.colluders: '0x1234' is not a 0x-prefixed 20-byte address",
        ),
        ({"colluders": ["ab" * 21]}, "attack.colluders: .* is not a 0x-prefixed"),
        ({"colluders": ["0x-" + "1" * 39]}, "attack.colluders: .* is not a 0x-prefixed"),
        ({"colluders": "0x" + "ab" * 20}, "attack.colluders: expected a list of strings"),
        ({"colluder": []}, "attack.colluder: unknown key"),
    ],
)
def test_bad_attack_config_is_a_config_error_naming_the_key(attack, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict({"attack": attack})


def test_run_attack_flag_overrides_the_configured_behaviour():
    args = _parser().parse_args(["run", "--attack", "noise:0.5"])
    config = config_from_dict({}).with_overrides(attack={"behaviour": args.attack})
    assert str(config.attack.parsed()) == "noise:0.5"
    with pytest.raises(ConfigError, match="attack.behaviour"):
        config_from_dict({}).with_overrides(attack={"behaviour": "noise:x"})
    unset = _parser().parse_args(["run"])
    assert (
        config_from_dict({}).with_overrides(attack={"behaviour": unset.attack}).attack.parsed()
        == HONEST
    )


# --- the Worker ------------------------------------------------------------------------

SPEC = TaskSpec("cancer-logreg", num_nodes=4, seed=3)
A, B, C = (bytes([n]) * 20 for n in (1, 2, 3))


def worker(spec: str = "honest", colluders: frozenset[bytes] = frozenset()) -> Worker:
    return Worker(SPEC, 1, behaviour=parse_behaviour(spec), colluders=colluders)


def test_label_flipping_worker_trains_on_mirrored_labels():
    honest, flipper = worker(), worker("label-flip")
    assert (flipper.train_split.y == 1 - honest.train_split.y).all()
    assert (flipper.val_split.y == honest.val_split.y).all()  # it still scores honestly


def test_sign_flipping_worker_sends_minus_scale_times_the_honest_delta():
    honest, attacker = worker(), worker("sign-flip:4")
    base = honest.initial_model()
    good = decode_delta(honest.train(base, 1))
    bad = decode_delta(attacker.train(base, 1))
    assert bad.samples == good.samples
    for name, t in good.tensors.items():
        np.testing.assert_allclose(bad.tensors[name], -4 * t, rtol=1e-6)


def test_noise_worker_is_deterministic_per_round():
    attacker = worker("noise:0.1")
    base = attacker.initial_model()
    assert attacker.train(base, 1) == attacker.train(base, 1)
    assert attacker.train(base, 1) != attacker.train(base, 2)


def test_voters_replace_their_honest_scores():
    base = worker().initial_model()
    proposer = worker()
    good = proposer.train(base, 1)
    wrecked = encode_delta({k: -20 * v for k, v in decode_delta(good).tensors.items()}, samples=1)
    deltas = [good, wrecked, None]
    assert worker().score(base, deltas, [A, B, C], False, 1) == (1, -1, -1)
    assert worker("accept-all").score(base, deltas, [A, B, C], False, 1) == (1, 1, 1)
    colluder = worker("collude", colluders=frozenset({B}))
    assert colluder.score(base, deltas, [A, B, C], False, 1) == (-1, 1, -1)
    assert colluder.score(base, [good], [B], True, 1) == (SCORE_BOUND,)
    random = worker("random-vote")
    votes = random.score(base, deltas, [A, B, C], False, 1)
    assert set(votes) <= {-1, 1} and votes == random.score(base, deltas, [A, B, C], False, 1)


def test_honest_whole_round_score_is_the_accuracy_gain():
    base = worker().initial_model()
    good = worker().train(base, 1)
    (score,) = worker().score(base, [good], [A], True, 1)
    assert 0 < score <= SCORE_BOUND  # training from the initial model helps


# --- the in-process simulation ---------------------------------------------------------


def test_simulation_voters_reject_a_sign_flipper_and_the_model_still_learns():
    attacked = simulate(
        "cancer-logreg",
        nodes=6,
        rounds=4,
        proposers=3,
        vote=True,
        seed=1,
        behaviours={2: parse_behaviour("sign-flip:4")},
    )
    assert attacked.behaviours == {2: "sign-flip:4"}
    assert any(2 in r.proposers for r in attacked.rounds)  # it did attack
    assert all(2 not in r.accepted for r in attacked.rounds)
    assert attacked.rounds[-1].accuracy > 0.9


def test_simulation_colluders_block_honest_work_when_half_the_voters_collude():
    colluders = {i: parse_behaviour("collude") for i in (3, 4, 5)}
    run = simulate(
        "cancer-logreg", nodes=6, rounds=4, proposers=2, vote=True, seed=2, behaviours=colluders
    )
    captured = [r for r in run.rounds if 2 * (3 - len(set(r.proposers) & set(colluders))) >= 4]
    assert captured  # rounds where at least 2 of the 4 voters collude
    for r in captured:  # an honest proposal needs 3 of 4 ayes: never there
        assert set(r.accepted) <= set(colluders)


def test_simulation_without_behaviours_is_the_honest_run():
    honest = simulate("cancer-logreg", nodes=3, rounds=2, proposers=2, vote=True, seed=4)
    same = simulate(
        "cancer-logreg", nodes=3, rounds=2, proposers=2, vote=True, seed=4, behaviours={}
    )
    assert honest.final_model_hash == same.final_model_hash
    assert honest.behaviours == {}


def test_simulate_cli_takes_malicious_fraction_and_attack(capsys):
    assert (
        simulate_main(
            [
                "--recipe",
                "cancer-logreg",
                "--nodes",
                "4",
                "--rounds",
                "1",
                "--malicious",
                "0.25",
                "--attack",
                "noise:2",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "malicious: node " in out and "noise:2" in out
    with pytest.raises(SystemExit):
        simulate_main(["--nodes", "4", "--malicious", "0.25", "--attack", "nonsense"])
    assert "unknown part 'nonsense'" in capsys.readouterr().err
