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
| `replies.py` | the OpenAI response objects and stream chunks, with `sources` |
| `app.py` | the Starlette app: routes, the gate (API key, Host, Origin), SSE, disconnects |
| `service.py` | `ServeSettings`, loading, `serve_until_signal` (`flockd serve`), the daemon's task view |
| `rpc.py` | `serve_status`, `serve_reindex` on the control socket |
| `cli.py` | `flockd serve` |
| `thread.py` | an app served from a thread (tests, the benchmark) |
| `web/` | the page: index.html, app.js, style.css |
"""
