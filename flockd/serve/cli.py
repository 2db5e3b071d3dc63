"""`flockd serve`: serve a model directory (and a knowledge folder) without a daemon."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_serve_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    serve = sub.add_parser("serve", help="serve a model over the OpenAI-compatible HTTP API, with retrieval and a web page")
    serve.add_argument("--model", metavar="DIR", default="", help="a Hugging Face-format causal LM directory")
    serve.add_argument("--name", default="", help="the model's id in the API (default: the directory's name)")
    serve.add_argument("--classifier", metavar="RECIPE:CHECKPOINT", default="",
                       help="also serve a classifier checkpoint on /v1/predict, e.g. digits-mlp:model.safetensors")
    serve.add_argument("--knowledge", metavar="DIR", default="", help="a folder of .txt/.md files to retrieve from")
    serve.add_argument("--index", metavar="FILE", default="", help="the retrieval index (default: ./flockd-serve/knowledge.sqlite)")
    serve.add_argument("--retrieval-top-k", type=int, default=0, metavar="K",
                       help="chats retrieve K chunks unless they say otherwise (default 0: only when asked)")
    serve.add_argument("--host", default="127.0.0.1", help="bind address (anything but loopback needs an API key)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--api-key-file", default="", metavar="FILE", help="the Bearer key (else $FLOCKD_SERVE_API_KEY)")
    serve.add_argument("--max-queue", type=int, default=8, help="requests that may wait beyond the one running")
    serve.set_defaults(func=_cmd_serve)


def _cmd_serve(args: argparse.Namespace) -> int:
    import trio

    from flockd.cli import CLIError
    from flockd.logs import configure_logging
    from flockd.serve.service import (
        ServeConfigError,
        ServeSettings,
        read_api_key,
        serve_until_signal,
    )

    recipe, _, checkpoint = args.classifier.partition(":")
    if args.classifier and not checkpoint:
        raise CLIError("--classifier: expected RECIPE:CHECKPOINT")
    try:
        settings = ServeSettings(
            model_dir=args.model, model_name=args.name, classifier_recipe=recipe, classifier_checkpoint=checkpoint,
            knowledge=args.knowledge, index_path=args.index, host=args.host, port=args.port,
            api_key=read_api_key(args.api_key_file), max_queue=args.max_queue, retrieval_top_k=args.retrieval_top_k,
        )
        settings.check()
        configure_logging("info")
        trio.run(serve_until_signal, settings, Path("flockd-serve"))
    except ServeConfigError as exc:
        raise CLIError(str(exc)) from None
    return 0
