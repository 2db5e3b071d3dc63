"""The AI marketplace's node side: listing a finished task's model on chain (the Market
contract), fetching a listed model from peers, checking it against the chain, and
serving it (docs/serving.md, "The market").

| module | what it holds |
|---|---|
| `checks.py` | checks of what a listing and a peer hand us: names, specs, model bytes |
| `held.py` | the listed models this node fetched and verified: records on disk, served models |
| `lm_serve.py` | a listed language model as a Hugging Face directory over its base, for the LM server |
| `service.py` | `MarketService`: list, unlist, read listings, fetch and verify |
"""
