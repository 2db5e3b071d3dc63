"""`flockd deploy` on a real anvil (automining) puts an Arena and a Market there next to the
token and the registry, prints their addresses and writes them into config.toml; the
config loads and the Arena and Market clients read those contracts."""

import os
import subprocess
import sys

import httpx
import pytest
import trio
from anvil_node import AnvilNode
from eth_utils import to_canonical_address

from flockd.chain.client.arena import Arena
from flockd.chain.client.backends import HttpBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.market import Market
from flockd.config import load_config
from flockd.datadir import init_datadir, initial_config, record_deployment
from flockd.identity.keystore import load_identity
from flockd.rpc.errors import RPCError
from flockd.testnet.cluster import PASSWORD as CLUSTER_PASSWORD
from flockd.testnet.cluster import Cluster

pytestmark = pytest.mark.anvil
PASSWORD = "deploy test password"


@pytest.fixture
def anvil():
    node = AnvilNode()
    yield node
    node.stop()


def deploy(datadir, url: str, password: str) -> dict[str, str]:
    """`flockd deploy` as an operator runs it; the addresses it printed, by name."""
    deployed = subprocess.run(
        [sys.executable, "-m", "flockd.cli", "deploy", "--datadir", str(datadir), "--chain-rpc", url],
        env={**os.environ, "FLOCKD_PASSWORD": password}, capture_output=True, text=True, timeout=180,
    )
    assert deployed.returncode == 0, deployed.stderr
    return {name: value.strip() for name, value in (line.split(None, 1) for line in deployed.stdout.splitlines())}


def fund(url: str, address: str) -> None:
    httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [address, hex(10**21)]})


def test_deploy_gives_working_arena_and_market_addresses(tmp_path, anvil):
    url = anvil.url()
    init_datadir(tmp_path, PASSWORD, initial_config(), light_kdf=True)
    fund(url, load_identity(tmp_path, PASSWORD).address)
    printed = deploy(tmp_path, url, PASSWORD)
    chain = load_config(tmp_path).chain
    assert (chain.rpc_url, chain.registry, chain.token, chain.arena, chain.market) == (
        url, printed["registry"], printed["token"], printed["arena"], printed["market"])
    assert len({chain.registry, chain.token, chain.arena, chain.market, printed["verifier"]}) == 5

    async def read() -> None:
        async with HttpBackend(url) as backend:
            client = ContractClient(backend)
            arena = Arena(client, to_canonical_address(chain.arena))
            market = Market(client, to_canonical_address(chain.market))
            assert await arena.competition_count() == 0
            assert await arena.token() == to_canonical_address(chain.token)
            assert await market.has_code() and await market.listing_count() == 0
            assert await market.registry() == to_canonical_address(chain.registry)

    trio.run(read)


@pytest.mark.slow
def test_a_daemon_uses_the_configured_arena_and_market(short_tmp, anvil):
    """A daemon on anvil reads the deployed Arena and Market; with their addresses removed
    from its config, its arena_* and market_* calls say which setting is missing."""
    url = anvil.url()
    cluster = Cluster(short_tmp, 1)
    cluster.init()
    (daemon,) = cluster.daemons
    fund(url, daemon.address)
    printed = deploy(daemon.datadir, url, CLUSTER_PASSWORD)
    try:
        cluster.start()
        assert daemon.call("chain_status")["kind"] == "external"
        with pytest.raises(RPCError, match="no competition 1"):  # the Arena answered: it has none
            daemon.call("arena_status", {"competition_id": 1})
        assert daemon.call("market_listings") == []
        assert cluster.stop() == [0]
        record_deployment(daemon.datadir, url, printed["registry"], printed["token"])  # no arena, no market
        cluster.start()
        with pytest.raises(RPCError, match=r"no Arena on this external chain: set \[chain\] arena in config.toml"):
            daemon.call("arena_status", {"competition_id": 1})
        with pytest.raises(RPCError, match=r"no Market on this external chain: set \[chain\] market in config.toml"):
            daemon.call("market_listings")
    finally:
        codes = cluster.stop()
    assert codes == [0]
