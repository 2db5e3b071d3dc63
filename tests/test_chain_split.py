"""The chain package's split: a daemon on an external chain loads no embedded node.

py-evm's top-level packages (`eth`, `evm`) are heavy and the embedded node is the only
thing that needs them. Each check runs in a fresh interpreter, so what other tests imported
cannot hide an import.
"""

import subprocess
import sys
import textwrap

import pytest

PY_EVM_PACKAGES = ("eth", "evm")

CLIENT_MODULES = (
    "flockd.chain.client.abc",
    "flockd.chain.client.addresses",
    "flockd.chain.client.arena",
    "flockd.chain.client.arena_settlement",
    "flockd.chain.client.artifacts",
    "flockd.chain.client.backends",
    "flockd.chain.client.contract",
    "flockd.chain.client.registry",
)


def loaded_py_evm(script: str) -> list[str]:
    """The py-evm packages loaded after `script` runs in a fresh interpreter."""
    check = textwrap.dedent(script) + textwrap.dedent(
        f"""
        import sys
        print(sorted(name for name in {PY_EVM_PACKAGES!r} if name in sys.modules))
        """
    )
    out = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return eval(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("module", CLIENT_MODULES)
def test_client_modules_import_no_py_evm(module):
    assert loaded_py_evm(f"import {module}") == []


def test_the_daemon_on_an_external_chain_loads_no_embedded_node(short_tmp):
    """Everything `Node` opens before its services start, with `[chain] rpc_url` set: keys,
    p2p, the HTTP backend, the contract client, the task service and every RPC namespace.
    No node is reached: the backend connects on its first request."""
    script = f"""
        from pathlib import Path

        from flockd.config import ChainSection, Config
        from flockd.identity.keystore import create_identity
        from flockd.node import Node

        datadir = Path({str(short_tmp)!r})
        create_identity(datadir, "pw", light_kdf=True)
        address = "0x" + "11" * 20
        config = Config(chain=ChainSection(rpc_url="http://127.0.0.1:9", registry=address, token=address))
        config.validate()
        node = Node(config, datadir, "pw")
        node._open_services()
        node._add_service_namespaces()
        assert node.chain_service is None
        assert type(node.chain_backend).__name__ == "HttpBackend"
        assert "account_transfer" in [method.name for method in node.rpc_dispatcher.methods()]
    """
    assert loaded_py_evm(script) == []


def test_the_embedded_chain_does_load_py_evm():
    """The check above can see py-evm when it is there."""
    assert loaded_py_evm("import flockd.chain.node.embedded") == ["eth"]
