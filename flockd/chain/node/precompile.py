"""ECVRF verification precompile for the embedded chain (py-evm).

At VRF_PRECOMPILE_ADDRESS the embedded chain runs RFC 9381
ECVRF-EDWARDS25519-SHA512-TAI verification (flockd.vrf):

    input  = pk (32) || pi (80) || alpha (32)        exactly 144 bytes
    output = beta (64)                                on a valid proof
    failure (VMError: the call fails and consumes the gas given to it)
                                                      on any bad input or proof

Gas: a flat VRF_GAS (30,000) charged before verifying, so a failing call costs at
least as much as a good one. A deliberate, conservative choice: ~10x ecrecover (3,000)
and ~9x RIP-7212's P256VERIFY (3,450), which do comparable curve work natively, because
this verification runs partly in Python (libsodium for the point arithmetic).
"""

from __future__ import annotations

from typing import Any, cast

from eth._utils.address import force_bytes_to_address
from eth.abc import ComputationAPI
from eth.exceptions import VMError

VRF_PRECOMPILE_ADDRESS = bytes.fromhex("0000000000000000000000000000000000000F10")
VRF_GAS = 30_000
PK_LEN, PROOF_LEN, ALPHA_LEN, BETA_LEN = 32, 80, 32, 64
INPUT_LEN = PK_LEN + PROOF_LEN + ALPHA_LEN


class VRFPrecompileError(VMError):
    """The precompile's input or proof was rejected."""


def verify_input(data: bytes) -> bytes:
    """beta for a well-formed, valid `pk || pi || alpha`; VRFPrecompileError otherwise."""
    from flockd import vrf  # late: keeps this module importable while vrf is absent

    if len(data) != INPUT_LEN:
        raise VRFPrecompileError(f"vrf input must be {INPUT_LEN} bytes, got {len(data)}")
    pk = data[:PK_LEN]
    pi = data[PK_LEN : PK_LEN + PROOF_LEN]
    alpha = data[PK_LEN + PROOF_LEN :]
    try:
        beta = vrf.verify(pk, alpha, pi)
    except vrf.VRFError as exc:
        raise VRFPrecompileError(f"vrf proof rejected: {exc}") from exc
    if len(beta) != BETA_LEN:  # defensive: the contract relies on exactly 64 bytes
        raise VRFPrecompileError("vrf output is not 64 bytes")
    return beta


def vrf_verify_precompile(computation: ComputationAPI) -> ComputationAPI:
    computation.consume_gas(VRF_GAS, reason="ECVRF verify precompile")
    computation.output = verify_input(computation.msg.data_as_bytes)
    return computation


def with_vrf_precompile(vm_class: Any) -> Any:
    """A subclass of the py-evm VM class `vm_class` whose computations know the precompile.

    Precompiles live on the computation class (`_precompiles`), which the state class
    names; both are subclassed so the stock fork classes stay untouched. Returns the
    VM class unchanged in behaviour otherwise (other `configure` overrides compose).
    """
    state_class = vm_class.get_state_class()
    base_computation = state_class.computation_class
    precompiles = dict(base_computation.get_precompiles())
    precompiles[force_bytes_to_address(VRF_PRECOMPILE_ADDRESS)] = vrf_verify_precompile
    computation_class = type(
        f"VRF{base_computation.__name__}", (base_computation,), {"_precompiles": precompiles}
    )
    new_state_class = type(
        f"VRF{state_class.__name__}", (state_class,), {"computation_class": computation_class}
    )
    return cast(Any, vm_class).configure(
        __name__=f"VRF{vm_class.__name__}", _state_class=new_state_class
    )
