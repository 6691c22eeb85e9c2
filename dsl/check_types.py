"""Type checks of conditions and limits against the ``schema`` declarations.

Only what a schema (or the language itself: ids, ``request.*``) says is checked; an
undeclared key is ``any`` and never an error, because metadata is open-ended.
"""

from __future__ import annotations

from .ast import (
    And,
    Compare,
    Exists,
    Expr,
    Glob,
    In,
    ListLiteral,
    Literal,
    Not,
    Or,
    Path,
    Scalar,
    Schema,
    TypeRef,
)
from .render import scalar_text
from .reporter import Reporter
from .spelling import did_you_mean

__all__ = ["Types"]

_STRING = TypeRef("string")
_ORDERING = ("<", "<=", ">", ">=")


def literal_kind(value: Scalar) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    return "string"


def _a(kind: str) -> str:
    return {"any": "a value", "list": "a list", "null": "null"}.get(kind, f"a {kind}")


class Types:
    """The declared type of every schema path, and the checks that use it."""

    def __init__(self, schemas: dict[str, Schema], report: Reporter) -> None:
        self.fields = {
            entity: {f.name: f.type for f in schema.fields} for entity, schema in schemas.items()
        }
        self.report = report

    def of_path(self, path: Path) -> TypeRef | None:
        """The type of ``path``, or None when nothing is known (``any``)."""
        root, parts = path.root, path.parts
        if len(parts) < 2:
            return None
        if root == "request" or parts[1] == "id":
            if len(parts) > 2:
                what = (
                    "request attributes are strings"
                    if root == "request"
                    else (f"{root}.id is a string")
                )
                self.report.error(path.pos, f"{what}: {path} has no key '{parts[2]}'")
            return _STRING
        fields = self.fields.get(root)
        if fields is None:
            return None
        t = fields.get(parts[1])
        if t is None:
            self.report.warn(
                path.pos,
                f"{root}.{parts[1]} is not in the {root} schema" + did_you_mean(parts[1], fields),
            )
            return None
        for i, key in enumerate(parts[2:], start=2):
            if t.name == "any":
                return None
            self.report.error(
                path.pos, f"{'.'.join(parts[:i])} is {_a(str(t))}: it has no key '{key}'"
            )
            return None
        return None if t.name == "any" else t

    def _operand(self, node: Path | Literal) -> str:
        if isinstance(node, Path):
            t = self.of_path(node)
            return "any" if t is None else t.name
        return literal_kind(node.value)

    def _show(self, node: Path | Literal) -> str:
        return str(node) if isinstance(node, Path) else scalar_text(node.value)

    def expr(self, expr: Expr) -> None:
        """Report every type mismatch in ``expr``."""
        if isinstance(expr, And | Or):
            for item in expr.items:
                self.expr(item)
        elif isinstance(expr, Not):
            self.expr(expr.item)
        elif isinstance(expr, Compare):
            self._compare(expr)
        elif isinstance(expr, In):
            self._in(expr)
        elif isinstance(expr, Glob):
            kind = self._operand(expr.subject)
            if kind not in ("string", "any"):
                self.report.error(
                    expr.pos, f"'~' matches strings, but {expr.subject} is {_a(kind)}"
                )
        elif isinstance(expr, Exists):
            self.of_path(expr.path)

    def _compare(self, expr: Compare) -> None:
        left, right = self._operand(expr.left), self._operand(expr.right)
        if expr.op in _ORDERING:
            for node, kind in ((expr.left, left), (expr.right, right)):
                if kind in ("bool", "list"):
                    self.report.error(
                        expr.pos,
                        f"'{expr.op}' orders numbers or strings, but {self._show(node)} "
                        f"is {_a(kind)}",
                    )
                    return
        if "any" in (left, right) or "null" in (left, right) or left == right:
            return
        if "list" in (left, right) and expr.op in ("==", "!="):
            lst = expr.left if left == "list" else expr.right
            other = expr.right if left == "list" else expr.left
            self.report.error(
                expr.pos,
                f"{self._show(lst)} is a list: to test membership write "
                f"{self._show(other)} in {self._show(lst)}",
            )
            return
        self.report.error(
            expr.pos,
            f"type mismatch: {self._show(expr.left)} is {_a(left)} but "
            f"{self._show(expr.right)} is {_a(right)}",
        )

    def _in(self, expr: In) -> None:
        item_kind = self._operand(expr.item)
        container = expr.container
        if isinstance(container, ListLiteral):
            if item_kind == "list":
                self.report.error(
                    expr.pos,
                    f"{self._show(expr.item)} is a list: 'in [...]' tests one value; "
                    f'to test membership write "x" in {self._show(expr.item)}',
                )
                return
            if item_kind in ("any", "null"):
                return
            for value in container.items:
                kind = literal_kind(value)
                if kind not in ("null", item_kind):
                    self.report.error(
                        expr.pos,
                        f"type mismatch: {self._show(expr.item)} is {_a(item_kind)} but the "
                        f"list holds {scalar_text(value)} ({_a(kind)})",
                    )
                    return
            return
        t = self.of_path(container)
        if t is None:
            return
        if t.name != "list":
            self.report.error(
                expr.pos,
                f"{self._show(expr.item)} in {container}: {container} is {_a(t.name)}, not a list",
            )
            return
        element = t.element.name if t.element is not None else "any"
        if element != "any" and item_kind not in ("any", "null", element):
            self.report.error(
                expr.pos,
                f"type mismatch: {container} holds {element}s but {self._show(expr.item)} "
                f"is {_a(item_kind)}",
            )

    def limit_path(self, path: Path) -> None:
        """A limit must read a number."""
        t = self.of_path(path)
        if t is not None and t.name != "number":
            self.report.error(path.pos, f"{path} is {_a(str(t))}: a limit must read a number")
