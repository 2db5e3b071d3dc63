"""Bind JSON-RPC params (by position or by name) to a Python signature, checking JSON types.

Built once per method when its namespace is registered, so an annotation the checker
does not understand fails at startup rather than on the first call.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# Returns None when `value` fits, else a short "expected X, got Y" text.
Check = Callable[[Any], str | None]


class ParamsError(Exception):
    """The params do not fit the method's signature (JSON-RPC -32602)."""


@dataclass(frozen=True)
class Param:
    name: str
    required: bool
    keyword_only: bool
    type_name: str
    check: Check


class Signature:
    """The params a method takes, and how to bind a request's params to them."""

    def __init__(self, method: str, func: Callable[..., Any]) -> None:
        self.method = method
        hints = typing.get_type_hints(func)
        params: list[Param] = []
        for p in inspect.signature(func).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY):
                raise TypeError(f"{method}: *args, **kwargs and positional-only params cannot be checked")
            annotation = hints.get(p.name, Any)
            params.append(
                Param(
                    name=p.name,
                    required=p.default is p.empty,
                    keyword_only=p.kind is p.KEYWORD_ONLY,
                    type_name=type_name(annotation),
                    check=checker(annotation),
                )
            )
        self.params = tuple(params)
        self._positional = tuple(p for p in params if not p.keyword_only)

    def bind(self, params: list[Any] | dict[str, Any] | None) -> dict[str, Any]:
        """The keyword arguments to call the method with; raises ParamsError."""
        if params is None:
            params = []
        if params and not self.params:
            raise ParamsError(f"{self.method} takes no params")
        if isinstance(params, list):
            if len(params) > len(self._positional):
                raise ParamsError(
                    f"{self.method} takes at most {len(self._positional)} positional params, got {len(params)}"
                )
            given = {p.name: v for p, v in zip(self._positional, params, strict=False)}
        else:
            given = dict(params)
            known = {p.name for p in self.params}
            for name in given:
                if name not in known:
                    raise ParamsError(f"{self.method}: unexpected param {short_repr(name)}")
        for p in self.params:
            if p.name not in given:
                if p.required:
                    raise ParamsError(f"{self.method}: missing required param '{p.name}'")
                continue
            problem = p.check(given[p.name])
            if problem is not None:
                raise ParamsError(f"{self.method}: param '{p.name}' {problem}")
        return given


def json_type(value: Any) -> str:
    """The JSON-ish name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    return type(value).__name__


_SCALARS: dict[Any, str] = {str: "str", int: "int", float: "float", bool: "bool", type(None): "null"}


def type_name(tp: Any) -> str:
    if tp is Any:
        return "any"
    if tp in _SCALARS:
        return _SCALARS[tp]
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " | ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if tp in (list, dict):
        return tp.__name__
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    raise TypeError(f"RPC params cannot be checked against {tp!r}")


def checker(tp: Any) -> Check:
    """A check for one annotation; only JSON's shapes are supported."""
    expected = f"expected {type_name(tp)}"

    def fail(value: Any) -> str:
        return f"{expected}, got {json_type(value)}"

    if tp is Any:
        return lambda value: None
    if tp is float:
        return lambda v: None if type(v) in (int, float) else fail(v)
    if tp in _SCALARS:
        # type() not isinstance(): JSON true is not an int here.
        return lambda v: None if type(v) is tp else fail(v)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        options = [checker(a) for a in args]
        return lambda v: None if any(c(v) is None for c in options) else fail(v)
    if origin is typing.Literal:
        return lambda v: None if any(type(v) is type(a) and v == a for a in args) else f"{expected}, got {short_repr(v)}"
    if tp is list or tp is dict:
        return lambda v: None if type(v) is tp else fail(v)
    if origin is list:
        return _list_checker(checker(args[0]), fail)
    if origin is dict:
        if args[0] is not str:
            raise TypeError(f"RPC params: JSON object keys are strings, not {args[0]!r}")
        return _dict_checker(checker(args[1]), fail)
    raise TypeError(f"RPC params cannot be checked against {tp!r}")


def _list_checker(item: Check, fail: Callable[[Any], str]) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not list:
            return fail(value)
        for i, v in enumerate(value):
            problem = item(v)
            if problem is not None:
                return f"item {i}: {problem}"
        return None

    return check


def _dict_checker(item: Check, fail: Callable[[Any], str]) -> Check:
    def check(value: Any) -> str | None:
        if type(value) is not dict:
            return fail(value)
        for k, v in value.items():
            problem = item(v)
            if problem is not None:
                return f"key {short_repr(k)}: {problem}"
        return None

    return check


def short_repr(value: Any, limit: int = 60) -> str:
    """repr() cut short: names and values in error messages come from the client."""
    return clip(repr(value), limit)


def clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."
