"""Where the app runs: ``flockd serve`` (alone) or the daemon's ``serve`` service
(``[serve] enabled = true``), both on hypercorn's trio worker (``flockd.asgi``).

Bound to 127.0.0.1 unless told otherwise; bound to any other address it refuses to start
without an API key. Models load in a worker thread before the port opens (transformers and
torch imports take seconds), and the knowledge folder is (re-)indexed then too.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import trio

from flockd.logs import get_logger

if TYPE_CHECKING:
    from flockd.config import ServeSection
    from flockd.serve.app import ServeApp, ServedModel, TaskView
    from flockd.tasks.service import TaskService

log = get_logger("flockd.serve")

API_KEY_ENV = "FLOCKD_SERVE_API_KEY"
INDEX_FILE = "knowledge.sqlite"


class ServeConfigError(Exception):
    """The serving settings cannot work (no model, a public bind without a key)."""


@dataclass(frozen=True)
class ServeSettings:
    model_dir: str = ""  # a Hugging Face-format causal LM directory
    model_name: str = ""  # its id in the API (default: the directory's name)
    classifier_recipe: str = ""  # with classifier_checkpoint: served on /v1/predict
    classifier_checkpoint: str = ""
    knowledge: str = ""  # a folder of .txt/.md files to retrieve from
    index_path: str = ""  # the SQLite index (default: <state dir>/knowledge.sqlite)
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str = ""
    vhosts: tuple[str, ...] = ("localhost",)
    max_queue: int = 8  # requests waiting beyond the one running
    retrieval_top_k: int = 0  # chats retrieve this many chunks unless they say otherwise
    market: bool = False  # a daemon serving the listed models it fetched: it may start with none

    def check(self) -> None:
        if not self.model_dir and not self.classifier_checkpoint and not self.market:
            raise ServeConfigError("nothing to serve: give a model directory or a classifier checkpoint")
        if bool(self.classifier_recipe) != bool(self.classifier_checkpoint):
            raise ServeConfigError("a classifier needs both its recipe and its checkpoint")
        if not self.api_key and not _is_loopback(self.host):
            raise ServeConfigError(f"binding {self.host} (not loopback) needs an API key (${API_KEY_ENV} or a key file)")
        if not 0 <= self.port <= 65535 or not 0 <= self.max_queue <= 10_000 or not 0 <= self.retrieval_top_k <= 16:
            raise ServeConfigError("port, max_queue or retrieval_top_k out of range")
        if self.retrieval_top_k and not self.knowledge:
            raise ServeConfigError("retrieval_top_k needs a knowledge folder")


def settings_from_section(section: ServeSection, index_path: str = "") -> ServeSettings:
    """The daemon's ``[serve]`` section as settings (the API key read from its file or env)."""
    return ServeSettings(
        model_dir=section.model_dir, model_name=section.model_name, classifier_recipe=section.classifier_recipe,
        classifier_checkpoint=section.classifier_checkpoint, knowledge=section.knowledge, index_path=index_path,
        host=section.host, port=section.port, api_key=read_api_key(section.api_key_file), vhosts=tuple(section.vhosts),
        max_queue=section.max_queue, retrieval_top_k=section.retrieval_top_k, market=section.market,
    )


def read_api_key(key_file: str) -> str:
    """The key from a file (its first line), else from $FLOCKD_SERVE_API_KEY, else none."""
    if key_file:
        try:
            return Path(key_file).read_text().strip()
        except OSError as exc:
            raise ServeConfigError(f"cannot read the API key file {key_file}: {exc.strerror}") from None
    return os.environ.get(API_KEY_ENV, "")


def build_app(settings: ServeSettings, state_dir: Path, tasks: TaskView | None = None,
              listed: Sequence[ServedModel] = ()) -> ServeApp:
    """Blocking (loads models, indexes the folder): run it in a worker thread. `listed`:
    models already loaded and checked (the market's, flockd.market.held)."""
    from flockd.fl.recipe import RecipeError
    from flockd.serve.admission import Admission
    from flockd.serve.app import Gate, ServeApp
    from flockd.serve.classifier import ClassifierError, ServedClassifier
    from flockd.serve.lm import ServedLM
    from flockd.serve.retrieval import KnowledgeIndex, RetrievalError

    settings.check()
    models: list[ServedModel] = list(listed)
    try:
        if settings.model_dir:
            path = Path(settings.model_dir)
            models.append(ServedLM(settings.model_name or path.resolve().name, path))
        if settings.classifier_checkpoint:
            name = f"{settings.classifier_recipe}-{Path(settings.classifier_checkpoint).stem}"
            models.append(ServedClassifier(name, settings.classifier_recipe, settings.classifier_checkpoint))
        index = None
        if settings.knowledge:
            index = KnowledgeIndex(settings.knowledge, Path(settings.index_path or state_dir / INDEX_FILE))
            report = index.refresh()
            log.info("knowledge indexed", folder=settings.knowledge, added=report.added, changed=report.changed,
                     removed=report.removed, unchanged=report.unchanged, chunks=report.chunks)
    except (RecipeError, ClassifierError, RetrievalError, OSError) as exc:
        raise ServeConfigError(str(exc)) from None
    return ServeApp(
        models, index=index, admission=Admission(1, settings.max_queue),
        gate=Gate(settings.api_key or None, settings.vhosts), default_top_k=settings.retrieval_top_k, tasks=tasks,
    )


async def serve_until_signal(settings: ServeSettings, state_dir: Path) -> None:
    """`flockd serve`: load, serve, and stop cleanly on SIGINT or SIGTERM. A model that
    cannot load raises ServeConfigError before anything is served."""
    import signal

    from flockd.asgi import serve_asgi

    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        app = await trio.to_thread.run_sync(build_app, settings, state_dir)
        async with trio.open_nursery() as nursery:
            port: int = await nursery.start(partial(serve_asgi, app, settings.port, host=settings.host))
            log.info("serving", url=f"http://{settings.host}:{port}/", models=list(app.models))
            async for signum in signals:
                log.info("signal received: stopping", signal=signal.Signals(signum).name)
                break
            nursery.cancel_scope.cancel()


def task_view(tasks: TaskService) -> TaskView:
    """The daemon's tasks for the page: each joined task's status, rounds and metrics."""

    async def rows() -> list[dict[str, Any]]:
        out = []
        for task_id in sorted(tasks.runners):
            status = await tasks.status(task_id)
            out.append({key: status[key] for key in ("task_id", "state", "recipe", "rounds", "round", "model_hash")}
                       | {"history": [{k: line.get(k) for k in ("round", "accepted", "rejected", "test_accuracy",
                                                               "test_loss")} for line in status["history"]]})
        return out

    return rows


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
