"""account_*: gas and stake-token balances of any address, and transfers signed by this
node's key (the same contract client the tasks use, so one nonce sequence).

Amounts are whole base units: wei for gas, 10^-18 token for stake. A transfer returns once
its transaction has the node's usual confirmations, as task_join does.
"""

from __future__ import annotations

from typing import Any, Literal

from eth_utils import to_checksum_address

from flockd.chain.client.backends import ChainError
from flockd.chain.client.contract import ContractRevert
from flockd.chain.client.registry import Token
from flockd.chain.node.genesis import GenesisError, parse_address, parse_amount
from flockd.rpc.errors import INVALID_PARAMS, RPCError

ACCOUNT_ERROR = -32030
PLAIN_TRANSFER_GAS = 21_000  # a value transfer to an account without code
ZERO_ADDRESS = bytes(20)


class AccountNamespace:
    namespace = "account"

    def __init__(self, token: Token) -> None:
        self._token = token
        self._client = token.client

    async def account_balance(self, address: str | None = None) -> dict[str, Any]:
        """Gas (wei) and stake tokens (base units) held by an address (default: this node)."""
        who = self._client.address if address is None else _address("address", address)
        try:
            gas, stake = await self._client.balance(who), await self._token.balance_of(who)
        except ChainError as exc:
            raise RPCError(ACCOUNT_ERROR, f"chain: {type(exc).__name__}: {exc}") from None
        return {
            "address": to_checksum_address(who),
            "gas_wei": gas,
            "stake": stake,
            "token": to_checksum_address(self._token.address),
        }

    async def account_transfer(self, to: str, amount: int | str, asset: Literal["gas", "stake"]) -> dict[str, Any]:
        """Send gas (wei) or stake tokens (base units, e.g. "25e18") from this node's account."""
        target = _address("to", to)
        if target == ZERO_ADDRESS:
            raise RPCError(INVALID_PARAMS, "to: the zero address burns what it receives")
        if target == self._token.address:
            raise RPCError(INVALID_PARAMS, "to: the stake token's own address: tokens sent there are lost")
        try:
            value = parse_amount("amount", amount)
        except GenesisError as exc:
            raise RPCError(INVALID_PARAMS, str(exc)) from None
        try:
            await self._check_funds(asset, value)
            if asset == "gas":
                receipt = await self._client.transact(target, b"", value=value, gas=PLAIN_TRANSFER_GAS)
            else:
                receipt = await self._token.transfer(target, value)
        except ContractRevert as exc:
            refused_by = "the stake token" if asset == "stake" else f"{to_checksum_address(target)} (a contract?)"
            raise RPCError(ACCOUNT_ERROR, f"the transfer reverted in {refused_by}: {exc.reason}") from None
        except ChainError as exc:
            raise RPCError(ACCOUNT_ERROR, f"transfer failed: {type(exc).__name__}: {exc}") from None
        return {
            "asset": asset,
            "amount": value,
            "from": to_checksum_address(self._client.address),
            "to": to_checksum_address(target),
            "tx_hash": "0x" + receipt.tx_hash.hex(),
            "block": receipt.block_number,
        }

    async def _check_funds(self, asset: str, value: int) -> None:
        """Refuse what the chain would refuse, with the numbers, before signing anything."""
        me = self._client.address
        gas_held = await self._client.balance(me)
        if asset == "stake":
            held = await self._token.balance_of(me)
            if held < value:
                raise RPCError(ACCOUNT_ERROR, f"insufficient stake tokens: {to_checksum_address(me)} holds {held}, asked {value}")
            value = 0
        fee = PLAIN_TRANSFER_GAS * (await self._client.fees()).max_fee
        if gas_held < value + fee:
            what = "for gas" if asset == "stake" else f"for {value} wei plus a fee of up to {fee}"
            raise RPCError(ACCOUNT_ERROR, f"insufficient funds {what}: {to_checksum_address(me)} holds {gas_held} wei")


def _address(name: str, value: str) -> bytes:
    try:
        return parse_address(name, value)
    except GenesisError as exc:
        raise RPCError(INVALID_PARAMS, str(exc)) from None
