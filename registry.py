"""Names as the user-facing API (like timm's ``create_model``): one small registry class shared by the backbones,
methods and rewards. It has no dependencies, so ``methods/`` and ``rewards/`` use it without importing each other."""
from __future__ import annotations

import fnmatch
from typing import Any, Callable


class Registry:
    """``@REG.register("name", "one-line description")`` on a class or factory; ``REG.get(name)`` returns it and
    raises ``error`` listing the valid names (optionally filtered by a shell wildcard) for an unknown one."""

    def __init__(self, kind: str, error: type[Exception]):
        self.kind, self.error = kind, error
        self._entries: dict[str, tuple[Callable[..., Any], str]] = {}

    def register(self, name: str, description: str = "") -> Callable:
        def wrap(factory):
            if name in self._entries and self._entries[name][0] is not factory:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            doc = description or (factory.__doc__ or "").strip().split("\n")[0]
            self._entries[name] = (factory, doc)
            return factory

        return wrap

    def available(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def describe(self) -> dict[str, str]:
        return {n: self._entries[n][1] for n in self.available()}

    def get(self, name: str) -> Callable[..., Any]:
        if name not in self._entries:
            raise self.error(f"unknown {self.kind} {name!r}; valid: {', '.join(self.available())}")
        return self._entries[name][0]
