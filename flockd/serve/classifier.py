"""A classifier checkpoint served for ``/v1/predict``: a recipe (``digits-mlp``, …) and a
safetensors checkpoint of its model (what ``model_export`` writes). The checkpoint is
checked against the recipe's own model layout (names, shapes, float32, finite) before it
is loaded; inputs are raw feature rows, preprocessed by the recipe as in training."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flockd.serve.errors import bad_request


class ClassifierError(Exception):
    """The recipe is no classifier, or the checkpoint does not fit it."""


class ServedClassifier:
    kind = "classifier"

    def __init__(self, name: str, recipe_name: str, checkpoint: str | Path, config: dict[str, Any] | None = None) -> None:
        import torch

        from flockd.fl.builtin import TorchClassifier
        from flockd.fl.checkpoint import CheckpointError, load_checkpoint, model_hash
        from flockd.fl.recipe import load_recipe
        from flockd.fl.tensors import shapes

        recipe = load_recipe(recipe_name, config)
        if not isinstance(recipe, TorchClassifier):
            raise ClassifierError(f"{recipe_name} is not a classifier recipe")
        model = recipe.build_model(0)
        layout = shapes({k: v.numpy() for k, v in model.state_dict().items()})
        try:
            state = load_checkpoint(checkpoint, expected_shapes=layout)
        except (CheckpointError, OSError) as exc:
            raise ClassifierError(f"{checkpoint}: {exc}") from None
        model.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in state.items()})
        model.eval()
        self.name = name
        self.recipe = recipe
        self.model = model
        self.path = Path(checkpoint)
        self.model_hash = model_hash(state)
        self.num_features = recipe.num_features
        self.num_classes = recipe.num_classes
        self.parameters = sum(p.numel() for p in model.parameters())
        self.listing: dict[str, Any] | None = None  # a market model's listing and verified lineage
        self._lock = threading.Lock()

    def predict(self, rows: tuple[tuple[float, ...], ...]) -> list[dict[str, Any]]:
        """Blocking: run it in a worker thread."""
        import numpy as np
        import torch

        from flockd.fl.data import DataSpec

        if any(len(row) != self.num_features for row in rows):
            raise bad_request(f"{self.name} takes rows of {self.num_features} features", "input")
        x = self.recipe.preprocess(np.asarray(rows, dtype=np.float64), DataSpec())
        with self._lock, torch.no_grad():
            probs = torch.softmax(self.model(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))), dim=-1)
        return [
            {"index": i, "label": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]}
            for i, p in enumerate(probs)
        ]
