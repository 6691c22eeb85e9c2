"""Lark's parse exceptions turned into diagnostics in plain words.

The user never sees a terminal name (``__ANON_0``, ``RBRACE``) or a traceback: each error
says what was expected, from the token before the error when that tells us most (``per``
must be followed by a duration) and otherwise from the set of tokens the parser could take.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass

from lark.exceptions import UnexpectedCharacters, UnexpectedInput, UnexpectedToken

from .grammar import terminal_literals
from .scan import Chunk, previous_tokens

__all__ = ["describe", "Problem", "DECLARATIONS"]

NAMED_TERMINALS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "DURATION": "a duration like 30s, 5m, 1h, 1d",
    "STRING": "a string in quotes",
    "$END": "end of file",
}
_ACTIONS = ("deny", "allow", "enforce", "limit", "check", "route", "annotate")
_TOP = ("rule", "quota", "balance", "price", "schema", "default", "test")
DECLARATIONS = "a rule, quota, balance, price, schema, default or test"
_COMPARISONS = ("==", "!=", "<", "<=", ">", ">=")
_KEYWORDS = frozenset(
    {
        *_ACTIONS,
        *_TOP,
        "when",
        "per",
        "for",
        "each",
        "everyone",
        "on_store_error",
        "if",
        "expect",
        "request",
        "times",
        "priority",
        "shadow",
        "to",
        "limits",
        "of",
        "or",
        "and",
        "input",
        "output",
        "cached_input",
        "tokens",
    }
)

_WORD = re.compile(r"\s*(\w+)")
_CONDITION = 'expected a condition, like user.tier == "free"'
_VALUE = "expected a value: a string, a number, true, false, null or a path like user.tier"
_DURATION = "expected a duration like 30s, 5m, 1h, 1d, or day, week, month"
_TOKEN_COUNT = "expected a token count like 1M or 1K, as in per 1M tokens"
_METRIC = "expected a metric: requests, tokens, input_tokens, output_tokens, cost"

# (token before the error, a token the parser would have taken) -> what to say
_AFTER: dict[tuple[str, str], str] = {
    ("limits", "NAME"): _METRIC,
    ("limit", "NAME"): _METRIC,
    ("to", "NUMBER"): "expected a limit: a number, a path like group.monthly_credits, "
    "or N% of a path",
    ("per", "DURATION"): _DURATION,
    ("for", "each"): "expected 'each' or 'everyone' after 'for'",
    ("each", "user"): "expected a scope after 'for each': user, group or user in group",
    ("enforce", "NAME"): "expected a quota or balance name after 'enforce'",
    ("then", "NAME"): "expected a balance name after 'then', like enforce plan then credits",
    ("balance", "NAME"): "expected a balance name after 'balance'",
    ("below", "NUMBER"): "expected an amount after 'warn below', like warn below 10",
    ("check", "STRING"): 'expected a check name in quotes after check, like check "pii-scan"',
    ("route", "STRING"): 'expected a model in quotes after route, like route "openai/gpt-4.1"',
    ("annotate", "STRING"): 'expected "key" = "value" after annotate',
    ("deny", "STRING"): 'expected a message in quotes after deny, like deny "not allowed"',
    ("rule", "NAME"): "expected a rule name after 'rule'",
    ("quota", "NAME"): "expected a quota name after 'quota'",
    ("price", "STRING"): 'expected a model glob in quotes after price, like price "openai/gpt-5*"',
    ("input", "NUMBER"): "expected a price in USD after 'input', like input 1.25",
    ("output", "NUMBER"): "expected a price in USD after 'output', like output 10",
    ("cached_input", "NUMBER"): "expected a price in USD after 'cached_input', like cached_input 0.125",
    ("schema", "user"): "expected user, group or request after 'schema'",
    ("default", "allow"): 'expected allow or deny "message" after default',
    ("test", "STRING"): 'expected a test name in quotes after test, like test "vip users"',
    ("priority", "NUMBER"): "expected a whole number after 'priority', like priority 100",
    ("on_store_error", "allow"): "expected allow or deny after on_store_error",
    ("when", "NAME"): _CONDITION,
    ("if", "NAME"): _CONDITION,
    ("and", "NAME"): _CONDITION,
    ("or", "NAME"): _CONDITION,
    ("not", "NAME"): _CONDITION,
    ("(", "NAME"): _CONDITION,
    ("in", "["): 'expected a list like ["a", "b"] or a path after in',
    ("~", "STRING"): 'expected a glob pattern in quotes after ~, like "openai/*"',
    ("expect", "NAME"): "expected what to expect: allow, deny, reason, route, model, quotas, "
    "checks, rules, annotate or exceeded",
    ("request", "{"): "expected a request object { … } after request",
    ("times", "NUMBER"): "expected a count after times, like times 100",
    (".", "NAME"): "expected a key after '.'",
    ("%", "of"): "expected 'of' after '%', like 10% of group.monthly_credits",
    ("of", "NAME"): "expected a path after 'of', like group.monthly_credits",
    ("and", "model"): "expected 'model' after 'and'",
    ("=", "STRING"): "expected a value in quotes after '='",
    (":", "STRING"): "expected a value: a string, number, true, false, null, a list or an object",
    (":", "NAME"): "expected a type: string, number, bool, any or list<T>",
    ("<", "NAME"): "expected a type: string, number, bool, any or list<T>",
    ("or", "NUMBER"): "expected a fallback number after 'or'",
}
for _op in _COMPARISONS:
    _AFTER[(_op, "NUMBER")] = _VALUE


def _words(expected: Iterable[str]) -> set[str]:
    """Terminal names -> what they stand for (``RBRACE`` -> ``}``; ``NAME`` stays)."""
    literals = terminal_literals()
    return {literals.get(name, name) for name in expected}


def expected_phrase(expected: set[str]) -> str:
    """``{'}', 'deny', …}`` -> "an action (deny, allow, …) or '}'"."""
    rest = set(expected)
    parts: list[str] = []
    if set(_TOP) <= rest:
        parts.append(DECLARATIONS)
        rest -= set(_TOP)
    if "when" in rest and set(_ACTIONS) <= rest:
        parts.append("'when'")
        rest.discard("when")
    if set(_ACTIONS) <= rest:
        parts.append("an action (" + ", ".join(_ACTIONS) + ")")
        rest -= set(_ACTIONS)
    if set(_COMPARISONS) <= rest:
        parts.append("a comparison (==, !=, <, <=, >, >=), 'in', '~' or 'exists'")
        rest -= {*_COMPARISONS, "in", "~", "exists"}
    if {"and", "or"} <= rest:
        parts.append("'and', 'or'")
        rest -= {"and", "or"}
    for word in sorted(rest, key=lambda w: (w in NAMED_TERMINALS, w)):
        parts.append(NAMED_TERMINALS.get(word, f"'{word}'"))
    if not parts:
        return "something else"
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " or " + parts[-1]


def _found(token: UnexpectedToken) -> str:
    tok = token.token
    if tok.type == "$END":
        return "end of file"
    text = str(tok)
    if len(text) > 40:
        text = text[:37] + "…"
    return text if tok.type == "STRING" else f"'{text}'"


@dataclass(frozen=True, slots=True)
class Problem:
    """A syntax error at ``line``:``column`` (file lines); ``blame`` is the file line of the
    statement at fault, which recovery blanks out before looking for the next error."""

    line: int
    column: int
    message: str
    blame: int


def describe(exc: UnexpectedInput, src: str, chunk: Chunk, line_offset: int, text: str) -> Problem:
    """What went wrong at one parse error in ``src``, the text of ``chunk`` (``text`` is the
    whole file, for a look at the declaration that follows)."""
    if isinstance(exc, UnexpectedCharacters):
        line, column, message = _characters(exc, src, line_offset)
        return Problem(line, column, message, line)
    if isinstance(exc, UnexpectedToken):
        line, column, message, blame = _token(exc, src, chunk, line_offset, text)
        return Problem(line, column, message, blame)
    line = (getattr(exc, "line", 1) or 1) + line_offset
    return Problem(line, getattr(exc, "column", 1) or 1, "syntax error", line)


def _characters(exc: UnexpectedCharacters, src: str, line_offset: int) -> tuple[int, int, str]:
    line, column = exc.line + line_offset, exc.column
    at = exc.pos_in_stream or 0
    char = src[at] if at < len(src) else ""
    ahead = src[at : at + 2]
    expected = _words(exc.allowed or ())
    if char == '"':
        return line, column, "unterminated string: missing closing quote"
    if char == "'":
        return line, column, 'strings use double quotes: "like this"'
    if char == "=" and "==" in expected:
        return line, column, "'=' is not a comparison: use '==' (or '!=')"
    if char == "!":
        return line, column, "'!' is not an operator: use 'not' or '!='"
    if ahead in ("&&", "||"):
        word = "and" if ahead == "&&" else "or"
        return line, column, f"'{ahead}' is not an operator: use '{word}'"
    shown = f"'{char}'" if char.isprintable() else f"U+{ord(char):04X}" if char else "end"
    message = f"unexpected character {shown}"
    if expected:
        message += f": expected {expected_phrase(expected)}"
    return line, column, message


def _token(
    exc: UnexpectedToken, src: str, chunk: Chunk, line_offset: int, text: str
) -> tuple[int, int, str, int]:
    tok = exc.token
    expected = _words(_accepts(exc))
    at_end = tok.type == "$END"
    if at_end:
        line, column = chunk.next_pos or chunk.end_pos
        offset = len(src)
    else:
        line, column = (tok.line or 1) + line_offset, tok.column or 1
        offset = tok.start_pos or 0
    found = _found(exc)
    if at_end and chunk.unclosed is not None:
        opener, oline, ocol = chunk.unclosed
        closer = {"{": "}", "(": ")", "[": "]"}[opener]
        block = "block" if opener == "{" else f"'{opener}'"
        where = "unexpected end of file" if chunk.next_pos is None else "unexpected new declaration"
        return (
            line,
            column,
            f"{where}: a '{closer}' is missing ({block} opened at {oline}:{ocol})",
            line,
        )
    if at_end and chunk.next_pos is not None:
        word = _WORD.match(text, chunk.end)
        found = f"'{word.group(1)}'" if word else "the next declaration"
    value = str(tok)
    if value == "}" and set(_TOP) <= expected:
        return line, column, "unexpected '}': no block is open here", line
    if value == "when" and set(_ACTIONS) <= expected:
        return line, column, "'when' must come first in a rule, before any action", line
    if value == "=" and "==" in expected:
        return line, column, "'=' is not a comparison: use '==' (or '!=')", line
    message, moved = _after(src, offset, expected)
    # the statement at fault is the one the token before the error belongs to
    before = previous_tokens(src, 0, offset)
    blame = src.count("\n", 0, before[-1][1]) + 1 + line_offset if before else None
    if moved is not None:  # a keyword read as a name: the error is at that keyword
        found = f"'{moved[0]}'"
        blame = src.count("\n", 0, moved[2]) + 1 + line_offset
        line = src.count("\n", 0, moved[1]) + 1 + line_offset
        column = moved[1] - (src.rfind("\n", 0, moved[1]) + 1) + 1
        at_end = False
    if message is None:
        message = f"expected {expected_phrase(expected)}"
    message = (
        f"{message}, found {found}"
        if not at_end or chunk.next_pos
        else (f"unexpected end of file: {message}")
    )
    if tok.type == "NAME":
        keywords = [w for w in expected if w.isalpha() and w not in NAMED_TERMINALS]
        close = difflib.get_close_matches(value, keywords, n=1, cutoff=0.75)
        if close:
            message += f" — did you mean '{close[0]}'?"
    return line, column, message, blame or line


def _accepts(exc: UnexpectedToken) -> set[str]:
    """The exact tokens the parser could take (LALR lookahead sets are merged, so
    ``exc.expected`` may list tokens that only fit some other context)."""
    try:
        return set(exc.interactive_parser.accepts())
    except Exception:  # accepts() replays the parser; fall back to Lark's own list
        return set(exc.expected)


def _after(
    src: str, offset: int, expected: set[str]
) -> tuple[str | None, tuple[str, int, int] | None]:
    """A message from the token before the error, and the keyword the error really sits on
    when the parser took a keyword for a name (``enforce`` followed by ``deny "x"``)."""
    tokens = previous_tokens(src, 0, offset)
    if not tokens:
        if set(_TOP) <= expected:
            return f"expected {DECLARATIONS}", None
        return None, None
    prev = tokens[-1][0]
    if prev == "per" and "NAME" not in expected and "DURATION" in expected:
        return _TOKEN_COUNT, None  # a price's `per`, where no calendar window fits
    for (word, needs), message in _AFTER.items():
        if word == prev and needs in expected:
            return message, None
    if len(tokens) == 2 and prev in expected and prev in _KEYWORDS:
        before = tokens[0][0]
        for (word, _needs), message in _AFTER.items():
            if word == before:
                return message, (tokens[1][0], tokens[1][1], tokens[0][1])
    return None, None
