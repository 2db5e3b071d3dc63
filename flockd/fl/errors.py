"""The root of every error the federated-learning core raises on bad input or bad use."""


class FLError(Exception):
    """Base class: recipes, data, deltas, checkpoints and aggregation each subclass it."""
