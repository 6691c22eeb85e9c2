"""Compile-time diagnostics: a location, a message, and the source line with a caret.

Every stage of the front end reports through these so that ``tollway check`` prints one
uniform ``file:line:col: error: …`` shape whatever went wrong.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

__all__ = ["Diagnostic", "RulesError"]


@dataclass(frozen=True, slots=True)
class Diagnostic:
    """One error or warning at ``file:line:column`` (1-based; line 0 when it is about the
    whole file: a missing path, an unreadable file)."""

    file: str
    line: int
    column: int
    message: str
    severity: Literal["error", "warning"] = "error"
    source_line: str = ""

    @property
    def location(self) -> str:
        return f"{self.file}:{self.line}:{self.column}" if self.line > 0 else self.file

    def render(self) -> str:
        """``file:line:col: error: message`` then the line and a caret under the column;
        ``file: message`` for an error about the whole file (``x.rules: no such file``)."""
        if self.line <= 0:
            kind = "" if self.severity == "error" else f"{self.severity}: "
            return f"{self.file}: {kind}{self.message}"
        head = f"{self.location}: {self.severity}: {self.message}"
        if not self.source_line:
            return head
        text = self.source_line.rstrip("\n").expandtabs(4)
        caret = " " * max(self.column - 1, 0) + "^"
        return f"{head}\n    {text}\n    {caret}"

    def sort_key(self) -> tuple[str, int, int, str]:
        return (self.file, self.line, self.column, self.message)


class RulesError(Exception):
    """A ruleset that cannot be compiled. ``errors`` holds every error found, sorted."""

    def __init__(self, errors: Iterable[Diagnostic], warnings: Iterable[Diagnostic] = ()) -> None:
        self.errors: list[Diagnostic] = sorted(errors, key=Diagnostic.sort_key)
        self.warnings: list[Diagnostic] = sorted(warnings, key=Diagnostic.sort_key)
        super().__init__(self.render())

    def render(self) -> str:
        return "\n".join(d.render() for d in self.errors) or "invalid ruleset"
