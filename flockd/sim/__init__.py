"""Simulation mode: many flockd nodes in one process, each driving the daemon's own round
state machine, against one real py-evm chain running the real contracts.

    from flockd.sim import SimConfig, run_simulation
    result = run_simulation(SimConfig(nodes=50, rounds=10))

What is real and what is an in-process equivalent: docs/simulation.md.
"""

from flockd.sim.chain import SimError
from flockd.sim.config import RoundFigures, SimConfig, SimResult
from flockd.sim.run import run_simulation

__all__ = ["RoundFigures", "SimConfig", "SimError", "SimResult", "run_simulation"]
