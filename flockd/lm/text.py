"""A node's text: records of prompt/completion, chat messages, or plain text, and the
deterministic split of them into train, validation and test.

An ``Example`` is a sequence of segments, each text and a flag: is it a *target* (the
model is trained and scored on it) or context. Segments are tokenized one by one, so no
token straddles a context/target boundary and the bytes a score divides by are exactly
the UTF-8 bytes of the target text.

Formats (by file suffix):
- ``.jsonl``: one JSON object a line, either ``{"prompt": str, "completion": str}``
  (target: the completion) or ``{"messages": [{"role", "content"}, ...]}`` with roles
  system / user / assistant (targets: the assistants' contents; the role markers and
  every other message are context);
- ``.txt``: paragraphs (blank-line separated), each one all target.
Long texts are cut at whitespace into pieces of at most ``max_chars`` characters.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flockd.fl.data import DataError, check_file_size
from flockd.safejson import TooDeep, check_depth

MAX_TEXT_FILE_BYTES = 256 << 20
MAX_RECORDS = 1_000_000
CHAT_ROLES = ("system", "user", "assistant")
# The chat template: a role marker line, then the content; the marker is context.
ROLE_MARKER = {role: f"<|{role}|>\n" for role in CHAT_ROLES}
_SPLIT_STREAM = 11  # numpy PCG64 stream of the train/validation/test carve
_ROOT_STREAM = 12  # numpy PCG64 stream of a root set's draw


@dataclass(frozen=True)
class Example:
    segments: tuple[tuple[str, bool], ...]  # (text, is_target)

    @property
    def text(self) -> str:
        return "".join(text for text, _ in self.segments)

    @property
    def target_bytes(self) -> int:
        """UTF-8 bytes of the target text: the denominator of bits per character."""
        return sum(len(text.encode()) for text, target in self.segments if target)


def plain(text: str) -> Example:
    return Example(((text, True),))


def prompt_completion(prompt: str, completion: str) -> Example:
    return Example(((prompt, False), (completion, True)))


def chat(messages: Sequence[object]) -> Example:
    """``messages``: ``[{"role": ..., "content": ...}, ...]``, at least one assistant turn."""
    segments: list[tuple[str, bool]] = []
    for message in messages:
        if not (isinstance(message, dict) and set(message) == {"role", "content"}):
            raise DataError("a chat message is {'role': ..., 'content': ...}")
        role, content = message["role"], message["content"]
        if role not in CHAT_ROLES or not isinstance(content, str):
            raise DataError(f"a chat message needs a role in {CHAT_ROLES} and text content")
        segments.append((ROLE_MARKER[role], False))
        segments.append((content, role == "assistant"))
        segments.append(("\n", False))
    if not any(target for _, target in segments):
        raise DataError("a chat record needs an assistant message")
    return Example(tuple(segments))


def record(value: object) -> Example:
    """One jsonl record as an Example."""
    if isinstance(value, dict) and set(value) == {"prompt", "completion"}:
        prompt, completion = value["prompt"], value["completion"]
        if isinstance(prompt, str) and isinstance(completion, str) and completion:
            return prompt_completion(prompt, completion)
    elif isinstance(value, dict) and set(value) == {"messages"} and isinstance(value["messages"], list):
        return chat(value["messages"])
    raise DataError('a record is {"prompt": str, "completion": str} or {"messages": [...]}')


def pieces(text: str, max_chars: int) -> list[str]:
    """``text`` cut at whitespace into pieces of at most ``max_chars`` characters (a word
    longer than that is cut inside); concatenated they give ``text`` back."""
    out: list[str] = []
    start = 0
    while len(text) - start > max_chars:
        cut = text.rfind(" ", start + 1, start + max_chars)
        cut = start + max_chars if cut <= start else cut
        out.append(text[start:cut])
        start = cut
    if start < len(text):
        out.append(text[start:])
    return out


def paragraphs(text: str, max_chars: int) -> list[Example]:
    """Blank-line separated paragraphs (stripped, empty ones dropped), each cut to pieces."""
    found = (p.strip() for p in re.split(r"\n\s*\n", text))
    return [plain(piece) for p in found if p for piece in pieces(p, max_chars)]


def read_examples(path: str | Path, max_chars: int) -> list[Example]:
    """A node's own text file (``.jsonl`` or ``.txt``) as Examples."""
    path = Path(path)
    check_file_size(path, MAX_TEXT_FILE_BYTES)
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError:
        raise DataError(f"{path} is not UTF-8 text") from None
    return parse_examples(text, path.suffix.removeprefix("."), max_chars, str(path))


def parse_examples(text: str, fmt: str, max_chars: int, source: str, max_records: int = MAX_RECORDS) -> list[Example]:
    """The Examples of a text in format ``fmt`` (``jsonl`` or ``txt``, as the file
    suffixes); ``source`` names it in errors."""
    if fmt == "txt":
        examples = paragraphs(text, max_chars)
    elif fmt == "jsonl":
        examples = list(_jsonl(text, source))
    else:
        raise DataError(f"{source}: expected a .jsonl or .txt file")
    if not examples:
        raise DataError(f"{source} holds no text")
    if len(examples) > max_records:
        raise DataError(f"{source} holds more than {max_records} records")
    return examples


def _jsonl(text: str, path: str) -> Iterable[Example]:
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            check_depth(line.encode())
            value = json.loads(line)
        except (ValueError, TooDeep) as exc:
            raise DataError(f"{path}:{number}: not JSON ({exc})") from None
        try:
            yield record(value)
        except DataError as exc:
            raise DataError(f"{path}:{number}: {exc}") from None


def carve(
    examples: Sequence[Example], seed: int, val_fraction: float, test_fraction: float
) -> tuple[list[Example], list[Example], list[Example]]:
    """(train, validation, test): a seeded permutation cut by the fractions, each part in
    the original order. The same on every machine (numpy PCG64); validation and, when
    ``test_fraction`` > 0, test get at least one example and train keeps at least one."""
    n = len(examples)
    n_test = max(1, round(test_fraction * n)) if test_fraction > 0 else 0
    n_val = max(1, round(val_fraction * n))
    if n - n_val - n_test < 1:
        raise DataError(f"{n} examples cannot give train, validation and test parts")
    order = np.random.Generator(np.random.PCG64([seed, _SPLIT_STREAM])).permutation(n)
    test_idx = np.sort(order[:n_test])
    val_idx = np.sort(order[n_test : n_test + n_val])
    train_idx = np.sort(order[n_test + n_val :])
    return ([examples[i] for i in train_idx], [examples[i] for i in val_idx], [examples[i] for i in test_idx])


def stratified_draw(pools: Mapping[str, Sequence[Example]], rows: int, seed: int) -> list[Example]:
    """``rows`` examples drawn alike from every named pool: an equal share of each (the
    first ``rows % len(pools)`` pools one more), each share by the pool's own seeded
    permutation, pools in order, each share in its pool's order. The same on every
    machine (numpy PCG64); DataError when a pool holds fewer examples than its share."""
    if not pools:
        raise DataError("no pools to draw from")
    out: list[Example] = []
    for index, (name, pool) in enumerate(pools.items()):
        share = rows // len(pools) + (index < rows % len(pools))
        if share > len(pool):
            raise DataError(f"{rows} rows across {len(pools)} domains take {share} from {name!r}, which has {len(pool)}")
        order = np.random.Generator(np.random.PCG64([seed, _ROOT_STREAM, index])).permutation(len(pool))
        out += [pool[i] for i in np.sort(order[:share])]
    return out
