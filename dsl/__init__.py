"""The rule language: grammar, parser, checker, formatter and compiler to decision trees.

Pure functions of text: nothing here does I/O except reading the rule files themselves.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .diagnostics import Diagnostic, RulesError

__all__ = ["load", "load_text", "Diagnostic", "RulesError"]


def load(path: str | Path) -> CompiledRuleset:
    """Parse, check and compile a ``.rules`` file or a directory of them; raises ``RulesError``."""
    from .parser import read_ruleset

    return build(read_ruleset(path))


def load_text(text: str, file: str = "<text>") -> CompiledRuleset:
    """The same as ``load`` for rules held in a string (tests, embedding)."""
    from .parser import read_text

    return build(read_text(text, file))


def build(parsed: Parsed) -> CompiledRuleset:
    """Check then compile a parsed ruleset; raises ``RulesError`` with every error found.

    After syntax errors the declarations that did parse are still checked, so one run
    reports every independent mistake; warnings wait until the whole ruleset parses
    (they are about what a loadable ruleset would do).
    """
    from .checker import check
    from .compiler import compile_ruleset

    errors, warnings = check(parsed.ruleset, parsed.unparsed)
    if parsed.errors:
        raise RulesError([*parsed.errors, *errors])
    if errors:
        raise RulesError(errors, warnings)
    return compile_ruleset(parsed.ruleset, warnings)


# imported last and only for annotations: the modules above may import this package
from .compiled import CompiledRuleset  # noqa: E402

if TYPE_CHECKING:  # the parser (and lark) load on first use
    from .parser import Parsed
