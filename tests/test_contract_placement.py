"""[chain] arena / market: validated like the registry's address, written by `flockd deploy`
(record_deployment, also into a config.toml from before these keys), and where the node's
Arena and Market clients point: the configured address, else the genesis one on the
embedded chain, else (an external chain) a client whose every call fails saying why."""

import pytest
from eth_account import Account
from test_anvil import MEMBERS, embedded_env, genesis
from test_arena_roles import CREATOR, SPEC, node, params

from flockd.arena.service import ArenaError
from flockd.chain.client.addresses import ARENA_ADDRESS, MARKET_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.arena import Arena
from flockd.chain.client.backends import HttpBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.market import Market
from flockd.chain.client.placement import ContractNotConfigured, place_contract
from flockd.chain.client.registry import Token
from flockd.config import (
    CONFIG_FILE,
    DEFAULT_CONFIG_TOML,
    ConfigError,
    config_from_dict,
    load_config,
)
from flockd.datadir import record_deployment

EXTERNAL = {"rpc_url": "http://127.0.0.1:8545", "registry": "0x" + "ab" * 20, "token": "0x" + "cd" * 20}
ARENA, MARKET = "0x" + "11" * 20, "0x" + "22" * 20


@pytest.mark.parametrize("key", ["arena", "market"])
@pytest.mark.parametrize("value", ["0x12", "11" * 20, "0x" + "zz" * 20, "0x" + "11" * 21])
def test_a_bad_arena_or_market_address_names_the_key(key, value):
    with pytest.raises(ConfigError, match=rf"chain.{key}: '{value}' is not a 0x-prefixed 20-byte address"):
        config_from_dict({"chain": {**EXTERNAL, key: value}})


def test_arena_and_market_are_optional_and_load():
    assert config_from_dict({"chain": EXTERNAL}).chain.arena == ""
    chain = config_from_dict({"chain": {**EXTERNAL, "arena": ARENA, "market": MARKET}}).chain
    assert (chain.arena, chain.market) == (ARENA, MARKET)
    assert 'arena = ""' in DEFAULT_CONFIG_TOML and 'market = ""' in DEFAULT_CONFIG_TOML


def test_record_deployment_adds_the_lines_an_older_config_lacks(tmp_path):
    old = "\n".join(line for line in DEFAULT_CONFIG_TOML.splitlines() if not line.startswith(("arena =", "market =")))
    (tmp_path / CONFIG_FILE).write_text(old + "\n")
    record_deployment(tmp_path, EXTERNAL["rpc_url"], EXTERNAL["registry"], EXTERNAL["token"], arena=ARENA, market=MARKET)
    chain = load_config(tmp_path).chain
    assert (chain.rpc_url, chain.registry, chain.token, chain.arena, chain.market) == (*EXTERNAL.values(), ARENA, MARKET)
    # a second deployment replaces the lines the first one wrote, adding none
    record_deployment(tmp_path, EXTERNAL["rpc_url"], EXTERNAL["registry"], EXTERNAL["token"], arena=MARKET, market=ARENA)
    assert (load_config(tmp_path).chain.arena, load_config(tmp_path).chain.market) == (MARKET, ARENA)
    assert (tmp_path / CONFIG_FILE).read_text().count("arena =") == 1


def _client() -> ContractClient:
    return ContractClient(HttpBackend("http://127.0.0.1:9"), Account.create())  # never reached


def test_placement_prefers_the_configured_address_then_the_genesis_one():
    client = _client()
    assert place_contract(client, external=True, configured=ARENA, genesis=ARENA_ADDRESS, name="Arena",
                          key="arena") == (client, bytes.fromhex(ARENA[2:]))
    assert place_contract(client, external=False, configured="", genesis=MARKET_ADDRESS, name="Market",
                          key="market") == (client, MARKET_ADDRESS)


async def test_an_unconfigured_contract_on_an_external_chain_fails_every_call_in_one_line():
    client = _client()
    arena = Arena(*place_contract(client, external=True, configured="", genesis=ARENA_ADDRESS, name="Arena", key="arena"))
    market = Market(*place_contract(client, external=True, configured="", genesis=MARKET_ADDRESS, name="Market",
                                    key="market"))
    with pytest.raises(ContractNotConfigured, match=r"^no Arena on this external chain: set \[chain\] arena in config") as failed:
        await arena.competition_count()
    assert "\n" not in str(failed.value)
    with pytest.raises(ContractNotConfigured, match=r"set \[chain\] arena"):
        await arena.join(1, 1, 10)  # a transaction: refused before anything is signed or sent
    with pytest.raises(ContractNotConfigured, match=r"^no Market on this external chain: set \[chain\] market"):
        await market.has_code()
    with pytest.raises(ContractNotConfigured, match=r"set \[chain\] market"):
        await market.listing_count()


async def test_arena_create_approves_nothing_to_an_arena_it_cannot_use(tmp_path):
    """No Arena configured, or an Arena on another token: create fails before the approve."""
    async with embedded_env(genesis(arena=True)) as env:
        client = env.client(CREATOR)
        unconfigured = node(env, CREATOR, tmp_path)
        unconfigured.arena = Arena(*place_contract(client, external=True, configured="", genesis=ARENA_ADDRESS,
                                                   name="Arena", key="arena"))
        with pytest.raises(ContractNotConfigured, match=r"set \[chain\] arena"):
            await unconfigured.create(SPEC, None, params(1))
        assert await unconfigured.token.allowance(MEMBERS[CREATOR].address, bytes(20)) == 0
        elsewhere = node(env, CREATOR, tmp_path)
        elsewhere.token = Token(client, TASK_REGISTRY_ADDRESS)  # the node's token per a wrong [chain] token
        with pytest.raises(ArenaError, match="takes another token"):
            await elsewhere.create(SPEC, None, params(1))

