"""How a voter scores proposals is each node's own option (issue 12): the daemon's [vote]
config, the simulation, the attack bench and the testnet all take it, and the default
stays ``local-model``."""

from __future__ import annotations

import pytest

from flockd.bench import attack
from flockd.bench._attack_systems import Job
from flockd.config import Config, ConfigError, config_from_dict
from flockd.fl.vote_scoring import VOTE_SCORINGS, parse_vote_scoring
from flockd.sim.__main__ import config_from, parse_args
from flockd.sim.config import SimConfig
from flockd.tasks.spec import TaskSpec
from flockd.tasks.work import Worker
from flockd.testnet.cluster import vote_section


def test_every_layer_defaults_to_the_root_or_local_model_vote():
    assert Config().vote.parsed() == "root-or-local-model"
    assert SimConfig().vote_scoring == "root-or-local-model"
    assert config_from(parse_args([])).vote_scoring == "root-or-local-model"
    assert config_from(parse_args([])).root_rows == 100  # the CLI's task carries digits' root set
    assert Job("flockd-per-proposal", "collude", 0.4, 0, 20, 30, 8, "x").vote_scoring == "root-or-local-model"
    assert attack.parse_args([]).vote_scoring == "root-or-local-model"


@pytest.mark.parametrize("scoring", VOTE_SCORINGS)
def test_every_layer_takes_each_scoring(scoring):
    assert config_from_dict({"vote": {"scoring": scoring}}).vote.parsed() == scoring
    assert config_from(parse_args(["--vote-scoring", scoring])).vote_scoring == scoring
    args = attack.parse_args(["--vote-scoring", scoring, "--seeds", "0", "--fractions", "0.4",
                              "--systems", "flockd-per-proposal", "--per-attack", "none"])  # fmt: skip
    assert {job.vote_scoring for job in attack.plan(args)} == {scoring}
    assert config_from_dict(_toml_dict(vote_section(scoring))).vote.parsed() == scoring


def _toml_dict(text: str) -> dict:
    import tomllib

    return tomllib.loads(text)


def test_an_unknown_scoring_is_refused_where_it_is_given():
    with pytest.raises(ConfigError, match=r"vote.scoring: vote scoring must be one of local-model"):
        config_from_dict({"vote": {"scoring": "median"}})
    with pytest.raises(ValueError, match="median"):
        parse_vote_scoring("median")
    with pytest.raises(ValueError, match="median"):
        SimConfig(vote_scoring="median")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="median"):
        Worker(TaskSpec("cancer-logreg", num_nodes=2), 0, scoring="median")  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        attack.parse_args(["--vote-scoring", "median"])


def test_the_testnet_sets_every_config_s_vote_section():
    from flockd.config import DEFAULT_CONFIG_TOML
    from flockd.testnet.cluster import _ATTACK_HEADER, with_vote_scoring

    once = with_vote_scoring(DEFAULT_CONFIG_TOML, "guarded-contribution")
    assert config_from_dict(_toml_dict(once)).vote.parsed() == "guarded-contribution"
    assert with_vote_scoring(once, "guarded-contribution") == once  # a re-run changes nothing
    assert with_vote_scoring(once, "root-or-local-model") == DEFAULT_CONFIG_TOML
    # An older config without [vote], with the testnet's [attack] section last: [vote]
    # goes before it, so configure_attacks can still cut [attack] off.
    old = "[node]\nnetwork = \"x\"\n" + _ATTACK_HEADER + "behaviour = \"collude\"\n"
    added = with_vote_scoring(old, "contribution")
    assert added.endswith(_ATTACK_HEADER + "behaviour = \"collude\"\n")
    assert _toml_dict(added)["vote"] == {"scoring": "contribution"}


def test_the_testnet_report_names_the_scoring_and_the_honest_acceptance():
    from test_testnet_report import report_of, statuses

    from flockd.testnet.report import render_markdown

    report = report_of(statuses(), vote_scoring="guarded-contribution", partition="dirichlet:0.5")
    text = render_markdown(report)
    assert "--partition dirichlet:0.5 --vote-scoring guarded-contribution" in report["command"]
    assert "- honest proposals: 10, accepted 8 (80%)" in text
    assert "- votes scored with: `guarded-contribution`" in text
    assert "--vote-scoring" not in report_of(statuses())["command"]


def test_the_testnet_sets_every_config_s_confirmation_depth():
    from flockd.config import DEFAULT_CONFIG_TOML
    from flockd.testnet.cluster import with_setting
    from flockd.testnet.report import testnet_command

    deep = with_setting(DEFAULT_CONFIG_TOML, "chain", "round_confirmations", 2)
    assert config_from_dict(_toml_dict(deep)).chain.round_confirmations == 2
    assert config_from_dict(_toml_dict(deep)).chain.confirmations == 2  # transactions' depth untouched
    assert with_setting(deep, "chain", "round_confirmations", 0) == DEFAULT_CONFIG_TOML
    command = testnet_command(nodes=6, rounds=8, recipe="digits-mlp", partition="iid", confirmations=2)
    assert command.endswith("--confirmations 2")
    assert "--confirmations" not in testnet_command(nodes=6, rounds=8, recipe="digits-mlp", partition="iid")
