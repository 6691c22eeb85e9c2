"""The decision tree: which rules can possibly match a context, found by dictionary lookups.

Each rule's condition is put in disjunctive normal form (a few ``and``-clauses joined by
``or``). From every clause the *indexable* tests are kept: ``path == literal``,
``path in [literals]``, ``literal in path``, ``path exists`` and globs with a literal
prefix. Everything else (negations, ordering, path-to-path comparisons) stays residual:
the rule's compiled test re-checks the whole condition, so the index only has to be
sound — never drop a rule that can match — and selective.

The tree is a trie over (path, kind) "dimensions": the dimension used by the most clauses
sits at the root with one branch per literal key; clauses that do not test it go to the
next dimension of an ``otherwise`` chain (``_Node.rest``). A lookup resolves a path once
per switch it visits and follows one dictionary entry per key, so its cost grows with the tree's depth and the number of candidates, not
with the number of rules.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final, TypeAlias

from .ast import And, Compare, Exists, Expr, Glob, In, ListLiteral, Literal, Not, Or, Path
from .compiled import EvalContext
from .reference import evaluate
from .render import scalar_text
from .values import NULL_KEY, Getter, getter, index_key

__all__ = ["DecisionTree", "build_index", "clauses_of", "MAX_CLAUSES", "Dim"]

MAX_CLAUSES: Final = 16  # past this many DNF clauses a condition is not indexed

# kinds of dimension, cheapest to test first when counts tie
EQ: Final = "eq"
HAS: Final = "has"
PREFIX: Final = "prefix"
EXISTS: Final = "exists"
_KIND_ORDER = {EQ: 0, HAS: 1, PREFIX: 2, EXISTS: 3}

_EMPTY = EvalContext()


@dataclass(frozen=True, slots=True)
class Dim:
    """One indexed question about a context: the key(s) a path's value yields.

    ``eq``: the value's key; ``has``: the keys of the list's elements; ``prefix``: the first
    ``width`` characters of a string; ``exists``: ``True`` when the value is not null.
    """

    kind: str
    parts: tuple[str, ...]
    width: int = 0

    def sort_key(self) -> tuple[int, tuple[str, ...], int]:
        return (_KIND_ORDER[self.kind], self.parts, self.width)

    def __str__(self) -> str:
        path = ".".join(self.parts)
        if self.kind == EQ:
            return f"{path} =="
        if self.kind == HAS:
            return f"… in {path}"
        if self.kind == PREFIX:
            return f"{path} ~ prefix[{self.width}]"
        return f"{path} exists"


# A clause's constraints: for each dimension, the keys of which at least one must be seen.
Constraint: TypeAlias = dict[Dim, frozenset[Hashable]]


# ------------------------------------------------------------- normal form


def _has_path(expr: Expr) -> bool:
    if isinstance(expr, And | Or):
        return any(_has_path(e) for e in expr.items)
    if isinstance(expr, Not):
        return _has_path(expr.item)
    if isinstance(expr, Compare):
        return isinstance(expr.left, Path) or isinstance(expr.right, Path)
    if isinstance(expr, In):
        return isinstance(expr.item, Path) or isinstance(expr.container, Path)
    return isinstance(expr, Glob | Exists)


def _atom(expr: Expr) -> tuple[Dim, frozenset[Hashable]] | None:
    """The index constraint a single test imposes, or None when it cannot be indexed."""
    if isinstance(expr, Compare) and expr.op == "==":
        path, lit = expr.left, expr.right
        if isinstance(lit, Path):
            path, lit = lit, path
        if isinstance(path, Path) and isinstance(lit, Literal):
            return Dim(EQ, path.parts), frozenset((index_key(lit.value),))
        return None
    if isinstance(expr, In):
        if isinstance(expr.item, Path) and isinstance(expr.container, ListLiteral):
            keys = frozenset(index_key(v) for v in expr.container.items if v is not None)
            return Dim(EQ, expr.item.parts), keys
        if isinstance(expr.item, Literal) and isinstance(expr.container, Path):
            v = expr.item.value
            keys = frozenset() if v is None else frozenset((index_key(v),))
            return Dim(HAS, expr.container.parts), keys
        return None
    if isinstance(expr, Exists):
        return Dim(EXISTS, expr.path.parts), frozenset((True,))
    if isinstance(expr, Glob):
        cut = min((i for i, ch in enumerate(expr.pattern) if ch in "*?"),
                  default=len(expr.pattern))
        if cut == 0:
            return None
        if cut == len(expr.pattern):  # no wildcard at all: plain equality
            return Dim(EQ, expr.subject.parts), frozenset((expr.pattern,))
        return Dim(PREFIX, expr.subject.parts, cut), frozenset((expr.pattern[:cut],))
    return None


Clause: TypeAlias = tuple[Expr, ...]  # indexable tests only; the rest is residual


def _dnf(expr: Expr) -> list[Clause]:
    """Clauses whose disjunction is implied by ``expr`` (exact on indexable tests).

    Dropping a test only weakens a clause, which keeps the index sound; that is how
    non-indexable tests and over-large products are handled. An empty list means
    "can never hold".
    """
    if not _has_path(expr):
        return [()] if evaluate(expr, _EMPTY) else []
    if isinstance(expr, Or):
        out: list[Clause] = []
        for item in expr.items:
            out.extend(_dnf(item))
            if len(out) > MAX_CLAUSES:
                return [()]
        return out
    if isinstance(expr, And):
        acc: list[Clause] = [()]
        for item in expr.items:
            sub = _dnf(item)
            if len(acc) * len(sub) > MAX_CLAUSES:
                continue  # too many combinations: treat this part as residual
            acc = [a + b for a in acc for b in sub]
        return acc
    if isinstance(expr, Not):
        return [()]  # negations are not indexed (as in OPA)
    return [(expr,)] if _atom(expr) is not None else [()]


def _constraint(clause: Clause) -> Constraint | None:
    """Merge a clause's tests per dimension; None when they contradict each other."""
    out: Constraint = {}
    for test in clause:
        atom = _atom(test)
        assert atom is not None
        dim, keys = atom
        if dim not in out:
            out[dim] = keys
        elif dim.kind == HAS:
            # several "x in path" tests: all must hold, one of them is enough to index by
            if not keys:
                out[dim] = keys
        else:
            out[dim] = out[dim] & keys
        if not out[dim]:
            return None
    return out


def clauses_of(condition: Expr | None) -> list[Constraint]:
    """The index constraints of a condition, one per DNF clause (``[{}]``: always a candidate)."""
    if condition is None:
        return [{}]
    out: list[Constraint] = []
    for clause in _dnf(condition):
        c = _constraint(clause)
        if c is not None and c not in out:
            out.append(c)
    return out


# -------------------------------------------------------------------- tree


@dataclass(slots=True)
class _Node:
    rules: tuple[int, ...] = ()
    dim: Dim | None = None
    kind: str | None = None  # dim.kind and dim.width, copied here for the lookup loop
    width: int = 0
    get: Getter | None = None
    branches: dict[Hashable, _Node] = field(default_factory=dict)
    rest: _Node | None = None


_Entry: TypeAlias = tuple[int, Constraint]


def _build(entries: list[_Entry]) -> _Node:
    """A node and its ``rest`` chain, one switch per dimension, most-tested first.

    Each clause is filed under the highest-ranked dimension it tests (OPA ranks references
    by how many rules use them); the chain is a loop, not recursion, so thousands of
    distinct paths build and print fine. Only ``case`` branches recurse, as deep as a
    clause has tests.
    """
    root = _Node(rules=tuple(sorted({pos for pos, c in entries if not c})))
    pending = [(pos, c) for pos, c in entries if c]
    if not pending:
        return root
    counts: dict[Dim, int] = {}
    for _, c in pending:
        for dim in c:
            counts[dim] = counts.get(dim, 0) + 1
    order = sorted(counts, key=lambda d: (-counts[d], d.sort_key()))
    rank = {dim: i for i, dim in enumerate(order)}
    levels: dict[int, list[_Entry]] = {}
    for entry in pending:
        levels.setdefault(min(rank[d] for d in entry[1]), []).append(entry)
    node = root
    for i, level in enumerate(sorted(levels)):
        if i:
            node.rest = _Node()
            node = node.rest
        dim = order[level]
        by_key: dict[Hashable, list[_Entry]] = {}
        for pos, c in levels[level]:
            remaining = {d: k for d, k in c.items() if d != dim}
            for key in c[dim]:
                by_key.setdefault(key, []).append((pos, remaining))
        node.dim, node.kind, node.width = dim, dim.kind, dim.width
        node.get = getter(dim.parts)
        node.branches = {key: _build(group) for key, group in by_key.items()}
    return root


class DecisionTree:
    """The ``RuleIndex`` of a compiled ruleset (see ``dsl.compiled.RuleIndex``)."""

    __slots__ = ("_always", "_names", "_never", "_root", "_unindexed")

    def __init__(self, conditions: Sequence[Expr | None], names: Sequence[str] = ()) -> None:
        self._names = tuple(names) or tuple(f"#{i}" for i in range(len(conditions)))
        entries: list[_Entry] = []
        self._unindexed = 0
        self._never = 0
        for pos, condition in enumerate(conditions):
            constraints = clauses_of(condition)
            if not constraints:
                self._never += 1
            if {} in constraints:
                # one clause with nothing indexable makes the others pointless
                constraints = [{}]
                self._unindexed += condition is not None
            entries.extend((pos, c) for c in constraints)
        self._root = _build(entries)
        self._always = self._root.rules

    def candidates(self, ctx: EvalContext) -> list[int]:
        """Positions of the rules whose indexed tests can hold, ascending, without repeats."""
        root = self._root
        if root.kind is None:
            return list(root.rules)
        found: list[int] = []
        stack = [root]
        pop, push = stack.pop, stack.append
        while stack:
            node = pop()
            if node.rules:
                found.extend(node.rules)
            kind = node.kind
            if kind is None:
                continue
            if node.rest is not None:
                push(node.rest)
            value = node.get(ctx)  # type: ignore[misc]
            branches = node.branches
            if kind == EQ:
                child = branches.get(value if type(value) is str else index_key(value))
                if child is not None:
                    push(child)
            elif kind == HAS:
                if isinstance(value, list | tuple):
                    for element in value:
                        child = branches.get(index_key(element))
                        if child is not None:
                            push(child)
            elif kind == PREFIX:
                if isinstance(value, str) and len(value) >= node.width:
                    child = branches.get(value[: node.width])
                    if child is not None:
                        push(child)
            elif value is not None:  # EXISTS
                child = branches.get(True)
                if child is not None:
                    push(child)
        if len(found) < 2:
            return found
        return sorted(set(found))

    # ------------------------------------------------------------ describe

    def _label(self, positions: Sequence[int]) -> str:
        return ", ".join(f"{self._names[p]}#{p}" for p in positions)

    def _lines(self, node: _Node | None, depth: int) -> Iterator[str]:
        pad = "  " * depth
        word = "switch"
        while node is not None:
            if node.rules:
                yield f"{pad}rules: {self._label(node.rules)}"
            if node.dim is None:
                return
            yield f"{pad}{word} {node.dim}"
            for key in sorted(node.branches, key=_key_text):
                yield f"{pad}  case {_key_text(key)}:"
                yield from self._lines(node.branches[key], depth + 2)
            node, word = node.rest, "otherwise switch"

    def describe(self) -> str:
        """The tree, one line per step: ``switch`` on a dimension, ``case`` per key,
        ``otherwise switch`` for the next dimension every lookup also tries."""
        head = (f"decision tree over {len(self._names)} rules: "
                f"{len(self._always)} always candidates "
                f"({self._unindexed} with unindexable conditions), "
                f"{self._never} that can never match, depth {self.depth()}")
        return "\n".join([head, *self._lines(self._root, 0)])

    def depth(self) -> int:
        """The longest chain of ``switch`` nodes a lookup may walk."""
        def walk(node: _Node | None) -> int:
            best, steps = 0, 0
            while node is not None and node.dim is not None:
                steps += 1
                below = max((walk(c) for c in node.branches.values()), default=0)
                best = max(best, steps + below)
                node = node.rest
            return best
        return walk(self._root)


def _key_text(key: Hashable) -> str:
    if key is True:  # the one key of an `exists` switch
        return "true"
    if key is NULL_KEY:
        return "null"
    if isinstance(key, str):
        return scalar_text(key)
    if isinstance(key, tuple) and len(key) == 2 and key[0] in ("num", "bool"):
        return scalar_text(key[1])
    return repr(key)


def build_index(conditions: Sequence[Expr | None], names: Sequence[str] = ()) -> DecisionTree:
    """Build the decision tree for rules in priority order (positions are list indices)."""
    return DecisionTree(conditions, names)
