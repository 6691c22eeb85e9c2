"""The rule language: grammar, parser, checker, formatter and compiler to decision trees.

Pure functions of text: nothing here does I/O except reading the rule files themselves.
"""

from __future__ import annotations

from pathlib import Path

from .diagnostics import Diagnostic, RulesError

__all__ = ["load", "load_text", "Diagnostic", "RulesError"]


def load(path: str | Path) -> CompiledRuleset:
    """Parse, check and compile a ``.rules`` file or a directory of them; raises ``RulesError``."""
    from .parser import parse_path

    return build(parse_path(path))


def load_text(text: str, file: str = "<text>") -> CompiledRuleset:
    """The same as ``load`` for rules held in a string (tests, embedding)."""
    from .ast import RulesetAst
    from .parser import parse_text

    return build(RulesetAst((parse_text(text, file),)))


def build(ast: RulesetAst) -> CompiledRuleset:
    """Check then compile a parsed ruleset; raises ``RulesError`` with every error found."""
    from .checker import check
    from .compiler import compile_ruleset

    errors, warnings = check(ast)
    if errors:
        raise RulesError(errors, warnings)
    return compile_ruleset(ast, warnings)


# imported last and only for annotations: the modules above may import this package
from .ast import RulesetAst  # noqa: E402
from .compiled import CompiledRuleset  # noqa: E402
