"""Command-line helpers shared by every ``python -m bench`` subcommand: the one-line usage error, the parser that
raises it, ``KEY=VALUE`` settings, seed lists, and type checks of settings against a config's annotations.

Imports nothing heavy (no torch): the CLI judges bad input with it before any model library is loaded. The CLI
(``bench/cli.py``) sits on top; this module and the modules it serves never import the CLI.
"""
from __future__ import annotations

import argparse
import dataclasses
import inspect
import json
import types
import typing
from typing import Any, Callable, Sequence

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad command-line input: printed as one line, exit 2."""


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``UsageError``) instead of the usage block, and the description and examples
    (``epilog``) printed as written."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def examples(*lines: str) -> str:
    """An ``epilog`` listing example commands."""
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


# ----------------------------------------------------------------------------------------------------- settings
def parse_value(text: str) -> Any:
    """``--set key=value`` values: JSON where it parses (numbers, booleans, lists, null), else the string."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_settings(items: Sequence[str] | None, flag: str = "--set") -> dict[str, Any]:
    out = {}
    for item in items or []:
        if "=" not in item or not item.split("=", 1)[0].strip():
            raise UsageError(f"{flag} expects KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip().replace("-", "_")] = parse_value(value)
    return out


def parse_seeds(seed: str | None = None, seeds: str | None = None) -> list[int] | None:
    """``--seed N``: exactly seed N. ``--seeds N``: N seeds, 0..N-1. ``--seeds 0,3,7``: those seeds. None: neither
    given (the caller's default)."""
    if seed is not None and seeds is not None:
        raise UsageError("give --seed N (exactly seed N) or --seeds N|LIST (N seeds 0..N-1, or a list), not both")
    if seed is not None:
        try:
            value = int(seed)
        except ValueError:
            raise UsageError(f"--seed expects one integer, got {seed!r} (several seeds: --seeds 3 or --seeds 0,3,7)"
                             ) from None
        if value < 0:
            raise UsageError(f"--seed must be >= 0, got {value}")
        return [value]
    if seeds is None:
        return None
    try:
        if "," in seeds:
            out = [int(s) for s in seeds.split(",") if s.strip()]
        else:
            n = int(seeds)
            if n < 1:
                raise UsageError(f"--seeds N is a count of seeds (0..N-1) and must be >= 1, got {n}; "
                                 f"one seed by value: --seed N")
            out = list(range(n))
    except ValueError:
        raise UsageError(f"--seeds expects a count (3 = seeds 0,1,2) or a comma-separated list (0,3,7), "
                         f"got {seeds!r}") from None
    if not out or any(s < 0 for s in out) or len(set(out)) != len(out):
        raise UsageError(f"--seeds: a list of distinct seeds >= 0, got {seeds!r}")
    return out


def parse_shard(text: str | None) -> tuple[int, int]:
    """``--shard i/n`` (0-based) -> (i, n); None -> (0, 1)."""
    if text is None:
        return 0, 1
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError:
        raise UsageError(f"--shard expects i/n with 0 <= i < n, got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise UsageError(f"--shard expects i/n with 0 <= i < n, got {text!r}")
    return i, n


# ------------------------------------------------------------------------------------------------- type checks
def _type_name(tp: Any) -> str:
    if tp is type(None):
        return "null"
    if isinstance(tp, type):
        return {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}.get(
            tp.__name__, tp.__name__)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list) or origin is not None and getattr(origin, "__name__", "") in ("Sequence",):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if origin is tuple and Ellipsis not in typing.get_args(tp):
            return f"a list of {len(args)} ({', '.join(_type_name(a) for a in args)})"
        return f"a list of {_type_name(args[0]) if args else 'values'}"
    return str(tp)


_NO = object()


def coerce(value: Any, tp: Any) -> Any:
    """``value`` (parsed from JSON) as type ``tp``, or ``_NO``. Integers are accepted for floats, integral floats
    (2.0) for ints; 2.5 is not an int and true is not a number."""
    if tp is Any or tp is inspect.Parameter.empty:
        return value
    if tp is type(None):
        return None if value is None else _NO
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            out = coerce(value, arg)
            if out is not _NO:
                return out
        return _NO
    if origin is not None and (origin in (tuple, list) or getattr(origin, "__name__", "") == "Sequence"):
        if not isinstance(value, (list, tuple)):
            return _NO
        args = typing.get_args(tp)
        if origin is tuple and args and Ellipsis not in args:
            if len(value) != len(args):
                return _NO
            items = [coerce(v, a) for v, a in zip(value, args)]
        else:
            items = [coerce(v, args[0] if args else Any) for v in value]
        return _NO if any(i is _NO for i in items) else (tuple(items) if origin is tuple else items)
    if tp is bool:
        return value if isinstance(value, bool) else _NO
    if tp is int:
        if isinstance(value, bool):
            return _NO
        if isinstance(value, int):
            return value
        return int(value) if isinstance(value, float) and value.is_integer() else _NO
    if tp is float:
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else _NO
    if tp is str:
        return value if isinstance(value, str) else _NO
    if isinstance(tp, type):  # torch.device, torch.dtype, ...: a string names them
        return value if isinstance(value, (str, tp)) else _NO
    return value


def check_typed(owner: str, settings: dict[str, Any], hints: dict[str, Any], flag: str = "--set") -> dict[str, Any]:
    """Every key must be a known field and every value of its annotated type; returns the coerced settings.
    Raises ``UsageError`` naming the key, the value and what is valid."""
    unknown = sorted(set(settings) - set(hints))
    if unknown:
        valid = f"valid: {', '.join(sorted(hints))}" if hints else f"{owner} takes no {flag} settings"
        raise UsageError(f"{owner}: unknown {flag} key(s) {', '.join(unknown)}; {valid}")
    out = {}
    for key, value in settings.items():
        got = coerce(value, hints[key])
        if got is _NO:
            raise UsageError(f"{owner}: {flag} {key}={json.dumps(value)} is not valid: {key} takes "
                             f"{_type_name(hints[key])}")
        out[key] = got
    return out


def config_hints(config_cls: type) -> dict[str, Any]:
    """Field name -> type of a config dataclass (its annotations resolved)."""
    hints = typing.get_type_hints(config_cls)
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(config_cls)}


def factory_hints(factory: Callable) -> dict[str, Any]:
    """Keyword argument -> type of a factory (function or class), for ``--reward-arg`` checks. ``device``/``dtype``
    are set by the harness, not by the user."""
    target = factory.__init__ if isinstance(factory, type) else factory
    try:
        hints = typing.get_type_hints(target)
    except Exception:  # noqa: BLE001 - an annotation that does not resolve: check names only
        hints = {}
    params = inspect.signature(target).parameters
    return {n: hints.get(n, Any) for n, p in params.items()
            if n not in ("self", "device", "dtype") and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
