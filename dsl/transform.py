"""Lark parse tree -> the frozen dataclasses of ``ast.py``, with a position on every node.

Checks that need only one token (a path root, a metric, a schema type, a string escape)
happen here and are collected, not raised, so that one parse reports all of them; the
transformer then returns a harmless stand-in and carries on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

from lark import Token, Transformer, v_args
from lark.tree import Meta

from . import ast
from .spelling import did_you_mean, parse_number, unquote

__all__ = ["ToAst", "Decl", "unknown_metric", "balance_as_metric"]

Decl = ast.Default | ast.Schema | ast.Quota | ast.Balance | ast.Price | ast.Rule | ast.TestCase

_ROOTS = ("user", "group", "request")
_TYPES = ("string", "number", "bool", "any", "list")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_TOKEN_UNITS = {"K": 1_000, "k": 1_000, "M": 1_000_000}
MAX_TIMES = 1_000_000
EXPECT_KINDS = (
    "allow",
    "deny",
    "reason",
    "route",
    "model",
    "quotas",
    "checks",
    "rules",
    "annotate",
    "exceeded",
)


# JSON null inside a test request: None itself would look like an empty-list placeholder
_NULL = object()


@dataclass(frozen=True, slots=True)
class _Arg:
    quoted: bool
    text: str
    pos: ast.Pos


@dataclass(frozen=True, slots=True)
class _KeyValue:
    key: str
    value: str


@dataclass(frozen=True, slots=True)
class _When:
    expr: ast.Expr


@dataclass(frozen=True, slots=True)
class _Priority:
    value: int
    pos: ast.Pos


@dataclass(frozen=True, slots=True)
class _Shadow:
    pos: ast.Pos


@dataclass(frozen=True, slots=True)
class _InlineSpec:
    """An inline ``limit`` before it knows the name of its rule."""

    metric: str
    limit: ast.Limit
    window: ast.Window
    scope: ast.Scope
    on_store_error: str
    pos: ast.Pos


def unknown_metric(name: str) -> str:
    """The error for a metric that is none of ``ast.METRICS``."""
    return (
        f"unknown metric '{name}': expected {', '.join(ast.METRICS)}"
        + did_you_mean(name, ast.METRICS)
    )


def balance_as_metric(name: str) -> str:
    """The error for a balance named where a quota's metric goes."""
    return (
        f"balance '{name}' cannot be used in a limits … to expression: a balance is "
        f"spent by enforce, after a quota (enforce QUOTA then {name})"
    )


@v_args(meta=True)
class ToAst(Transformer[Token, list[Decl]]):
    """One instance per chunk: ``line_offset`` maps chunk lines back to file lines."""

    def __init__(self, file: str, line_offset: int) -> None:
        super().__init__()
        self.file = file
        self.line_offset = line_offset
        self.errors: list[tuple[ast.Pos, str]] = []

    # ------------------------------------------------------------- helpers

    def _pos(self, meta: Meta) -> ast.Pos:
        if getattr(meta, "empty", True):
            return ast.Pos(self.file, 0, 0)
        return ast.Pos(self.file, meta.line + self.line_offset, meta.column)

    def _tpos(self, tok: Token) -> ast.Pos:
        return ast.Pos(self.file, (tok.line or 1) + self.line_offset, tok.column or 1)

    def _error(self, pos: ast.Pos, message: str) -> None:
        self.errors.append((pos, message))

    def _string(self, tok: Token) -> str:
        value, problem = unquote(str(tok))
        if problem:
            self._error(self._tpos(tok), problem)
        return value

    def _number(self, tok: Token) -> int | float:
        return parse_number(str(tok))

    # ---------------------------------------------------------------- file

    def start(self, meta: Meta, children: list[Any]) -> list[Decl]:
        return [c for c in children if c is not None]

    def default_allow(self, meta: Meta, children: list[Any]) -> ast.Default:
        return ast.Default("allow", "", self._pos(meta))

    def default_deny(self, meta: Meta, children: list[Any]) -> ast.Default:
        return ast.Default("deny", self._string(children[0]), self._pos(meta))

    # --------------------------------------------------------------- schema

    def schema(self, meta: Meta, children: list[Any]) -> ast.Schema:
        entity = children[0]
        fields = tuple(c for c in children[1:] if c is not None)
        return ast.Schema(entity, fields, self._pos(meta))

    def schema_entity(self, meta: Meta, children: list[Any]) -> str:
        return str(children[0])

    def schema_field(self, meta: Meta, children: list[Any]) -> ast.SchemaField:
        admin = len(children) > 2 and children[2] is not None
        return ast.SchemaField(str(children[0]), children[1], self._tpos(children[0]), admin)

    def admin(self, meta: Meta, children: list[Any]) -> bool:
        return True

    def type_ref(self, meta: Meta, children: list[Any]) -> ast.TypeRef:
        name_tok, element = children[0], children[1]
        name, pos = str(name_tok), self._tpos(name_tok)
        if name not in _TYPES:
            self._error(
                pos,
                f"unknown type '{name}': expected string, number, bool, any or list<T>"
                + did_you_mean(name, _TYPES),
            )
            return ast.TypeRef("any", None, pos)
        if name == "list" and element is None:
            self._error(pos, "'list' needs an element type, like list<string>")
            return ast.TypeRef("list", ast.TypeRef("any", None, pos), pos)
        if name != "list" and element is not None:
            self._error(pos, f"'{name}' takes no element type: only list<T> does")
            element = None
        return ast.TypeRef(cast(Any, name), element, pos)

    # --------------------------------------------------------------- quotas

    def _metric(self, tok: Token) -> str:
        name = str(tok)
        if name not in ast.METRICS:
            self._error(self._tpos(tok), unknown_metric(name))
            return "requests"
        return name

    def quota(self, meta: Meta, children: list[Any]) -> ast.Quota:
        name, metric, limit, window, scope, store = children
        return ast.Quota(
            str(name),
            cast(Any, self._metric(metric)),
            limit,
            window,
            scope,
            store or "allow",
            self._pos(meta),
        )

    def balance(self, meta: Meta, children: list[Any]) -> ast.Balance:
        name, metric, scope, warn = children
        return ast.Balance(
            str(name), cast(Any, self._metric(metric)), scope, warn, self._pos(meta)
        )

    def warn_below(self, meta: Meta, children: list[Any]) -> int | float:
        return self._number(children[0])

    def inline_limit(self, meta: Meta, children: list[Any]) -> _InlineSpec:
        metric, limit, window, scope, store = children
        return _InlineSpec(
            self._metric(metric), limit, window, scope, store or "allow", self._pos(meta)
        )

    def limit_number(self, meta: Meta, children: list[Any]) -> ast.Limit:
        return ast.Limit(value=self._number(children[0]), pos=self._pos(meta))

    def limit_path(self, meta: Meta, children: list[Any]) -> ast.Limit:
        path, fallback = children
        fb = None if fallback is None else self._number(fallback)
        return ast.Limit(path=path, fallback=fb, pos=self._pos(meta))

    def limit_percent(self, meta: Meta, children: list[Any]) -> ast.Limit:
        percent, path, fallback = children
        fb = None if fallback is None else self._number(fallback)
        return ast.Limit(percent=self._number(percent), path=path, fallback=fb, pos=self._pos(meta))

    def window_sliding(self, meta: Meta, children: list[Any]) -> ast.Window:
        tok = children[0]
        text, pos = str(tok), self._tpos(tok)
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        unit = text[len(digits) :]
        if unit not in _UNITS:
            # left for the checker, which reports every bad window the same way
            return ast.Window(None, None, text, pos)
        return ast.Window(int(parse_number(digits)) * _UNITS[unit], None, text, pos)

    def window_calendar(self, meta: Meta, children: list[Any]) -> ast.Window:
        tok = children[0]
        text = str(tok)
        calendar = text if text in ast.CALENDARS else None
        return ast.Window(None, cast(Any, calendar), text, self._tpos(tok))

    def scope_each(self, meta: Meta, children: list[Any]) -> ast.Scope:
        subject, per_model = children
        return ast.Scope(subject, per_model is not None, self._pos(meta))

    def scope_everyone(self, meta: Meta, children: list[Any]) -> ast.Scope:
        return ast.Scope("everyone", children[0] is not None, self._pos(meta))

    def subject(self, meta: Meta, children: list[Any]) -> str:
        words = [str(c) for c in children]
        return "user_in_group" if len(words) == 3 else words[0]

    def per_model(self, meta: Meta, children: list[Any]) -> bool:
        return True

    def store_error(self, meta: Meta, children: list[Any]) -> str:
        return str(children[1])

    # --------------------------------------------------------------- prices

    def price(self, meta: Meta, children: list[Any]) -> ast.Price:
        pattern, input_tok, output_tok, cached_tok, per_tok = children
        cached = None if cached_tok is None else self._number(cached_tok)
        text = str(per_tok)
        digits = text.rstrip("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
        unit = text[len(digits) :]
        per = 0
        if unit in _TOKEN_UNITS:
            per = int(parse_number(digits)) * _TOKEN_UNITS[unit]
        if per <= 0:
            self._error(
                self._tpos(per_tok),
                f"bad token count '{text}': expected a count like 1M (a million tokens) "
                "or 1K (a thousand)",
            )
        return ast.Price(
            self._string(pattern),
            self._number(input_tok),
            self._number(output_tok),
            cached,
            per,
            text,
            self._pos(meta),
        )

    # ---------------------------------------------------------------- rules

    def rule(self, meta: Meta, children: list[Any]) -> ast.Rule:
        name_tok, rest = children[0], children[1:]
        name = str(name_tok)
        priority: _Priority | None = None
        shadow: _Shadow | None = None
        condition: ast.Expr | None = None
        actions: list[ast.Action] = []
        inline = 0
        for child in rest:
            if isinstance(child, _Priority):
                if priority is not None:
                    self._error(child.pos, f"rule '{name}' has 'priority' twice")
                priority = child
            elif isinstance(child, _Shadow):
                if shadow is not None:
                    self._error(child.pos, f"rule '{name}' has 'shadow' twice")
                shadow = child
            elif isinstance(child, _When):
                condition = child.expr
            elif isinstance(child, _InlineSpec):
                inline += 1
                quota = ast.Quota(
                    f"{name}.limit{inline}",
                    cast(Any, child.metric),
                    child.limit,
                    child.window,
                    child.scope,
                    cast(Any, child.on_store_error),
                    child.pos,
                )
                actions.append(ast.InlineLimit(quota, child.pos))
            elif child is not None:
                actions.append(child)
        return ast.Rule(
            name,
            condition,
            tuple(actions),
            priority.value if priority else 0,
            shadow is not None,
            0,
            self._pos(meta),
        )

    def priority(self, meta: Meta, children: list[Any]) -> _Priority:
        tok = children[0]
        value = self._number(tok)
        if isinstance(value, float):
            self._error(self._tpos(tok), f"priority must be a whole number, not {tok}")
            value = int(value)
        return _Priority(value, self._pos(meta))

    def shadow(self, meta: Meta, children: list[Any]) -> _Shadow:
        return _Shadow(self._pos(meta))

    def when(self, meta: Meta, children: list[Any]) -> _When:
        return _When(children[0])

    def deny(self, meta: Meta, children: list[Any]) -> ast.Deny:
        return ast.Deny(self._string(children[0]), self._pos(meta))

    def allow(self, meta: Meta, children: list[Any]) -> ast.Allow:
        return ast.Allow(self._pos(meta))

    def enforce(self, meta: Meta, children: list[Any]) -> ast.Enforce:
        items: list[list[Token]] = children
        chained = any(len(item) > 1 for item in items)
        return ast.Enforce(
            tuple(str(item[0]) for item in items),
            self._pos(meta),
            tuple(self._tpos(item[0]) for item in items),
            tuple(tuple(str(t) for t in item[1:]) for item in items) if chained else (),
            tuple(tuple(self._tpos(t) for t in item[1:]) for item in items) if chained else (),
        )

    def enforced(self, meta: Meta, children: list[Any]) -> list[Token]:
        return list(children)

    def check(self, meta: Meta, children: list[Any]) -> ast.Check:
        return ast.Check(tuple(self._string(c) for c in children), self._pos(meta))

    def route(self, meta: Meta, children: list[Any]) -> ast.Route:
        return ast.Route(self._string(children[0]), children[1], self._pos(meta))

    def annotate(self, meta: Meta, children: list[Any]) -> ast.Annotate:
        return ast.Annotate(self._string(children[0]), self._string(children[1]), self._pos(meta))

    # ----------------------------------------------------------- conditions

    def or_expr(self, meta: Meta, children: list[Any]) -> ast.Or:
        return ast.Or(tuple(children), self._pos(meta))

    def and_expr(self, meta: Meta, children: list[Any]) -> ast.And:
        return ast.And(tuple(children), self._pos(meta))

    def not_(self, meta: Meta, children: list[Any]) -> ast.Not:
        return ast.Not(children[0], self._pos(meta))

    def bare_true(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(True, self._pos(meta))

    def bare_false(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(False, self._pos(meta))

    def compare(self, meta: Meta, children: list[Any]) -> ast.Compare:
        left, op, right = children
        return ast.Compare(op, left, right, self._pos(meta))

    def comp_op(self, meta: Meta, children: list[Any]) -> str:
        return str(children[0])

    def in_(self, meta: Meta, children: list[Any]) -> ast.In:
        return ast.In(children[0], children[1], self._pos(meta))

    def glob(self, meta: Meta, children: list[Any]) -> ast.Glob:
        return ast.Glob(children[0], self._string(children[1]), self._pos(meta))

    def exists(self, meta: Meta, children: list[Any]) -> ast.Exists:
        return ast.Exists(children[0], self._pos(meta))

    def path(self, meta: Meta, children: list[Any]) -> ast.Path:
        pos = self._pos(meta)
        parts = [str(children[0])] + [
            self._string(c) if c.type == "STRING" else str(c) for c in children[1:]
        ]
        root = parts[0]
        if root not in _ROOTS:
            self._error(
                pos,
                f"unknown root '{root}' — paths start with user., group. or request."
                + did_you_mean(root, _ROOTS).replace(" — ", "; "),
            )
        elif len(parts) == 1:
            example = "request.model" if root == "request" else f"{root}.id or {root}.<key>"
            self._error(pos, f"'{root}' alone is not a value: write {example}")
        elif any(p == "" for p in parts):
            self._error(pos, "a path key cannot be empty")
        return ast.Path(tuple(parts), pos)

    def lit_string(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(self._string(children[0]), self._pos(meta))

    def lit_number(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(self._number(children[0]), self._pos(meta))

    def lit_true(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(True, self._pos(meta))

    def lit_false(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(False, self._pos(meta))

    def lit_null(self, meta: Meta, children: list[Any]) -> ast.Literal:
        return ast.Literal(None, self._pos(meta))

    def list_lit(self, meta: Meta, children: list[Any]) -> ast.ListLiteral:
        items = tuple(c.value for c in children if c is not None)
        return ast.ListLiteral(items, self._pos(meta))

    # ---------------------------------------------------------------- tests

    def test(self, meta: Meta, children: list[Any]) -> ast.TestCase:
        name = self._string(children[0])
        return ast.TestCase(name, tuple(children[1:]), self._pos(meta))

    def step(self, meta: Meta, children: list[Any]) -> ast.TestStep:
        request, times, *expects = children
        return ast.TestStep(request or {}, times or 1, tuple(expects), self._pos(meta))

    def times(self, meta: Meta, children: list[Any]) -> int:
        tok = children[0]
        value = self._number(tok)
        if isinstance(value, float) or not 1 <= value <= MAX_TIMES:
            self._error(self._tpos(tok), f"times must be a whole number from 1 to {MAX_TIMES:_}")
            return 1
        return value

    def expect(self, meta: Meta, children: list[Any]) -> ast.Expect:
        kind_tok, *rest = children
        kind, pos = str(kind_tok), self._pos(meta)
        args = [a for a in rest if a is not None]
        if kind not in EXPECT_KINDS:
            self._error(
                self._tpos(kind_tok),
                f"unknown expectation '{kind}': expected {', '.join(EXPECT_KINDS)}"
                + did_you_mean(kind, EXPECT_KINDS),
            )
            return ast.Expect("allow", (), pos)
        return ast.Expect(kind, self._expect_args(kind, args, pos), pos)

    def _expect_args(self, kind: str, args: list[Any], pos: ast.Pos) -> tuple[str, ...]:
        if kind == "annotate":
            if len(args) == 1 and isinstance(args[0], _KeyValue):
                return (args[0].key, args[0].value)
            self._error(pos, 'expect annotate needs "key" = "value"')
            return ("", "")
        if any(isinstance(a, _KeyValue) for a in args):
            self._error(pos, f"'=' belongs to expect annotate, not to expect {kind}")
            return ()
        plain = cast(list[_Arg], args)
        texts = tuple(a.text for a in plain)
        if kind == "allow":
            if plain:
                self._error(plain[0].pos, "expect allow takes nothing after it")
            return ()
        if kind == "deny":
            if len(plain) > 1 or any(not a.quoted for a in plain):
                self._error(pos, "expect deny takes at most one message in quotes")
            return texts[:1]
        if kind == "reason":
            if len(plain) != 1 or plain[0].quoted or plain[0].text not in ast.REASONS:
                got = plain[0].text if plain else ""
                self._error(
                    pos,
                    f"expect reason needs one of {', '.join(ast.REASONS)}" + did_you_mean(got, ast.REASONS),
                )
                return ("ALLOWED",)
            return texts
        if kind in ("route", "model"):
            if len(plain) != 1 or not plain[0].quoted:
                self._error(pos, f"expect {kind} needs one model name in quotes")
                return ("",)
            return texts
        if kind == "checks":
            if not plain or any(not a.quoted for a in plain):
                self._error(pos, 'expect checks needs check names in quotes: "a", "b"')
            return texts
        if not plain:  # quotas, rules, exceeded
            self._error(pos, f"expect {kind} needs at least one name")
        return texts

    def arg_string(self, meta: Meta, children: list[Any]) -> _Arg:
        return _Arg(True, self._string(children[0]), self._pos(meta))

    def arg_name(self, meta: Meta, children: list[Any]) -> _Arg:
        return _Arg(False, ".".join(str(c) for c in children), self._pos(meta))

    def kv(self, meta: Meta, children: list[Any]) -> _KeyValue:
        return _KeyValue(self._string(children[0]), self._string(children[1]))

    def object(self, meta: Meta, children: list[Any]) -> dict[str, ast.Value]:
        out: dict[str, ast.Value] = {}
        for child in children:
            if child is None:
                continue
            key, value, pos = child
            if key in out:
                self._error(pos, f"duplicate key '{key}' in object")
            out[key] = value
        return out

    def pair(self, meta: Meta, children: list[Any]) -> tuple[str, ast.Value, ast.Pos]:
        key_tok, value = children
        key = self._string(key_tok) if key_tok.type == "STRING" else str(key_tok)
        return key, None if value is _NULL else value, self._tpos(key_tok)

    def array(self, meta: Meta, children: list[Any]) -> list[ast.Value]:
        if children == [None]:  # the placeholder of an empty list
            return []
        return [None if c is _NULL else c for c in children]

    def v_string(self, meta: Meta, children: list[Any]) -> str:
        return self._string(children[0])

    def v_number(self, meta: Meta, children: list[Any]) -> int | float:
        return self._number(children[0])

    def v_true(self, meta: Meta, children: list[Any]) -> bool:
        return True

    def v_false(self, meta: Meta, children: list[Any]) -> bool:
        return False

    def v_null(self, meta: Meta, children: list[Any]) -> Any:
        return _NULL
