"""The AI Arena on the daemon: competitions' off-chain work (training, scoring, the
evaluation set) around the Arena contract (flockd.chain.client.arena). docs/arena.md."""
