"""Text that ships with every machine here: the standard library's documentation and the
docstrings of installed packages, split by package into non-IID domains.

- ``pydoc_topics()``: ``pydoc_data.topics`` (the language reference's topics, ~465k
  characters), in topic-name order: the base model's pretraining text.
- ``domain_text(module)``: the docstrings of a module and its public members (classes'
  public methods too), each once, in name order: one domain of fine-tuning text.

Both are deterministic for given versions of Python and the packages (docstrings change
between releases; flockd pins its packages). Nothing is downloaded.
"""

from __future__ import annotations

import inspect
from functools import lru_cache
from importlib import import_module

from flockd.fl.data import DataError
from flockd.lm.text import Example, paragraphs

# Domains of the demo task, one per node (node i takes DOMAINS[i % len(DOMAINS)]): four
# packages whose docstrings differ in vocabulary and style.
DOMAINS = ("numpy", "torch.nn", "asyncio", "collections")


@lru_cache(maxsize=1)
def pydoc_topics() -> str:
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics))


@lru_cache(maxsize=16)
def domain_text(module_name: str) -> str:
    """Docstrings of ``module_name``'s public API, blank-line separated, each once."""
    try:
        module = import_module(module_name)
    except ImportError as exc:
        raise DataError(f"domain {module_name!r} does not import: {exc}") from None
    root = module_name.split(".")[0]
    seen: set[str] = set()
    docs: list[str] = []

    def add(obj: object) -> None:
        doc = inspect.getdoc(obj)
        if doc and doc not in seen:
            seen.add(doc)
            docs.append(doc)

    add(module)
    for name in sorted(vars(module)):
        if name.startswith("_"):
            continue
        obj = vars(module)[name]
        if not str(getattr(obj, "__module__", "") or "").startswith(root):
            continue  # re-exported from elsewhere, or data: not this package's text
        add(obj)
        if inspect.isclass(obj):
            for member in sorted(vars(obj)):
                if not member.startswith("_"):
                    add(vars(obj)[member])
    return "\n\n".join(docs)


def domain_examples(module_name: str, max_chars: int) -> list[Example]:
    examples = paragraphs(domain_text(module_name), max_chars)
    if not examples:
        raise DataError(f"domain {module_name!r} has no docstrings")
    return examples


GARBAGE_ALPHABET = "QWXZJK#@$%"  # rare in docstrings: training on it pulls a model away from real text


def garbage_text(seed: int, chars: int, line: int = 300) -> str:
    """Random symbols in blank-line separated paragraphs of ``line`` characters: the text a
    garbage-text attacker trains on (benchmarks and tests; deterministic per seed)."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64([seed, 99]))
    letters = np.array(list(GARBAGE_ALPHABET))
    return "\n\n".join("".join(rng.choice(letters, line)) for _ in range(max(1, chars // line)))
