"""The colluding cartel's share of the task's stake after a flockd.sim run.

    nice -n 10 .venv/bin/python scripts/cartel_stake.py --nodes 20 --rounds 50 \
        --malicious 0.3 --attack collude

Takes the same arguments as ``python -m flockd.sim``; prints the cartel's share of
``total_stake`` before the first round and after the last one (figures in docs/contracts.md).
"""

from __future__ import annotations

import sys

from flockd.sim.__main__ import config_from, parse_args
from flockd.sim.run import Simulation


def main(argv: list[str]) -> int:
    cfg = config_from(parse_args(argv))
    sim = Simulation(cfg)
    result = sim.run()
    cartel = {sim.nodes[i].address for i in cfg.malicious}
    stakes = {n.address: sim.chain.view("get_participant", sim.task_id, n.address)[2] for n in sim.nodes}
    total = sum(stakes.values())
    share = sum(s for a, s in stakes.items() if a in cartel) / total
    print(f"{len(cartel)} of {cfg.nodes} nodes collude; stake share {len(cartel) / cfg.nodes:.4f} at the start, "
          f"{share:.4f} after {cfg.rounds} rounds; final accuracy {result.final_accuracy:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
