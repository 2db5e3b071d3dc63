"""Serving a node's models: the OpenAI-compatible HTTP API, retrieval over the node's own
documents, and a web page, in one ASGI app on hypercorn's trio worker (docs/serving.md).

| module | what it holds |
|---|---|
| `errors.py` | `APIError`: the OpenAI-style error object and its status |
| `requests.py` | decoders of request bodies into typed requests (every field checked) |
| `prompt.py` | the plain chat template and the prompt with numbered sources |
| `lm.py` | `ServedLM`: an HF-format causal LM and its token loop (sampling, stops, cancel) |
| `classifier.py` | `ServedClassifier`: a recipe's checkpoint for `/v1/predict` |
| `admission.py` | the bounded queue in front of the models |
| `retrieval.py` | `KnowledgeIndex`: chunks of txt/md files in SQLite FTS5, bm25 search |
| `app.py` | the Starlette app: routes, auth, Host/Origin checks, SSE |
| `service.py` | `ServeSettings`, the daemon service and `flockd serve` |
"""
