"""Base model directories: what a node may load, and the hash that pins it on chain.

A base is a Hugging Face-format directory: ``config.json``, ``model.safetensors`` and
``tokenizer.json`` (optional: ``generation_config.json``, ``tokenizer_config.json``,
``special_tokens_map.json``). It is refused before any loader runs when:
- a required file is missing;
- it carries code (``auto_map`` in a config, or any ``.py`` file): loading runs with
  ``trust_remote_code`` off, always;
- it carries pickled weights (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt``): weights
  are read from safetensors only, never unpickled;
- its hash is not the one the task names.

``base_hash`` = keccak256 of the canonical JSON list of ``[file name, keccak256 of its
bytes]`` over the present files of the list above, by name. It covers the weights, the
architecture and the tokenizer, so two nodes with the same hash tokenize and compute alike.

Bases live in a local store, one directory per hash: ``$FLOCKD_LM_BASES/<hash hex>``
(default ``~/.cache/flockd/lm-bases``). A task's recipe config names the hash only; every
node resolves it in its own store, so no path in the config differs between machines.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from Crypto.Hash import keccak as keccak_stream
from eth_utils import keccak

from flockd.fl.recipe import RecipeError, canonical_json

REQUIRED_FILES = ("config.json", "model.safetensors", "tokenizer.json")
OPTIONAL_FILES = ("generation_config.json", "special_tokens_map.json", "tokenizer_config.json")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
MAX_BASE_FILE_BYTES = 4 << 30
MAX_CONFIG_BYTES = 1 << 20
BASES_ENV = "FLOCKD_LM_BASES"


class BaseModelError(RecipeError):
    """A base model directory cannot be used; each reason has a subclass."""


class MissingBaseFile(BaseModelError): ...


class RemoteCodeRefused(BaseModelError): ...


class PickleRefused(BaseModelError): ...


class BaseHashMismatch(BaseModelError): ...


def bases_dir() -> Path:
    return Path(os.environ.get(BASES_ENV) or Path.home() / ".cache" / "flockd" / "lm-bases")


def base_path(digest: bytes) -> Path:
    return bases_dir() / digest.hex()


def parse_hash(text: object) -> bytes:
    """A base hash as written in a recipe config: ``0x`` + 64 hex digits."""
    if not (isinstance(text, str) and text.startswith("0x") and len(text) == 66):
        raise BaseModelError(f"a base hash is 0x + 64 hex digits, got {text!r}")
    try:
        return bytes.fromhex(text[2:])
    except ValueError:
        raise BaseModelError(f"a base hash is 0x + 64 hex digits, got {text!r}") from None


def check_base_dir(path: str | Path) -> bytes:
    """Refuse a directory a node must not load (see the module docstring); its hash."""
    path = Path(path)
    if not path.is_dir():
        raise MissingBaseFile(f"no base model directory {path}")
    missing = [name for name in REQUIRED_FILES if not (path / name).is_file()]
    if missing:
        raise MissingBaseFile(f"{path} lacks {', '.join(missing)}")
    for entry in sorted(path.rglob("*")):
        if entry.suffix == ".py":
            raise RemoteCodeRefused(f"{entry} is code: a base model may not carry any")
        if entry.suffix in PICKLE_SUFFIXES:
            raise PickleRefused(f"{entry} holds pickled weights: only safetensors are loaded")
    for name in ("config.json", "tokenizer_config.json"):
        if (path / name).is_file() and "auto_map" in _json_object(path / name):
            raise RemoteCodeRefused(f"{path / name} maps classes to remote code (auto_map)")
    return base_hash(path)


def base_hash(path: str | Path) -> bytes:
    path = Path(path)
    listing = []
    for name in sorted(REQUIRED_FILES + OPTIONAL_FILES):
        if (path / name).is_file():
            listing.append([name, "0x" + file_hash(path / name).hex()])
    return keccak(canonical_json(listing))


def file_hash(path: Path) -> bytes:
    if path.stat().st_size > MAX_BASE_FILE_BYTES:
        raise BaseModelError(f"{path} is larger than {MAX_BASE_FILE_BYTES} bytes")
    digest = keccak_stream.new(digest_bits=256)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.digest()


def resolve_base(expected: bytes) -> Path:
    """The checked directory of the base with hash ``expected`` in this node's store."""
    path = base_path(expected)
    if not path.is_dir():
        raise MissingBaseFile(
            f"no base model {expected.hex()} in {bases_dir()} (build it with `flockd lm build-base` "
            f"or copy its directory there; ${BASES_ENV} moves the store)"
        )
    found = check_base_dir(path)
    if found != expected:
        raise BaseHashMismatch(f"{path} hashes to {found.hex()}, the task's base is {expected.hex()}")
    return path


def import_base(source: str | Path) -> tuple[bytes, Path]:
    """Check ``source`` and copy its files into the store under its hash (atomically: a
    half-copied base is never visible); an existing copy is checked, not overwritten."""
    digest = check_base_dir(source)
    target = base_path(digest)
    if target.exists():
        return digest, resolve_base(digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".import-", dir=target.parent))
    try:
        for name in REQUIRED_FILES + OPTIONAL_FILES:
            if (Path(source) / name).is_file():
                shutil.copyfile(Path(source) / name, staging / name)
        if base_hash(staging) != digest:
            raise BaseHashMismatch(f"{source} changed while it was copied")
        staging.rename(target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return digest, target


def export_model_dir(base: str | Path, state: Mapping[str, np.ndarray], out: str | Path) -> Path:
    """A Hugging Face-format directory of the model ``state`` (the base's weights with the
    federated updates folded in): the base's config and tokenizer files, and ``state`` as
    ``model.safetensors``. Refuses to write into an existing directory."""
    from safetensors.numpy import save_file

    out = Path(out)
    out.mkdir(parents=True)
    for name in REQUIRED_FILES + OPTIONAL_FILES:
        if name != "model.safetensors" and (Path(base) / name).is_file():
            shutil.copyfile(Path(base) / name, out / name)
    tensors = {name: np.ascontiguousarray(state[name], dtype=np.float32) for name in sorted(state)}
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})  # "pt": what transformers expects
    return out


def _json_object(path: Path) -> dict[str, object]:
    if path.stat().st_size > MAX_CONFIG_BYTES:
        raise BaseModelError(f"{path} is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        value = json.loads(path.read_bytes())
    except (ValueError, UnicodeDecodeError) as exc:
        raise BaseModelError(f"{path} is not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise BaseModelError(f"{path} is not a JSON object")
    return value
