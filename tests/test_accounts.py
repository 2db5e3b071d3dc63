"""account_balance and account_transfer on the embedded chain with the real stake token:
gas and stake move, and every bad request is refused before anything is signed."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
import trio
from eth_account import Account
from eth_utils import keccak, to_checksum_address
from test_client import ALICE, BOB, FAST, SEALER, Sealer, genesis

from flockd.chain.client.addresses import STAKE_TOKEN_ADDRESS, TASK_REGISTRY_ADDRESS
from flockd.chain.client.backends import InProcessBackend
from flockd.chain.client.contract import ContractClient
from flockd.chain.client.registry import Token
from flockd.chain.node.embedded import EmbeddedChain
from flockd.ctl import parse_params, with_whole_units
from flockd.rpc.account import ACCOUNT_ERROR, AccountNamespace
from flockd.rpc.dispatch import Dispatcher
from flockd.rpc.errors import INVALID_PARAMS, RPCError

CAROL_ACCOUNT = Account.from_key(keccak(b"carol"))
CAROL = to_checksum_address(CAROL_ACCOUNT.address)


def bad_checksum(address: str) -> str:
    """The same address with one letter's case flipped: a typo EIP-55 catches."""
    i = next(i for i, c in enumerate(address) if i > 1 and c.isalpha())
    return address[:i] + address[i].swapcase() + address[i + 1:]


ALICE_GAS, ALICE_STAKE = 10**21, 10**24  # as tests.test_client.genesis funds her


@pytest.fixture
async def accounts(nursery: trio.Nursery) -> AsyncIterator[dict[str, AccountNamespace]]:
    chain = EmbeddedChain(genesis(), None, SEALER)
    nursery.start_soon(Sealer(chain).run)
    backend = InProcessBackend.for_chain(chain)
    yield {
        who.address: AccountNamespace(Token(ContractClient(backend, who, FAST), STAKE_TOKEN_ADDRESS))
        for who in (ALICE, BOB, CAROL_ACCOUNT)
    }
    chain.close()


async def test_balances_of_any_address(accounts: dict[str, AccountNamespace]) -> None:
    alice = accounts[ALICE.address]
    mine = await alice.account_balance()
    assert (mine["address"], mine["gas_wei"], mine["stake"]) == (ALICE.address, ALICE_GAS, ALICE_STAKE)
    assert mine["token"] == to_checksum_address(STAKE_TOKEN_ADDRESS)
    nobody = await alice.account_balance(CAROL.lower())
    assert (nobody["address"], nobody["gas_wei"], nobody["stake"]) == (CAROL, 0, 0)


async def test_gas_and_stake_move_by_transfer(accounts: dict[str, AccountNamespace]) -> None:
    alice = accounts[ALICE.address]
    sent = await alice.account_transfer(CAROL, "5e18", "gas")
    assert (sent["asset"], sent["amount"], sent["to"], sent["from"]) == ("gas", 5 * 10**18, CAROL, ALICE.address)
    assert sent["block"] >= 1 and sent["tx_hash"].startswith("0x")
    staked = await alice.account_transfer(CAROL, 7 * 10**18, "stake")
    assert staked["asset"] == "stake"
    carol = await alice.account_balance(CAROL)
    assert (carol["gas_wei"], carol["stake"]) == (5 * 10**18, 7 * 10**18)
    assert (await alice.account_balance())["stake"] == ALICE_STAKE - 7 * 10**18


@pytest.mark.parametrize(("to", "amount", "asset", "code", "message"), [
    ("0x1234", 1, "gas", INVALID_PARAMS, "is not an address"),
    (bad_checksum(CAROL), 1, "gas", INVALID_PARAMS, "checksum"),
    (CAROL, 0, "gas", INVALID_PARAMS, "must be > 0"),
    (CAROL, -3, "stake", INVALID_PARAMS, "must be > 0"),
    (CAROL, "ten", "gas", INVALID_PARAMS, "not a whole number"),
    (CAROL, ALICE_GAS, "gas", ACCOUNT_ERROR, "insufficient funds"),
    (CAROL, ALICE_STAKE + 1, "stake", ACCOUNT_ERROR, "insufficient stake"),
    (to_checksum_address(STAKE_TOKEN_ADDRESS), 1, "stake", INVALID_PARAMS, "stake token's own address"),
    ("0x" + "00" * 20, 1, "gas", INVALID_PARAMS, "zero address"),
])
async def test_bad_transfers_are_refused_with_a_reason(
    accounts: dict[str, AccountNamespace], to: str, amount: object, asset: str, code: int, message: str
) -> None:
    alice = accounts[ALICE.address]
    with pytest.raises(RPCError, match=message) as caught:
        await alice.account_transfer(to, amount, asset)  # type: ignore[arg-type]
    assert caught.value.code == code
    assert (await alice.account_balance(CAROL))["gas_wei"] == 0


async def test_a_holder_without_gas_cannot_send_stake(accounts: dict[str, AccountNamespace]) -> None:
    await accounts[ALICE.address].account_transfer(CAROL, 10**18, "stake")
    carol = accounts[CAROL]
    with pytest.raises(RPCError, match="insufficient funds for gas") as caught:
        await carol.account_transfer(ALICE.address, 10**18, "stake")
    assert caught.value.code == ACCOUNT_ERROR


async def test_the_namespace_answers_through_the_dispatcher(accounts: dict[str, AccountNamespace]) -> None:
    dispatcher = Dispatcher([accounts[ALICE.address]])
    assert {"account_balance", "account_transfer"} <= {m.name for m in dispatcher.methods()}
    reply = await dispatcher.handle_line(b'{"jsonrpc":"2.0","id":1,"method":"account_transfer","params":{"to":"0x12","amount":1,"asset":"gas"}}')
    assert reply is not None and b"-32602" in reply and b"is not an address" in reply


async def test_gas_sent_to_a_contract_that_refuses_it_is_an_account_error(accounts: dict[str, AccountNamespace]) -> None:
    registry = to_checksum_address(TASK_REGISTRY_ADDRESS)  # no payable default: it reverts
    with pytest.raises(RPCError, match=f"reverted in {registry}") as caught:
        await accounts[ALICE.address].account_transfer(registry, 1, "gas")
    assert caught.value.code == ACCOUNT_ERROR


def test_flockctl_keeps_exponent_amounts_exact() -> None:
    assert parse_params(["to=0xabc", "amount=25e18", "asset=stake"]) == {"to": "0xabc", "amount": "25e18", "asset": "stake"}
    assert parse_params(["amount=1000"]) == {"amount": 1000}
    assert parse_params(["x=1.5"]) == {"x": 1.5}


def test_flockctl_shows_whole_units_beside_base_units() -> None:
    shown = with_whole_units({"gas_wei": 1500 * 10**18 + 5 * 10**17, "stake": 0, "asset": "gas", "amount": 7})
    assert shown == {"gas_wei": f"{1500 * 10**18 + 5 * 10**17} (1,500.5)", "stake": "0 (0)", "asset": "gas",
                     "amount": "7 (0.000000000000000007)"}
