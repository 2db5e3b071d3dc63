"""Where a node trains its adapters: on the CPU in float32 by default, on CUDA and in
bfloat16 when the node asks and has them.

These are the node's own settings, not the task's (the task config is hashed on chain):
``$FLOCKD_LM_DEVICE`` (``cpu`` or ``cuda``) and ``$FLOCKD_LM_DTYPE`` (``float32`` or
``bfloat16``, the latter by ``torch.autocast``), read where training runs, so a daemon's
training process inherits them. A node that asks for CUDA without a GPU trains on the CPU
and says so in its log.

Why every node still agrees on every hash: the device changes only this node's own
training, so the adapter it sends. That adapter travels as float32, is hashed as sent,
and nobody trains it again (a proposer keeps its delta; ``model_verify`` replays
aggregates, not trainings). What every node must compute alike (the usable-delta checks,
the aggregate, the next state and its hash) is computed from those bytes on the CPU in
fixed-order float64 numpy (protocol/spec/delta.md §4), never on the accelerator. Scoring
stays on the CPU in float32 too, so a voter's votes do not depend on its hardware.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from flockd.fl.errors import FLError
from flockd.logs import get_logger

if TYPE_CHECKING:
    import torch

log = get_logger("flockd.lm")

DEVICE_ENV = "FLOCKD_LM_DEVICE"
DTYPE_ENV = "FLOCKD_LM_DTYPE"
DEVICES = ("cpu", "cuda")
DTYPES = ("float32", "bfloat16")


class BadAcceleratorSetting(FLError):
    """$FLOCKD_LM_DEVICE or $FLOCKD_LM_DTYPE names something flockd does not offer."""


@dataclass(frozen=True)
class Accelerator:
    device: str = "cpu"
    dtype: str = "float32"

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> Accelerator:
        device = env.get(DEVICE_ENV, "cpu").strip().lower() or "cpu"
        dtype = env.get(DTYPE_ENV, "float32").strip().lower() or "float32"
        if device not in DEVICES:
            raise BadAcceleratorSetting(f"${DEVICE_ENV}={device!r}: use one of {', '.join(DEVICES)}")
        if dtype not in DTYPES:
            raise BadAcceleratorSetting(f"${DTYPE_ENV}={dtype!r}: use one of {', '.join(DTYPES)}")
        if device == "cuda":
            import torch

            if not torch.cuda.is_available():
                log.warning("CUDA asked for but not present: training on the CPU", setting=DEVICE_ENV)
                device = "cpu"
        return cls(device, dtype)

    @contextmanager
    def training(self, model: torch.nn.Module) -> Iterator[None]:
        """``model`` on the device inside the block (back on the CPU after, so what is
        read from it is CPU float32), its forward passes autocast to bfloat16 if asked."""
        import torch

        if self.device != "cpu":
            model.to(self.device)
        try:
            with torch.autocast(device_type=self.device, dtype=torch.bfloat16, enabled=self.dtype == "bfloat16"):
                yield
        finally:
            if self.device != "cpu":
                model.to("cpu")
