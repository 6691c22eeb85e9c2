"""Collects the checker's diagnostics, each with its source line for the caret."""

from __future__ import annotations

from typing import Literal

from .ast import Pos, RulesetAst
from .diagnostics import Diagnostic

__all__ = ["Reporter"]


class Reporter:
    def __init__(self, ruleset: RulesetAst) -> None:
        self._lines = {rf.path: rf.source.split("\n") for rf in ruleset.files}
        self.errors: list[Diagnostic] = []
        self.warnings: list[Diagnostic] = []

    def _make(self, pos: Pos, message: str, severity: Literal["error", "warning"]) -> Diagnostic:
        lines = self._lines.get(pos.file, [])
        source = lines[pos.line - 1] if 0 < pos.line <= len(lines) else ""
        return Diagnostic(pos.file, pos.line, pos.column, message, severity, source)

    def error(self, pos: Pos, message: str) -> None:
        self.errors.append(self._make(pos, message, "error"))

    def warn(self, pos: Pos, message: str) -> None:
        self.warnings.append(self._make(pos, message, "warning"))

    def result(self) -> tuple[list[Diagnostic], list[Diagnostic]]:
        errors = sorted(set(self.errors), key=Diagnostic.sort_key)
        warnings = sorted(set(self.warnings), key=Diagnostic.sort_key)
        return errors, warnings
