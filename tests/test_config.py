import tomllib

import pytest

from flockd.config import DEFAULT_CONFIG_TOML, Config, ConfigError, config_from_dict, load_config


def test_default_file_equals_default_object():
    assert config_from_dict(tomllib.loads(DEFAULT_CONFIG_TOML)) == Config()


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"nope": {}}, r"unknown section \[nope\]"),
        ({"p2p": {"max_peers": "9"}}, r"p2p.max_peers: expected an integer"),
        ({"p2p": {"max_peers": True}}, r"p2p.max_peers: expected an integer"),
        ({"p2p": {"max_peers": 0}}, r"p2p.max_peers: 0 is out of range"),
        ({"p2p": {"listen": "/ip4/127.0.0.1/tcp/0"}}, r"p2p.listen: expected a list of strings"),
        ({"p2p": {"listen": ["bogus"]}}, r"p2p.listen: 'bogus' is not a multiaddr"),
        ({"p2p": {"listen": []}}, r"p2p.listen: at least one"),
        ({"p2p": {"bootstrap": ["/ip4/127.0.0.1/tcp/4001"]}}, r"needs a /p2p/<peer id>"),
        ({"p2p": {"colour": "red"}}, r"p2p.colour: unknown key"),
        ({"node": {"log_level": "loud"}}, r"node.log_level"),
        ({"node": {"network": "a b"}}, r"node.network"),
        ({"chain": {"rpc_url": "ftp://x"}}, r"chain.rpc_url"),
        ({"chain": {"http_port": 70000}}, r"chain.http_port"),
        ({"chain": {"round_confirmations": -1}}, r"chain.round_confirmations: -1 is out of range"),
        ({"chain": {"http_vhosts": ["localhost:8545"]}}, r"chain.http_vhosts: 'localhost:8545' is not a host name"),
        ({"chain": {"http_corsdomain": ["app.example"]}}, r"chain.http_corsdomain: 'app.example' must be"),
        ({"metrics": {"port": -1}}, r"metrics.port"),
        ({"rpc": []}, r"\[rpc\] must be a table"),
    ],
)
def test_bad_values_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(raw)


def test_overrides_validate_and_ignore_unset():
    config = Config().with_overrides(p2p={"bootstrap": None, "max_peers": 7})
    assert config.p2p.max_peers == 7 and config.p2p.bootstrap == []
    with pytest.raises(ConfigError, match="chain.rpc_url"):
        Config().with_overrides(chain={"rpc_url": "nope"})


def test_missing_and_broken_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path)
    (tmp_path / "config.toml").write_text("[p2p\n")
    with pytest.raises(ConfigError, match="config.toml"):
        load_config(tmp_path)


def test_an_external_chain_needs_its_contract_addresses():
    with pytest.raises(ConfigError, match="chain.registry and chain.token"):
        config_from_dict({"chain": {"rpc_url": "http://127.0.0.1:8545"}})
    with pytest.raises(ConfigError, match="chain.registry: '0x12' is not"):
        config_from_dict({"chain": {"registry": "0x12"}})
    ok = {"rpc_url": "http://127.0.0.1:8545", "registry": "0x" + "ab" * 20, "token": "0x" + "cd" * 20}
    assert config_from_dict({"chain": ok}).chain.registry == ok["registry"]
