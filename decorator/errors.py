"""The exception tree: user errors carry a location and print one clear line; bugs keep their traceback.

Owns every exception the package raises on purpose. Imports nothing from the package.
"""

from __future__ import annotations

from dataclasses import dataclass


class DecoratorError(Exception):
    """Base of every error decorator raises on purpose."""


class UsageError(DecoratorError):
    """A bad flag or environment value: one line on stderr, exit status 2."""


@dataclass(frozen=True)
class Location:
    """Where in a user's file something is: 1-based line and column (0 when unknown)."""

    file: str
    line: int = 0
    col: int = 0

    def __str__(self) -> str:
        if self.line:
            return f"{self.file}:{self.line}:{self.col or 1}"
        return self.file


class RuleError(DecoratorError):
    """One mistake in a rules file, with where it is: `file:line:col: message`."""

    def __init__(self, location: Location, message: str) -> None:
        super().__init__(f"{location}: {message}")
        self.location = location
        self.message = message

    def as_dict(self) -> dict:
        return {"file": self.location.file, "line": self.location.line, "col": self.location.col,
                "message": self.message}


class RulesInvalid(DecoratorError):
    """Every mistake found while loading a rule set (all at once, not just the first)."""

    def __init__(self, errors: list[RuleError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))


class ProxyError(DecoratorError):
    """Base of the tunnel's own failures (they become 4xx/5xx answers, never crashes)."""


class UpstreamError(ProxyError):
    """The app refused, reset or broke the connection: the client gets 502."""
