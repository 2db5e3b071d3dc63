"""A tiny Vyper contract the chain tests deploy: a store with an event and a revert."""

STORE_SOURCE = """# pragma version ^0.4.0
event Stored:
    who: indexed(address)
    value: uint256

stored: public(uint256)

@external
def store(v: uint256):
    assert v != 13, "unlucky"
    self.stored = v
    log Stored(who=msg.sender, value=v)
"""
