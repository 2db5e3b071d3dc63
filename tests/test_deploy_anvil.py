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
from flockd.datadir import init_datadir, initial_config
from flockd.identity.keystore import load_identity

pytestmark = pytest.mark.anvil
PASSWORD = "deploy test password"


@pytest.fixture
def anvil():
    node = AnvilNode()
    yield node
    node.stop()


def test_deploy_gives_working_arena_and_market_addresses(tmp_path, anvil):
    url = anvil.url()
    init_datadir(tmp_path, PASSWORD, initial_config(), light_kdf=True)
    address = load_identity(tmp_path, PASSWORD).address
    httpx.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "anvil_setBalance", "params": [address, hex(10**21)]})
    deployed = subprocess.run(
        [sys.executable, "-m", "flockd.cli", "deploy", "--datadir", str(tmp_path), "--chain-rpc", url],
        env={**os.environ, "FLOCKD_PASSWORD": PASSWORD}, capture_output=True, text=True, timeout=180,
    )
    assert deployed.returncode == 0, deployed.stderr
    printed = {name: value.strip() for name, value in (line.split(None, 1) for line in deployed.stdout.splitlines())}
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
