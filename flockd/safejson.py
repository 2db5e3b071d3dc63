"""json.loads for untrusted bytes, with a nesting bound checked before parsing.

py-evm raises the interpreter's recursion limit when it is imported (eth/__init__.py), so
in the daemon a deeply nested document no longer ends in RecursionError: the C decoder
overflows the thread's stack and the process dies. Every decoder of peer- or client-sent
JSON goes through here instead.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_DEPTH = 64
# Inside strings only quotes and escapes matter; an escape is consumed whole so that \" does
# not end the string.
_TOKENS = re.compile(rb'\\.|["\[\]{}]', re.S)


class TooDeep(ValueError):
    """The document nests arrays/objects deeper than allowed."""


def check_depth(data: bytes, limit: int = MAX_DEPTH) -> None:
    if data.count(b"[") + data.count(b"{") <= limit:
        return  # cannot be deeper than the number of openers: the common, cheap case
    depth, in_string = 0, False
    for match in _TOKENS.finditer(data):
        token = match.group()
        if in_string:
            in_string = token != b'"'
        elif token == b'"':
            in_string = True
        elif token in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise TooDeep(f"nested more than {limit} levels deep")
        elif token in (b"]", b"}"):
            depth -= 1


def loads(data: bytes | str, *, max_depth: int = MAX_DEPTH, **kwargs: Any) -> Any:
    """json.loads after check_depth; every failure is a ValueError (TooDeep, JSONDecodeError,
    UnicodeDecodeError)."""
    raw = data.encode() if isinstance(data, str) else bytes(data)
    # UTF-8 only (RFC 8259): json.loads would also guess UTF-16/32, whose bytes check_depth
    # misreads (an escaped quote's 0x00 byte ends a "string" early and hides brackets).
    text = raw.decode("utf-8")
    check_depth(raw, max_depth)
    return json.loads(text, **kwargs)
