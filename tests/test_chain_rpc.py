"""The eth JSON-RPC namespace: web3 8 over HTTP reads and writes the embedded chain; bad input answered."""

from __future__ import annotations

import functools
import json

import httpx
import pytest
import trio
import vyper
from eth_account import Account
from eth_keys import keys
from store_contract import STORE_SOURCE
from web3 import Web3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.middleware import ExtraDataToPOAMiddleware

from flockd.asgi import serve_asgi
from flockd.chain.ethrpc.eth_api import EthAPI
from flockd.chain.ethrpc.eth_http import MAX_BODY, EthHTTPApp, HTTPAccess, serve_http
from flockd.chain.node.embedded import EmbeddedChain
from flockd.chain.node.genesis import Genesis

T0 = 1_700_000_000
SEALER = keys.PrivateKey(b"\x01" * 32)
ALICE = Account.from_key(b"\x0a" * 32)
BOB = Account.from_key(b"\x0b" * 32)
JSON = {"content-type": "application/json"}



STORE_ADDRESS = "0x" + "57" * 20
STORE = vyper.compile_code(STORE_SOURCE, output_formats=["abi", "bytecode", "bytecode_runtime"])


def make_chain() -> EmbeddedChain:
    # The store contract is deployed at genesis: the embedded chain runs no other code.
    genesis = Genesis.create(
        chain_id=4242,
        authorities=[SEALER.public_key.to_canonical_address()],
        timestamp=T0,
        alloc={ALICE.address: {"balance": 10**21},
               STORE_ADDRESS: {"code": bytes.fromhex(STORE["bytecode_runtime"][2:])}},
    )
    return EmbeddedChain(genesis, None, SEALER)


def seal(chain: EmbeddedChain) -> None:
    chain.seal_block(chain.next_seal_time(0))


def web3_session(port: int, chain: EmbeddedChain) -> None:
    """Runs in a worker thread: web3's HTTPProvider is synchronous."""
    w3 = Web3(Web3.HTTPProvider(f"http://127.0.0.1:{port}", request_kwargs={"timeout": 10}))
    # As for any PoA chain (geth clique too): the seal makes extraData longer than 32 bytes.
    w3.middleware_onion.inject(ExtraDataToPOAMiddleware, layer=0)
    assert w3.eth.chain_id == 4242 and w3.net.version == "4242"
    seal(chain)
    assert w3.eth.block_number == 1
    block = w3.eth.get_block("latest")
    assert block["number"] == 1 and block["hash"] == chain.head.hash and block["miner"] == chain_address(chain)
    assert w3.eth.get_block(0)["timestamp"] == T0

    # A plain transfer, signed locally, fees filled by web3 from our fee methods.
    tx = {"to": BOB.address, "value": 777, "gas": 21_000, "nonce": w3.eth.get_transaction_count(ALICE.address),
          "chainId": w3.eth.chain_id, "maxFeePerGas": w3.eth.gas_price * 2,
          "maxPriorityFeePerGas": w3.eth.max_priority_fee}
    tx_hash = w3.eth.send_raw_transaction(ALICE.sign_transaction(tx).raw_transaction)
    assert w3.eth.get_transaction(tx_hash)["blockNumber"] is None
    seal(chain)
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    assert receipt["status"] == 1 and receipt["gasUsed"] == 21_000 and receipt["blockNumber"] == 2
    assert w3.eth.get_balance(BOB.address) == 777
    assert w3.eth.get_transaction(tx_hash)["from"] == ALICE.address

    # Deploying is refused (only genesis code runs), with the reason, as geth words a refusal.
    factory = w3.eth.contract(abi=STORE["abi"], bytecode=STORE["bytecode"])
    deploy = factory.constructor().build_transaction({"from": ALICE.address, "nonce": 1, "gas": 500_000})
    with pytest.raises(Web3RPCError, match="ForbiddenTarget"):
        w3.eth.send_raw_transaction(ALICE.sign_transaction(deploy).raw_transaction)
    # The genesis contract through web3's own contract layer: build_transaction
    # (estimateGas, fees), call, revert reason, events.
    contract = w3.eth.contract(address=Web3.to_checksum_address(STORE_ADDRESS), abi=STORE["abi"])
    store = contract.functions.store(42).build_transaction({"from": ALICE.address, "nonce": 1})
    tx_hash = w3.eth.send_raw_transaction(ALICE.sign_transaction(store).raw_transaction)
    seal(chain)
    receipt = w3.eth.get_transaction_receipt(tx_hash)
    (event,) = contract.events.Stored().process_receipt(receipt)
    assert event["args"]["value"] == 42 and event["args"]["who"] == ALICE.address
    assert contract.functions.stored().call() == 42
    # "safe" = head - confirmations (2): the value is not stored there yet, then it is.
    assert contract.functions.stored().call(block_identifier="safe") == 0
    seal(chain)
    seal(chain)
    assert contract.functions.stored().call(block_identifier="safe") == 42
    with pytest.raises(ContractLogicError, match="unlucky"):
        contract.functions.store(13).call({"from": ALICE.address})
    (log,) = contract.events.Stored().get_logs(from_block=0)
    assert log["transactionHash"] == tx_hash
    history = w3.eth.fee_history(3, "latest", [50])
    assert len(history["baseFeePerGas"]) == 4 and len(history["reward"]) == 3


def chain_address(chain: EmbeddedChain) -> str:
    return Web3.to_checksum_address(chain.sealer_address)


async def test_web3_over_http_reads_and_writes_the_chain():
    chain = make_chain()
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, 0, EthAPI(chain))
        await trio.to_thread.run_sync(web3_session, port, chain)
        # Transport limits: GET refused, oversized body refused.
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            assert (await client.get("/")).status_code == 405
            too_large = b" " * (MAX_BODY + 1)
            assert (await client.post("/", content=too_large, headers=JSON)).status_code == 413
        nursery.cancel_scope.cancel()


def test_malformed_requests_get_specific_errors():
    api = EthAPI(make_chain())

    def ask(body) -> dict:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return json.loads(api.handle_body(raw))

    def req(method, *params):
        return ask({"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)})

    assert ask(b"{not json")["error"]["code"] == -32700
    assert ask({"id": 1, "method": "eth_chainId"})["error"]["code"] == -32600
    assert ask([])["error"]["code"] == -32600
    assert ask([{"jsonrpc": "2.0", "id": i, "method": "eth_chainId"} for i in range(101)])["error"]["code"] == -32600
    assert req("eth_nope")["error"]["code"] == -32601
    assert req("eth_getBalance", "0x1234")["error"]["code"] == -32602  # not an address
    assert req("eth_getBalance", "0x" + "00" * 20, "0xzz")["error"]["code"] == -32602
    assert req("eth_getBlockByNumber")["error"]["code"] == -32602  # missing param
    assert req("eth_getBlockByNumber", "0x99", False)["result"] is None
    assert req("eth_getBalance", "0x" + "00" * 20, "0x99")["error"]["code"] == -32000
    assert "NonceGap" in req("eth_sendRawTransaction", "0x" + bytes(ALICE.sign_transaction(
        {"to": BOB.address, "value": 1, "gas": 21_000, "gasPrice": 10**10, "nonce": 5, "chainId": 4242}
    ).raw_transaction).hex())["error"]["message"]
    assert "MalformedTx" in req("eth_sendRawTransaction", "0x02c0")["error"]["message"]
    assert api.handle_body(json.dumps({"jsonrpc": "2.0", "method": "eth_chainId"}).encode()) is None  # notification
    batch = ask([{"jsonrpc": "2.0", "id": 1, "method": "eth_chainId"}, {"jsonrpc": "2.0", "id": 2, "method": "eth_blockNumber"}])
    assert [r["result"] for r in batch] == ["0x1092", "0x0"]
    # Every error reply is counted by code, for the metrics endpoint.
    assert api.error_counts == {-32700: 1, -32600: 3, -32601: 1, -32602: 3, -32000: 3}


JUMP_LOOP = "0x5b600056"  # JUMPDEST PUSH1 0 JUMP: loops until the gas runs out
GAS_LEFT = "0x5a60005260206000f3"  # GAS PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN: returns the gas it has
HUGE_GAS = "0xffffffffff"


def call_body(method: str, call: dict, request_id: int = 1) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": request_id, "method": method, "params": [call, "latest"]}).encode()


@pytest.mark.parametrize("method", ["eth_call", "eth_estimateGas"])
def test_a_looping_call_is_stopped_by_its_time_budget(method):
    # Capped at the block gas limit alone, the loop would still run ~10 s of py-evm.
    api = EthAPI(make_chain(), call_timeout=0.5)
    reply = json.loads(api.handle_body(call_body(method, {"data": JUMP_LOOP, "gas": HUGE_GAS})))
    assert reply["error"]["code"] == -32000
    assert "execution aborted" in reply["error"]["message"] and "0.5" in reply["error"]["message"]


def test_call_gas_is_capped_at_the_block_gas_limit():
    chain = make_chain()
    api = EthAPI(chain)
    reply = json.loads(api.handle_body(call_body("eth_call", {"data": GAS_LEFT, "gas": HUGE_GAS})))
    assert int(reply["result"], 16) < chain.genesis.gas_limit


def test_a_running_call_does_not_hold_up_sealing():
    chain = make_chain()
    api = EthAPI(chain, call_timeout=60)
    replies: list[dict] = []

    def looping_call() -> None:
        replies.append(json.loads(api.handle_body(call_body("eth_call", {"data": JUMP_LOOP}))))

    import threading

    caller = threading.Thread(target=looping_call)
    caller.start()
    try:
        seal(chain)  # while the call runs
        assert chain.head.block_number == 1
        assert caller.is_alive() and not replies  # the call was still running meanwhile
    finally:
        api.abort_calls()  # what a stopping node does: running calls end at their next jump
        caller.join(timeout=30)
    assert not caller.is_alive()
    assert "stopping" in replies[0]["error"]["message"]


CHAIN_ID = {"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []}


async def test_http_refuses_what_a_web_page_could_send():
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_http, 0, EthAPI(make_chain()))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            # A page may POST text/plain cross-origin without a preflight: refused.
            plain = await client.post("/", content=json.dumps(CHAIN_ID), headers={"content-type": "text/plain"})
            assert plain.status_code == 415
            # DNS rebinding: the page's own name resolves to 127.0.0.1.
            rebound = await client.post("/", json=CHAIN_ID, headers={"host": f"evil.example:{port}"})
            assert rebound.status_code == 403
            from_page = await client.post("/", json=CHAIN_ID, headers={"origin": "http://evil.example"})
            assert from_page.status_code == 403
            preflight = await client.options("/", headers={
                "origin": "http://evil.example", "access-control-request-method": "POST",
                "access-control-request-headers": "content-type",
            })
            assert preflight.status_code == 403 and "access-control-allow-origin" not in preflight.headers
            # What tools send passes: an IP or localhost as Host, JSON, no Origin.
            for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost"):
                ok = await client.post("/", json=CHAIN_ID, headers={"host": host})
                assert ok.status_code == 200 and ok.json()["result"] == "0x1092"
            charset = await client.post("/", content=json.dumps(CHAIN_ID), headers={"content-type": "application/json; charset=utf-8"})
            assert charset.status_code == 200
        nursery.cancel_scope.cancel()


async def test_http_serves_the_hosts_and_origins_it_is_told_to():
    access = HTTPAccess(vhosts=("node.example",), cors_origins=("http://app.example",))
    async with trio.open_nursery() as nursery:
        port = await nursery.start(functools.partial(serve_http, 0, EthAPI(make_chain()), access=access))
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            named = await client.post("/", json=CHAIN_ID, headers={"host": f"node.example:{port}"})
            assert named.status_code == 200
            assert (await client.post("/", json=CHAIN_ID, headers={"host": "localhost"})).status_code == 403
            preflight = await client.options("/", headers={
                "origin": "http://app.example", "access-control-request-method": "POST",
            })
            assert preflight.status_code == 204
            assert preflight.headers["access-control-allow-origin"] == "http://app.example"
            assert "content-type" in preflight.headers["access-control-allow-headers"]
            page = await client.post("/", json=CHAIN_ID, headers={"origin": "http://app.example"})
            assert page.status_code == 200 and page.headers["access-control-allow-origin"] == "http://app.example"
            other = await client.post("/", json=CHAIN_ID, headers={"origin": "http://evil.example"})
            assert other.status_code == 403
        nursery.cancel_scope.cancel()


async def test_http_requests_in_progress_are_bounded():
    api = EthAPI(make_chain(), call_timeout=2)
    app = EthHTTPApp(api, HTTPAccess(), max_pending=2)
    statuses: list[int] = []
    async with trio.open_nursery() as nursery:
        port = await nursery.start(serve_asgi, app, 0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:

            async def post_loop() -> None:
                reply = await client.post("/", content=call_body("eth_call", {"data": JUMP_LOOP}), headers=JSON)
                statuses.append(reply.status_code)

            async with trio.open_nursery() as clients:
                for _ in range(2):
                    clients.start_soon(post_loop)
                while app.pending < 2:
                    await trio.sleep(0.01)
                busy = await client.post("/", json=CHAIN_ID)
                assert busy.status_code == 503
            assert statuses == [200, 200]  # each answered (with its aborted-call error)
            assert (await client.post("/", json=CHAIN_ID)).status_code == 200
        nursery.cancel_scope.cancel()


async def test_the_daemons_own_calls_are_not_held_to_the_http_budget():
    # A loop sent over HTTP is stopped at 5 s; the node's own estimate of its finalise must
    # not be (on a loaded machine it took longer, three attempts failed and the round stuck).
    # Both still reach the same chain and gossip what they send.
    from flockd.chain.node.service import OWN_CALL_TIMEOUT, ChainService
    from flockd.p2p.host import P2PService

    service = ChainService(make_chain(), P2PService(b"\x07" * 32, network_id="budget"))
    assert service.api.call_timeout == 5.0
    assert service.own_api.call_timeout == OWN_CALL_TIMEOUT > service.api.call_timeout
    assert service.own_api.chain is service.api.chain
