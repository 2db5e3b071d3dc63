"""Learning tasks in the daemon: the adapters around the round state machine (flockd.round)."""
