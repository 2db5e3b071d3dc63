"""Where the embedded chain's genesis contracts live: the client's default addresses.

`flockd.chain.node.deploy` runs their constructors at genesis from DEPLOYER; the addresses
follow from the deployer and its nonce alone, so a client computes them without py-evm.
"""

from __future__ import annotations

from eth_keys.datatypes import PrivateKey
from eth_utils import keccak
from rlp import encode as rlp_encode

# Fixed so that every node derives byte-identical genesis accounts. The key signs
# nothing on a live chain: it only names the creator of the genesis contracts.
DEPLOYER_KEY = PrivateKey(keccak(b"flockd genesis deployer"))
DEPLOYER = DEPLOYER_KEY.public_key.to_canonical_address()


def contract_address(sender: bytes, nonce: int) -> bytes:
    return keccak(rlp_encode([sender, nonce]))[12:]


STAKE_TOKEN_ADDRESS = contract_address(DEPLOYER, 0)
TASK_REGISTRY_ADDRESS = contract_address(DEPLOYER, 1)
ARENA_ADDRESS = contract_address(DEPLOYER, 2)  # in the daemon's genesis (network.py), not in flockd.sim's chain

# The Market has a deployer of its own, so that its address does not depend on which other
# genesis contracts (the Arena) the deployer above created before it.
MARKET_DEPLOYER_KEY = PrivateKey(keccak(b"flockd genesis market deployer"))
MARKET_DEPLOYER = MARKET_DEPLOYER_KEY.public_key.to_canonical_address()
MARKET_ADDRESS = contract_address(MARKET_DEPLOYER, 0)
