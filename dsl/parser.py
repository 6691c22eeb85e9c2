"""Rule text -> ``RuleFile`` / ``RulesetAst``, reporting every syntax error of a file at once.

Recovery works at two levels. The pre-scan splits a file at its top-level declarations
(``rule``, ``quota``, ``schema``, ``default``, ``test`` starting a line), and each piece is
parsed on its own, so one broken rule never hides the next. Inside a piece, a statement
line that fails (``enforce``, ``expect``, …) is blanked out and the piece parsed again,
which finds the next error in the same block; anything that could only cascade (an error
at or before one already reported) is dropped.

``read_ruleset`` keeps what did parse: the declarations of the pieces without errors, and
the names of those with errors, so the checker can still report the mistakes of the rest
without calling a declaration that failed to parse "unknown".
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from lark.exceptions import UnexpectedInput, VisitError

from . import ast
from .diagnostics import Diagnostic, RulesError
from .grammar import lark_parser
from .scan import Chunk, scan
from .source import read_rule_file, rule_files, text_problem
from .syntax_errors import DECLARATIONS, describe
from .transform import Decl, ToAst, balance_as_metric, unknown_metric

__all__ = ["parse_text", "parse_path", "read_ruleset", "read_text", "Parsed"]

_EMPTY = f"expected {DECLARATIONS}"
# the name a declaration gives itself: ``rule NAME``, ``quota NAME``, ``test "NAME"``, …
_DECL_NAME = re.compile(r'\s*(?:rule|quota|balance|test|price)\s+("(?:[^"\\\n]|\\.)*"|[A-Za-z_][\w-]*)')
_STATEMENT = re.compile(r"[ \t]*(when|deny|allow|enforce|limit|check|route|annotate|expect)\b")
_STRINGS = re.compile(r'"(?:[^"\\\n]|\\[^\n])*"?|#.*')
_MAX_RETRIES = 50


@dataclass(frozen=True, slots=True)
class Parsed:
    """What parsing found: the declarations that parsed, every syntax error, and the names
    of the declarations that did not parse (``rule a`` -> ``a``, ``test "t"`` -> ``t``)."""

    ruleset: ast.RulesetAst
    errors: tuple[Diagnostic, ...]
    unparsed: frozenset[str]

    def valid(self) -> ast.RulesetAst:
        """The whole ruleset; ``RulesError`` when any part did not parse."""
        if self.errors:
            raise RulesError(self.errors)
        return self.ruleset


def parse_text(text: str, file: str) -> ast.RuleFile:
    """Parse one file's text; raises ``RulesError`` carrying every syntax error found."""
    parsed = read_text(text, file)
    (rule_file,) = parsed.valid().files
    return rule_file


def parse_path(path: str | Path) -> ast.RulesetAst:
    """Parse a ``.rules`` file or every ``*.rules`` below a directory (sorted by path).

    ``Rule.order`` runs across the whole set in that order. Raises ``RulesError`` with the
    errors of every file.
    """
    return read_ruleset(path).valid()


def read_text(text: str, file: str) -> Parsed:
    """``parse_text`` that keeps what parsed instead of raising."""
    rule_file, errors, unparsed = _parse(text, file)
    files = (rule_file,) if rule_file is not None else ()
    return Parsed(ast.RulesetAst(files), tuple(errors), unparsed)


def read_ruleset(path: str | Path) -> Parsed:
    """``parse_path`` that keeps what parsed instead of raising (a missing path or a
    directory without rule files still raises ``RulesError``: there is nothing to keep)."""
    files: list[ast.RuleFile] = []
    errors: list[Diagnostic] = []
    unparsed: set[str] = set()
    for file_path in rule_files(path):
        try:
            text = read_rule_file(file_path)
        except RulesError as exc:
            errors.extend(exc.errors)
            continue
        rule_file, file_errors, file_unparsed = _parse(text, str(file_path))
        errors.extend(file_errors)
        unparsed |= file_unparsed
        if rule_file is not None:
            files.append(rule_file)
    return Parsed(_numbered(files), tuple(errors), frozenset(unparsed))


def _numbered(files: list[ast.RuleFile]) -> ast.RulesetAst:
    """``Rule.order`` across the whole set, in file order."""
    order = 0
    numbered = []
    for rf in files:
        rules = []
        for rule in rf.rules:
            rules.append(replace(rule, order=order))
            order += 1
        numbered.append(replace(rf, rules=tuple(rules)))
    return ast.RulesetAst(tuple(numbered))


# ----------------------------------------------------------------- internals


def _parse(
    text: str, file: str
) -> tuple[ast.RuleFile | None, list[Diagnostic], frozenset[str]]:
    """The file's declarations that parsed (None when nothing can: an unfit or empty text),
    its syntax errors, and the names of the declarations that did not parse."""
    if text.startswith("\ufeff"):
        text = text[1:]
    if "\r" in text:  # Windows line ends: keep comments and source lines clean
        text = text.replace("\r\n", "\n")
    problem = text_problem(text, file)
    if problem is not None:
        return None, [problem], frozenset()
    lines = text.split("\n")

    def diag(line: int, column: int, message: str) -> Diagnostic:
        source = lines[line - 1] if 0 < line <= len(lines) else ""
        return Diagnostic(file, line, column, message, "error", source)

    scanned = scan(text)
    if not scanned.has_code:
        what = "file has only comments" if scanned.comments else "file is empty"
        return None, [Diagnostic(file, 1, 1, f"{what}: {_EMPTY}")], frozenset()
    decls: list[Decl] = []
    errors: list[Diagnostic] = []
    unparsed: set[str] = set()
    for chunk in scanned.chunks:
        if chunk.too_deep is not None:
            errors.append(diag(*chunk.too_deep))
            chunk_decls: list[Decl] = []
        else:
            chunk_decls, chunk_errors = _parse_chunk(text, chunk, file)
            errors.extend(diag(line, col, msg) for line, col, msg in chunk_errors)
        if chunk_decls:
            decls.extend(chunk_decls)
        elif (named := _DECL_NAME.match(text, chunk.start, chunk.end)) is not None:
            unparsed.add(_unquote(named[1]))
    rule_file = _assemble(decls, file, text, scanned.comments, errors, diag)
    return rule_file, _balances_as_metrics(errors, rule_file), frozenset(unparsed)


def _balances_as_metrics(errors: list[Diagnostic], rf: ast.RuleFile) -> list[Diagnostic]:
    """An unknown metric that is the name of a balance of the file: say so."""
    if not rf.balances:
        return errors
    plain = {unknown_metric(b.name): balance_as_metric(b.name) for b in rf.balances}
    return [replace(d, message=plain[d.message]) if d.message in plain else d for d in errors]


def _unquote(name: str) -> str:
    if not name.startswith('"'):
        return name
    try:
        return str(json.loads(name))
    except ValueError:
        return name[1:-1]


def _parse_chunk(
    text: str, chunk: Chunk, file: str
) -> tuple[list[Decl], list[tuple[int, int, str]]]:
    src = text[chunk.start : chunk.end]
    offset = chunk.line - 1
    errors: list[tuple[int, int, str]] = []
    for _ in range(_MAX_RETRIES):
        try:
            tree = lark_parser().parse(src)
        except UnexpectedInput as exc:
            problem = describe(exc, src, chunk, offset, text)
            if errors and problem.line <= errors[-1][0]:
                break  # a consequence of the previous error, not a new one
            errors.append((problem.line, problem.column, problem.message))
            if "end of file" in problem.message or "new declaration" in problem.message:
                break
            span = _statement_span(src.split("\n"), problem.blame - offset - 1)
            if span is None:
                break
            src = _blank(src, *span)
            continue
        if errors:
            break
        transformer = ToAst(file, offset)
        try:
            result = transformer.transform(tree)
        except VisitError as exc:  # a bug, but still reported as a diagnostic
            orig = exc.orig_exc
            return [], [(chunk.line, 1, f"cannot read this declaration: {orig}")]
        errors.extend((p.line, p.column, m) for p, m in transformer.errors)
        return list(result), errors
    return [], errors


def _has_brace(line: str) -> bool:
    code = _STRINGS.sub("", line)
    return "{" in code or "}" in code


def _statement_span(lines: list[str], index: int) -> tuple[int, int] | None:
    """Lines ``[first, last]`` of the statement holding line ``index``, if it is safe to
    blank out (a statement inside a block that holds no brace); None otherwise."""
    if not 0 < index < len(lines):
        return None
    first = index
    while not _STATEMENT.match(lines[first]):
        if first == 0 or _has_brace(lines[first]):
            return None
        first -= 1
    if first == 0 or _has_brace(lines[first]):
        return None
    last = first
    while (
        last + 1 < len(lines)
        and not _STATEMENT.match(lines[last + 1])
        and not _has_brace(lines[last + 1])
    ):
        last += 1
    return first, last


def _blank(src: str, first: int, last: int) -> str:
    lines = src.split("\n")
    for i in range(first, last + 1):
        lines[i] = " " * len(lines[i])
    return "\n".join(lines)


def _assemble(
    decls: list[Decl],
    file: str,
    text: str,
    comments: tuple[ast.Comment, ...],
    errors: list[Diagnostic],
    diag: Callable[[int, int, str], Diagnostic],
) -> ast.RuleFile:
    default: ast.Default | None = None
    schemas: list[ast.Schema] = []
    quotas: list[ast.Quota] = []
    prices: list[ast.Price] = []
    balances: list[ast.Balance] = []
    rules: list[ast.Rule] = []
    tests: list[ast.TestCase] = []
    for decl in decls:
        if isinstance(decl, ast.Default):
            if default is not None:
                errors.append(
                    diag(
                        decl.pos.line,
                        decl.pos.column,
                        f"second 'default': the first is at {default.pos}; "
                        "a ruleset has at most one",
                    )
                )
            else:
                default = decl
        elif isinstance(decl, ast.Schema):
            schemas.append(decl)
        elif isinstance(decl, ast.Quota):
            quotas.append(decl)
        elif isinstance(decl, ast.Price):
            prices.append(decl)
        elif isinstance(decl, ast.Balance):
            balances.append(decl)
        elif isinstance(decl, ast.Rule):
            rules.append(replace(decl, order=len(rules)))
        else:
            tests.append(decl)
    return ast.RuleFile(
        file,
        default,
        tuple(schemas),
        tuple(quotas),
        tuple(rules),
        tuple(tests),
        text,
        comments,
        prices=tuple(prices),
        balances=tuple(balances),
    )
