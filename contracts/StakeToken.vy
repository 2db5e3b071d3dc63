# pragma version ~=0.4.3
"""
@title flockd stake token
@notice A plain ERC-20 with a fixed supply, minted once at construction to the
        listed holders. Used for task stake, delegation and rewards.
"""
from ethereum.ercs import IERC20
from ethereum.ercs import IERC20Detailed

implements: IERC20
implements: IERC20Detailed

MAX_HOLDERS: constant(uint256) = 64

name: public(String[32])
symbol: public(String[16])
decimals: public(uint8)
totalSupply: public(uint256)
balanceOf: public(HashMap[address, uint256])
allowance: public(HashMap[address, HashMap[address, uint256]])


@deploy
def __init__(
    _name: String[32],
    _symbol: String[16],
    holders: DynArray[address, MAX_HOLDERS],
    amounts: DynArray[uint256, MAX_HOLDERS],
):
    assert len(holders) == len(amounts), "holders and amounts differ in length"
    self.name = _name
    self.symbol = _symbol
    self.decimals = 18
    supply: uint256 = 0
    for i: uint256 in range(MAX_HOLDERS):
        if i >= len(holders):
            break
        assert holders[i] != empty(address), "mint to the zero address"
        self.balanceOf[holders[i]] += amounts[i]
        supply += amounts[i]
        log IERC20.Transfer(sender=empty(address), receiver=holders[i], value=amounts[i])
    self.totalSupply = supply


@internal
def _transfer(sender: address, receiver: address, amount: uint256):
    assert receiver != empty(address), "transfer to the zero address"
    assert self.balanceOf[sender] >= amount, "insufficient balance"
    self.balanceOf[sender] -= amount
    self.balanceOf[receiver] += amount
    log IERC20.Transfer(sender=sender, receiver=receiver, value=amount)


@external
def transfer(receiver: address, amount: uint256) -> bool:
    self._transfer(msg.sender, receiver, amount)
    return True


@external
def transferFrom(sender: address, receiver: address, amount: uint256) -> bool:
    allowed: uint256 = self.allowance[sender][msg.sender]
    assert allowed >= amount, "insufficient allowance"
    # max_value is the customary "unlimited" allowance and is never decremented
    if allowed != max_value(uint256):
        self.allowance[sender][msg.sender] = allowed - amount
    self._transfer(sender, receiver, amount)
    return True


@external
def approve(spender: address, amount: uint256) -> bool:
    self.allowance[msg.sender][spender] = amount
    log IERC20.Approval(owner=msg.sender, spender=spender, value=amount)
    return True
