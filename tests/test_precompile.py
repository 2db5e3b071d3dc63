"""The ECVRF verification precompile: direct decoding and through the EVM."""

from __future__ import annotations

import pytest
from eth.exceptions import VMError
from eth.vm.forks.prague import PragueVM
from eth_keys.datatypes import PrivateKey
from eth_utils import keccak

from flockd import vrf
from flockd.chain.node.deploy import ScratchChain, TxFailed
from flockd.chain.node.precompile import (
    VRF_GAS,
    VRF_PRECOMPILE_ADDRESS,
    VRFPrecompileError,
    verify_input,
    with_vrf_precompile,
)

SK = keccak(b"precompile test key")
PK = vrf.public_key(SK)
ALPHA = keccak(b"seed")
PI = vrf.prove(SK, ALPHA)
GOOD = PK + PI + ALPHA


def flipped(data: bytes, index: int) -> bytes:
    out = bytearray(data)
    out[index] ^= 1
    return bytes(out)


def test_valid_input_returns_beta() -> None:
    assert verify_input(GOOD) == vrf.proof_to_hash(PI)
    assert len(verify_input(GOOD)) == 64


@pytest.mark.parametrize(
    "data",
    [
        b"",
        GOOD[:-1],
        GOOD + b"\x00",
        flipped(GOOD, 40),  # Gamma
        flipped(GOOD, 32 + 40),  # c
        flipped(GOOD, 32 + 60),  # s
        flipped(GOOD, 143),  # alpha: another seed
        vrf.public_key(keccak(b"other")) + PI + ALPHA,  # another key
        bytes(32) + PI + ALPHA,  # not a valid key
        b"\x01" + bytes(31) + PI + ALPHA,  # the identity: small order
        PK + bytes(80) + ALPHA,
    ],
)
def test_bad_input_is_rejected_with_a_vm_error(data: bytes) -> None:
    with pytest.raises(VRFPrecompileError) as info:
        verify_input(data)
    assert isinstance(info.value, VMError)  # py-evm turns it into a failed call


def test_vm_subclass_leaves_prague_untouched() -> None:
    vm = with_vrf_precompile(PragueVM)
    address = VRF_PRECOMPILE_ADDRESS
    stock = PragueVM.get_state_class().computation_class.get_precompiles()
    ours = vm.get_state_class().computation_class.get_precompiles()
    assert address not in stock
    assert address in ours
    assert set(stock) < set(ours) and len(ours) == len(stock) + 1
    assert issubclass(vm, PragueVM)


def test_through_the_evm() -> None:
    key = PrivateKey(keccak(b"caller"))
    chain = ScratchChain(funded=[key.public_key.to_canonical_address()])
    assert chain.call(VRF_PRECOMPILE_ADDRESS, GOOD) == vrf.proof_to_hash(PI)
    with pytest.raises(TxFailed):
        chain.call(VRF_PRECOMPILE_ADDRESS, flipped(GOOD, 40))
    good = chain.transact(key, VRF_PRECOMPILE_ADDRESS, GOOD, gas=100_000)
    zeros = GOOD.count(0)
    calldata_gas = 4 * zeros + 16 * (len(GOOD) - zeros)
    assert good.ok and good.gas_used == 21_000 + calldata_gas + VRF_GAS
    # a failed verification consumes all the gas given to it
    bad = chain.transact(key, VRF_PRECOMPILE_ADDRESS, flipped(GOOD, 40), gas=100_000)
    assert not bad.ok and bad.gas_used == 100_000
