"""Value semantics shared by every evaluator: path lookup, equality, ordering, ``in``, globs.

The compiled closures, the decision tree and the reference interpreter all answer through
these functions, so "what does ``==`` mean" is written down exactly once. Rules see JSON:
bools are never numbers, a missing path is null, and no operator ever raises.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Hashable, Mapping
from typing import Any

from .ast import Path, Value
from .compiled import EvalContext

__all__ = [
    "Getter", "resolve", "getter", "equals", "ordered", "contains",
    "glob_match", "compile_glob", "index_key", "NULL_KEY",
]

Getter = Callable[[EvalContext], Value]

_ORDER_OPS: dict[str, Callable[[Any, Any], bool]] = {
    "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
}


# ------------------------------------------------------------------ paths


def _dig(value: Any, keys: tuple[str, ...]) -> Value:
    """Nested lookup; any non-object on the way makes the whole path null."""
    for key in keys:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def resolve(ctx: EvalContext, path: Path | tuple[str, ...]) -> Value:
    """The value of a path in a context; null when anything on the way is missing."""
    parts = path.parts if isinstance(path, Path) else path
    if len(parts) < 2:
        return None
    root = parts[0]
    if root == "user":
        if ctx.user_id is None:
            return None
        if parts[1] == "id":
            return ctx.user_id if len(parts) == 2 else None
        return _dig(ctx.user, parts[1:])
    if root == "group":
        if ctx.group_id is None:
            return None
        if parts[1] == "id":
            return ctx.group_id if len(parts) == 2 else None
        return _dig(ctx.group, parts[1:])
    if root == "request":
        return _dig(ctx.request, parts[1:])
    return None


def getter(path: Path | tuple[str, ...]) -> Getter:
    """A closure resolving one path, specialised once so that a lookup is one or two steps.

    Always agrees with ``resolve``; the common one- and two-level shapes avoid the loop.
    """
    parts = path.parts if isinstance(path, Path) else tuple(path)
    if len(parts) < 2 or parts[0] not in ("user", "group", "request"):
        return lambda ctx: None
    root, rest = parts[0], parts[1:]
    if root == "request":
        if len(rest) == 1:
            key = rest[0]
            return lambda ctx: ctx.request.get(key)
        return lambda ctx: _dig(ctx.request, rest)
    if rest[0] == "id":
        if len(rest) > 1:
            return lambda ctx: None
        if root == "user":
            return lambda ctx: ctx.user_id
        return lambda ctx: ctx.group_id
    if len(rest) == 1:
        key = rest[0]
        if root == "user":
            return lambda ctx: None if ctx.user_id is None else ctx.user.get(key)
        return lambda ctx: None if ctx.group_id is None else ctx.group.get(key)
    if root == "user":
        return lambda ctx: None if ctx.user_id is None else _dig(ctx.user, rest)
    return lambda ctx: None if ctx.group_id is None else _dig(ctx.group, rest)


# ------------------------------------------------------------- comparison


def is_number(value: object) -> bool:
    """An int or float that is not a bool (Python counts bools as ints; JSON does not)."""
    return isinstance(value, int | float) and not isinstance(value, bool)


def equals(a: object, b: object) -> bool:
    """JSON equality: ``true != 1``, ``1 == 1.0``, ``null == null``, lists element-wise."""
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    if is_number(a) or is_number(b):
        return is_number(a) and is_number(b) and a == b
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(equals(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(equals(a[k], b[k]) for k in a)
    return False


def ordered(op: str, a: object, b: object) -> bool:
    """``< <= > >=``: numbers with numbers, strings with strings; anything else is false."""
    fn = _ORDER_OPS[op]
    if is_number(a) and is_number(b):
        if (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
            return False
        return fn(a, b)
    if isinstance(a, str) and isinstance(b, str):
        return fn(a, b)
    return False


def contains(container: object, item: object) -> bool:
    """``item in container``: the container must be a list; a null item is never in it."""
    if item is None or not isinstance(container, list | tuple):
        return False
    return any(equals(item, element) for element in container)


# ------------------------------------------------------------------ globs


def glob_match(pattern: str, text: object) -> bool:
    """``*`` any run (``/`` and empty included), ``?`` one character, the rest literal.

    The classic two-pointer walk that remembers only the last ``*``: O(len(text) *
    len(pattern)) at worst, never exponential, whatever the pattern.
    """
    if not isinstance(text, str):
        return False
    p = t = 0
    star = -1
    resume = 0
    np, nt = len(pattern), len(text)
    while t < nt:
        if p < np and (pattern[p] == "?" or (pattern[p] != "*" and pattern[p] == text[t])):
            p += 1
            t += 1
        elif p < np and pattern[p] == "*":
            star = p
            resume = t
            p += 1
        elif star >= 0:
            p = star + 1
            resume += 1
            t = resume
        else:
            return False
    while p < np and pattern[p] == "*":
        p += 1
    return p == np


def _segment_at(segment: str, text: str, at: int) -> bool:
    """Whether a ``?``-bearing, star-free segment matches ``text`` starting at ``at``."""
    if at + len(segment) > len(text):
        return False
    return all(ch == "?" or text[at + i] == ch for i, ch in enumerate(segment))


def _segment_find(segment: str, text: str, start: int, stop: int) -> int:
    """Leftmost position >= start where the segment matches and ends by ``stop``; -1 if none."""
    if "?" not in segment:
        return text.find(segment, start, stop)
    # anchor on the longest literal run so str.find (in C) does most of the scanning
    runs = segment.split("?")
    anchor = max(runs, key=len)
    offset = segment.find(anchor) if anchor else 0
    last = stop - len(segment)
    pos = start
    while pos <= last:
        if anchor:
            hit = text.find(anchor, pos + offset, stop)
            if hit < 0:
                return -1
            pos = hit - offset
            if pos > last:
                return -1
        if _segment_at(segment, text, pos):
            return pos
        pos += 1
    return -1


def compile_glob(pattern: str) -> Callable[[object], bool]:
    """A matcher for one pattern, split once at load time into its star-separated pieces.

    Pieces between stars are matched leftmost-first, which is exact for globs whose only
    wildcard of variable length is ``*``: each piece is searched once, so the cost is
    linear in the text per piece (mostly inside ``str.find``).
    """
    if "*" not in pattern:
        if "?" not in pattern:
            return lambda text: isinstance(text, str) and text == pattern
        size = len(pattern)
        return lambda text: (isinstance(text, str) and len(text) == size
                             and _segment_at(pattern, text, 0))
    pieces = pattern.split("*")
    head, middle, tail = pieces[0], [p for p in pieces[1:-1] if p], pieces[-1]
    if not middle and "?" not in head and "?" not in tail:
        need = len(head) + len(tail)
        return lambda text: (isinstance(text, str) and len(text) >= need
                             and text.startswith(head) and text.endswith(tail))

    def match(text: object) -> bool:
        if not isinstance(text, str):
            return False
        end = len(text) - len(tail)
        if end < len(head) or not _segment_at(head, text, 0) or not _segment_at(tail, text, end):
            return False
        pos = len(head)
        for piece in middle:
            hit = _segment_find(piece, text, pos, end)
            if hit < 0:
                return False
            pos = hit + len(piece)
        return True

    return match


# ------------------------------------------------------------------ index


class _NullKey:
    """The index key of null: distinct from every string, number, bool and list key."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "null"


NULL_KEY: Hashable = _NullKey()


def index_key(value: object) -> Hashable:
    """A hashable key such that ``index_key(a) == index_key(b)`` exactly when ``equals(a, b)``.

    Strings are their own key (the common case costs nothing); numbers share a key across
    int and float; bools and null get keys no number or string can collide with; NaN gets
    a fresh key, since it equals nothing.
    """
    if type(value) is str:
        return value
    if value is None:
        return NULL_KEY
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | float):
        if isinstance(value, float) and math.isnan(value):
            return object()
        return ("num", value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list | tuple):
        return ("list", tuple(index_key(v) for v in value))
    if isinstance(value, Mapping):
        return ("obj", frozenset((k, index_key(v)) for k, v in value.items()))
    return object()
