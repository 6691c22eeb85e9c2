"""A light pre-scan of rule text, run before the grammar.

It finds what the LALR parser cannot give us cheaply: the comments (for ``fmt``), the start
of every top-level declaration (where syntax-error recovery resumes), brackets still open
at the end of a declaration, and nesting so deep that building a tree would recurse too
far — that last check must happen before any recursive pass ever sees the text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .ast import Comment

__all__ = ["MAX_DEPTH", "Chunk", "Scan", "scan", "previous_tokens"]

MAX_DEPTH = 64
TOP_KEYWORDS = frozenset({"rule", "quota", "balance", "price", "schema", "default", "test"})

_TOKEN = re.compile(
    r'(?P<str>"(?:[^"\\\n]|\\[^\n])*"?)'
    r"|(?P<comment>#[^\n]*)"
    r"|(?P<open>[(\[{])"
    r"|(?P<close>[)\]}])"
    r"|(?P<word>[A-Za-z_][A-Za-z0-9_\-]*)"
    r"|(?P<nl>\n)"
    r"|(?P<ws>[ \t\r\f\v]+)"
    r'|(?P<other>[^\s"#()\[\]{}A-Za-z_]+)'
)
_COLON_NEXT = re.compile(r"[ \t]*:")
_CLOSER = {"(": ")", "[": "]", "{": "}"}


@dataclass(frozen=True, slots=True)
class Chunk:
    """One top-level declaration's text: ``text[start:end]``, beginning at a line start."""

    start: int
    end: int
    line: int  # 1-based line of ``start``
    # (line, column, message) of the first place nested deeper than MAX_DEPTH
    too_deep: tuple[int, int, str] | None
    # innermost bracket still open at the end: (char, line, column)
    unclosed: tuple[str, int, int] | None
    # (line, column) just after the last token, where "end of input" is reported
    end_pos: tuple[int, int]
    # (line, column) of the declaration keyword that starts the next chunk, if any
    next_pos: tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Scan:
    comments: tuple[Comment, ...]
    chunks: tuple[Chunk, ...]
    has_code: bool


def scan(text: str) -> Scan:
    """Split ``text`` into declaration chunks and collect its comments, in one pass."""
    comments: list[Comment] = []
    starts: list[tuple[int, int, int]] = []  # (offset of line start, line, column of keyword)
    line, line_start, line_has_code, has_code = 1, 0, False, False
    for m in _TOKEN.finditer(text):
        kind = m.lastgroup
        if kind == "nl":
            line, line_start, line_has_code = line + 1, m.end(), False
        elif kind == "ws":
            continue
        elif kind == "comment":
            comments.append(Comment(line, m.start() - line_start + 1, m.group(), line_has_code))
        else:
            if (
                kind == "word"
                and not line_has_code
                and m.group() in TOP_KEYWORDS
                and not _COLON_NEXT.match(text, m.end())
            ):
                starts.append((line_start, line, m.start() - line_start + 1))
            line_has_code = has_code = True
    if not starts or starts[0][0] != 0:
        starts.insert(0, (0, 1, 0))
    chunks = []
    for i, (offset, first_line, _col) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        next_pos = (starts[i + 1][1], starts[i + 1][2]) if i + 1 < len(starts) else None
        chunks.append(_measure(text, offset, end, first_line, next_pos))
    depths = _comment_depths(chunks, comments, text)
    return Scan(tuple(depths), tuple(chunks), has_code)


def _measure(text: str, start: int, end: int, line: int, next_pos: tuple[int, int] | None) -> Chunk:
    """Bracket nesting of one chunk: the too-deep spot, the innermost unclosed bracket."""
    first_line = line
    stack: list[tuple[str, int, int]] = []
    nots = 0
    too_deep: tuple[int, int, str] | None = None
    line_start = start
    end_pos = (line, 1)
    for m in _TOKEN.finditer(text, start, end):
        kind = m.lastgroup
        if kind == "nl":
            line, line_start = line + 1, m.end()
            continue
        if kind in ("ws", "comment"):
            continue
        col = m.start() - line_start + 1
        end_pos = (line, m.end() - line_start + 1)
        token = m.group()
        if kind == "open":
            stack.append((token, line, col))
        elif kind == "close":
            if stack:
                stack.pop()
            nots = 0
            continue
        elif token == "not":
            nots += 1
        else:
            nots = 0
            continue
        if too_deep is None and len(stack) + nots > MAX_DEPTH:
            what = "value" if token in "[{" else "condition"
            too_deep = (line, col, f"{what} nested deeper than {MAX_DEPTH} levels")
    unclosed = stack[-1] if stack else None
    return Chunk(start, end, first_line, too_deep, unclosed, end_pos, next_pos)


def _comment_depths(chunks: list[Chunk], comments: list[Comment], text: str) -> list[Comment]:
    """Give each comment the number of braces open around it (0 at top level)."""
    if not comments:
        return []
    by_line: dict[int, list[int]] = {}
    for i, c in enumerate(comments):
        by_line.setdefault(c.line, []).append(i)
    out = list(comments)
    for chunk in chunks:
        depth, line = 0, chunk.line
        for m in _TOKEN.finditer(text, chunk.start, chunk.end):
            kind = m.lastgroup
            if kind == "nl":
                line += 1
            elif kind == "open" and m.group() == "{":
                depth += 1
            elif kind == "close" and m.group() == "}":
                depth = max(depth - 1, 0)
            elif kind == "comment":
                for i in by_line.get(line, ()):
                    c = out[i]
                    out[i] = Comment(c.line, c.column, c.text, c.trailing, depth)
    return out


def previous_tokens(text: str, start: int, offset: int) -> list[tuple[str, int]]:
    """The last two tokens (not comments) in ``text[start:offset]`` with their offsets,
    oldest first, for messages like "expected … after X"."""
    last: list[tuple[str, int]] = []
    for m in _TOKEN.finditer(text, start, offset):
        if m.lastgroup not in ("nl", "ws", "comment"):
            last = [*last[-1:], (m.group(), m.start())]
    return last
