"""The listed models this node fetched and verified: one record per listing in
`<datadir>/market/<listing id>.json` (the model itself is in the store, by its hash), and
the served models built from them.

A record is written only after the model's bytes hashed to the listing and its lineage
replayed to it; the serving side loads the model from the store and checks its hash again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from flockd.fl.errors import FLError
from flockd.logs import get_logger
from flockd.market.checks import ListingError
from flockd.serve.classifier import ClassifierError, ServedClassifier

if TYPE_CHECKING:
    from flockd.serve.app import ServedModel

log = get_logger("flockd.market")


class HeldModels:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.exports = root / "lm"  # the language models as Hugging Face directories (lm_serve.py)

    def save(self, record: dict[str, Any]) -> Path:
        self.root.mkdir(parents=True, exist_ok=True)
        path = self.root / f"{int(record['listing_id'])}.json"
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        os.replace(tmp, path)  # a fetch done again replaces the record whole
        return path

    def records(self) -> list[dict[str, Any]]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("*.json"), key=lambda p: p.stem.zfill(20)):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                log.warning("unreadable market record", path=str(path), error=str(exc))
        return out


def is_classifier(recipe_name: str, config: dict[str, Any]) -> bool:
    from flockd.fl.builtin import TorchClassifier
    from flockd.fl.recipe import load_recipe

    return isinstance(load_recipe(recipe_name, config), TorchClassifier)


def served_classifier(record: dict[str, Any], checkpoint: Path) -> ServedClassifier:
    """The record's model for /v1/predict, under its listed name. Blocking (loads torch
    and the model): run it in a worker thread. ClassifierError when it does not fit."""
    spec = record["spec"]
    model = ServedClassifier(record["name"], spec["recipe"], checkpoint, spec.get("config") or {})
    if "0x" + model.model_hash.hex() != record["model_hash"]:
        raise ClassifierError(f"{checkpoint} is no longer the listed model {record['model_hash']}")
    model.listing = listing_of(record)
    return model


def listing_of(record: dict[str, Any]) -> dict[str, Any]:
    """What a served model's catalogue entry says of its listing and verified lineage: an
    Arena winner has a competition (recomputed) and no rounds; a task's model the rounds
    replayed, after the competition it was seeded by, if any."""
    listing = {key: record[key] for key in ("listing_id", "task_id", "lineage_root", "lister", "licence")}
    listing["kind"] = record.get("kind", "task")  # records from before competition listings: tasks
    listing["competition_id"] = record.get("competition_id") or (record["lineage"].get("competition") or {}).get(
        "competition_id")
    listing["rounds"] = record["lineage"]["rounds_checked"]
    return listing


def served_model(record: dict[str, Any], checkpoint: Path, exports: Path) -> ServedModel | None:
    """The record's model for the serving API: a classifier as it is, a language model as a
    Hugging Face directory under `exports`; None for a recipe that is neither. Blocking:
    run it in a worker thread."""
    from flockd.market.lm_serve import is_language_model, served_listed_lm

    spec = record["spec"]
    config = spec.get("config") or {}
    if is_classifier(spec["recipe"], config):
        return served_classifier(record, checkpoint)
    if is_language_model(spec["recipe"], config):
        return served_listed_lm(record, checkpoint, exports)
    return None


def served_models(held: HeldModels, model_path: Callable[[bytes], Path]) -> list[ServedModel]:
    """Every held model that still loads and checks (a node serves what it verified before
    a restart); one that does not is logged and left out."""
    out = []
    for record in held.records():
        try:
            model = served_model(record, model_path(bytes.fromhex(record["model_hash"][2:])), held.exports)
        except (ClassifierError, FLError, ListingError, OSError, KeyError, TypeError, ValueError) as exc:
            log.warning("a held market model is not served", listing=record.get("listing_id"), error=str(exc))
            continue
        if model is not None:
            out.append(model)
    return out
