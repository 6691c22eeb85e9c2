"""Typed syntax tree of a ruleset: what the parser produces and the checker and compiler read.

Every node carries a ``Pos`` so that any later stage can point back at the source.
Nodes are frozen so a compiled ruleset can be shared between threads without copies.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal as TypingLiteral
from typing import TypeAlias, get_args

__all__ = [
    "Pos",
    "NOWHERE",
    "Scalar",
    "Value",
    "Path",
    "Literal",
    "ListLiteral",
    "Compare",
    "In",
    "Glob",
    "Exists",
    "And",
    "Or",
    "Not",
    "Expr",
    "Limit",
    "Window",
    "Calendar",
    "CALENDARS",
    "Reason",
    "REASONS",
    "Scope",
    "Quota",
    "Balance",
    "Price",
    "METRICS",
    "SCOPE_SUBJECTS",
    "Deny",
    "Allow",
    "Enforce",
    "InlineLimit",
    "Check",
    "Route",
    "Annotate",
    "Action",
    "Rule",
    "Default",
    "SchemaField",
    "Schema",
    "TypeRef",
    "Expect",
    "TestStep",
    "TestCase",
    "RuleFile",
    "RulesetAst",
    "Comment",
]


@dataclass(frozen=True, slots=True)
class Pos:
    """A 1-based source location."""

    file: str
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


NOWHERE = Pos("<memory>", 0, 0)

# A scalar value as rules see it: JSON's scalars. Numbers are int or float, bools are
# never numbers (the evaluator keeps them apart even though Python does not).
Scalar: TypeAlias = str | int | float | bool | None
# Any JSON value (metadata values, test-request literals).
Value: TypeAlias = Scalar | list["Value"] | dict[str, "Value"]


# ---------------------------------------------------------------- expressions


@dataclass(frozen=True, slots=True)
class Path:
    """A dotted reference: ``("user", "tier")``, ``("request", "model")``, ``("group", "id")``.

    The first part is always one of ``user``, ``group``, ``request``.
    """

    parts: tuple[str, ...]
    pos: Pos = NOWHERE

    @property
    def root(self) -> str:
        return self.parts[0]

    def __str__(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True, slots=True)
class Literal:
    """A scalar literal: string, number (int or float), true, false or null."""

    value: Scalar
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class ListLiteral:
    """``[a, b, …]`` of scalar literals."""

    items: tuple[Scalar, ...]
    pos: Pos = NOWHERE


CompareOp = TypingLiteral["==", "!=", "<", "<=", ">", ">="]


@dataclass(frozen=True, slots=True)
class Compare:
    """``left op right``; either side may be a path or a literal."""

    op: CompareOp
    left: Path | Literal
    right: Path | Literal
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class In:
    """``item in container``: a path in a list literal, or a literal in a list-valued path."""

    item: Path | Literal
    container: Path | ListLiteral
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Glob:
    """``subject ~ "pattern"``: ``*`` matches any run of characters, ``?`` one character."""

    subject: Path
    pattern: str
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Exists:
    """``path exists``: the path resolves to a value other than null."""

    path: Path
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr
    pos: Pos = NOWHERE


Expr: TypeAlias = Compare | In | Glob | Exists | And | Or | Not | Literal


# --------------------------------------------------------------------- quotas

METRICS = ("requests", "tokens", "input_tokens", "output_tokens", "cost")
SCOPE_SUBJECTS = ("user", "group", "user_in_group", "everyone")


@dataclass(frozen=True, slots=True)
class Limit:
    """How much a quota allows.

    Exactly one form: ``value`` alone (``100``); ``path`` (``group.monthly_credits``);
    ``percent`` of ``path`` (``10% of group.monthly_credits``). ``fallback`` is the number
    used when ``path`` resolves to nothing (``group.monthly_credits or 500``); the percent
    applies to the fallback too.
    """

    value: float | None = None
    path: Path | None = None
    percent: float | None = None
    fallback: float | None = None
    pos: Pos = NOWHERE


# calendar windows (``per day|week|month``, UTC)
Calendar: TypeAlias = TypingLiteral["day", "week", "month"]
CALENDARS: tuple[Calendar, ...] = get_args(Calendar)

# why a decision was made: the names of the proto's ``Reason`` enum (``expect reason …``)
Reason: TypeAlias = TypingLiteral[
    "ALLOWED", "DENIED_BY_RULE", "DEFAULT_DENY", "QUOTA_EXCEEDED", "QUOTA_UNRESOLVED",
    "STORE_UNAVAILABLE",
]
REASONS: tuple[Reason, ...] = get_args(Reason)


@dataclass(frozen=True, slots=True)
class Window:
    """``per 1h`` (sliding, ``seconds`` set) or ``per month`` (calendar, ``calendar`` set).

    ``text`` keeps what was written, for messages and ``fmt``.
    """

    seconds: int | None = None
    calendar: Calendar | None = None
    text: str = ""
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Scope:
    """Whose counter: ``for each user``, ``… group``, ``… user in group``, ``… everyone``,
    each optionally ``and model``."""

    subject: TypingLiteral["user", "group", "user_in_group", "everyone"]
    per_model: bool = False
    pos: Pos = NOWHERE

    @property
    def name(self) -> str:
        """The wire name: ``user``, ``user_in_group+model``, …"""
        return self.subject + ("+model" if self.per_model else "")


@dataclass(frozen=True, slots=True)
class Quota:
    """``quota NAME limits METRIC to LIMIT per WINDOW for each SCOPE [on_store_error allow|deny]``.

    Inline ``limit`` actions become quotas named ``<rule>.limit<N>`` (N counts from 1
    within the rule), which cannot collide with declared names.
    """

    name: str
    metric: TypingLiteral["requests", "tokens", "input_tokens", "output_tokens", "cost"]
    limit: Limit
    window: Window
    scope: Scope
    on_store_error: TypingLiteral["allow", "deny"] = "allow"
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Balance:
    """``balance NAME of METRIC for each SCOPE [warn below N]``: a prepaid amount per scope
    key that credits raise and admitted requests spend down; it never resets.

    ``warn_below`` is the amount under which the balance counts as low (None: never).
    """

    name: str
    metric: TypingLiteral["requests", "tokens", "input_tokens", "output_tokens", "cost"]
    scope: Scope
    warn_below: int | float | None = None
    pos: Pos = NOWHERE


# --------------------------------------------------------------------- prices


@dataclass(frozen=True, slots=True)
class Price:
    """``price "GLOB" input X output Y [cached_input Z] per N tokens``: USD per ``per`` tokens.

    ``pattern`` is a glob over model names (``*``, ``?``); when several cover a model the
    most specific wins (see ``dsl/prices.py``). ``cached_input`` is None when not given:
    cached input tokens then cost the ``input`` price. ``per_text`` keeps what was written
    (``1M``) for messages and ``fmt``; ``per`` is 0 when it could not be read.
    """

    pattern: str
    input: int | float
    output: int | float
    cached_input: int | float | None = None
    per: int = 1_000_000
    per_text: str = "1M"
    pos: Pos = NOWHERE


# -------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Deny:
    message: str
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Allow:
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Enforce:
    """``enforce a, b then c``: ``names`` are the first name of each item; ``then[i]``
    holds the names written after ``then`` in item i (empty for a plain quota or
    balance; the checker allows at most one, a balance after a quota)."""

    names: tuple[str, ...]
    pos: Pos = NOWHERE
    # position of each name, for "unknown quota" diagnostics
    name_pos: tuple[Pos, ...] = ()
    then: tuple[tuple[str, ...], ...] = ()
    then_pos: tuple[tuple[Pos, ...], ...] = ()

    def chain(self, i: int) -> tuple[str, ...]:
        """The names after ``then`` in item ``i`` (empty when none)."""
        return self.then[i] if i < len(self.then) else ()


@dataclass(frozen=True, slots=True)
class InlineLimit:
    quota: Quota
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Check:
    names: tuple[str, ...]
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Route:
    model: str
    condition: Expr | None = None
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Annotate:
    key: str
    value: str
    pos: Pos = NOWHERE


Action: TypeAlias = Deny | Allow | Enforce | InlineLimit | Check | Route | Annotate


# ---------------------------------------------------------- rules and headers


@dataclass(frozen=True, slots=True)
class Rule:
    """``rule NAME [priority N] [shadow] { [when COND] ACTION… }``.

    ``condition`` is None when the rule has no ``when`` (it always matches).
    ``order`` is the rule's position across the whole ruleset (files in sorted path
    order, then source order): the tie-breaker for equal priorities.
    """

    name: str
    condition: Expr | None
    actions: tuple[Action, ...]
    priority: int = 0
    shadow: bool = False
    order: int = 0
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class Default:
    """``default allow`` or ``default deny "message"``."""

    effect: TypingLiteral["allow", "deny"]
    message: str = ""
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class TypeRef:
    """A schema type: ``string``, ``number``, ``bool``, ``any``, or ``list<T>`` (``element`` set)."""

    name: TypingLiteral["string", "number", "bool", "any", "list"]
    element: TypeRef | None = None
    pos: Pos = NOWHERE

    def __str__(self) -> str:
        return f"list<{self.element}>" if self.name == "list" else self.name


@dataclass(frozen=True, slots=True)
class SchemaField:
    """``key: type [admin]``; an ``admin`` key is set only by UpsertEntity, never by requests."""

    name: str
    type: TypeRef
    pos: Pos = NOWHERE
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Schema:
    """``schema user|group|request { key: type, … }``: typed metadata keys, checked at compile time."""

    entity: TypingLiteral["user", "group", "request"]
    fields: tuple[SchemaField, ...]
    pos: Pos = NOWHERE


# ---------------------------------------------------------------------- tests


@dataclass(frozen=True, slots=True)
class Expect:
    """One ``expect`` line of a test block.

    kinds and their ``args``:
      ``allow`` ()                   ``deny`` (message,) or ()
      ``reason`` (REASON_NAME,)      ``route`` (model,)     ``model`` (model,)
      ``quotas`` (name, …)           ``checks`` (name, …)   ``rules`` (rule name, …)
      ``annotate`` (key, value)      ``exceeded`` (quota name, …)
    """

    kind: str
    args: tuple[str, ...] = ()
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class TestStep:
    """``request { … } [times N]`` followed by the ``expect`` lines about its (last) decision.

    Steps of one test share a fresh counter store, so quota behaviour can be tested.
    """

    request: dict[str, Value]
    times: int = 1
    expects: tuple[Expect, ...] = ()
    pos: Pos = NOWHERE


@dataclass(frozen=True, slots=True)
class TestCase:
    name: str
    steps: tuple[TestStep, ...]
    pos: Pos = NOWHERE

    # pytest must not mistake this class for a test suite
    __test__ = False


# ------------------------------------------------------------------ rulesets


@dataclass(frozen=True, slots=True)
class Comment:
    """A ``#`` comment, kept so that ``fmt`` can put it back.

    ``trailing`` is True when code precedes it on its line; ``depth`` is the number of
    braces open around it (0 at top level), which tells ``fmt`` whether it sat inside a block.
    """

    line: int
    column: int
    text: str
    trailing: bool = False
    depth: int = 0


@dataclass(frozen=True, slots=True)
class RuleFile:
    """One parsed ``.rules`` file, declarations in source order."""

    path: str
    default: Default | None = None
    schemas: tuple[Schema, ...] = ()
    quotas: tuple[Quota, ...] = ()
    rules: tuple[Rule, ...] = ()
    tests: tuple[TestCase, ...] = ()
    source: str = field(default="", repr=False, compare=False)
    comments: tuple[Comment, ...] = field(default=(), repr=False, compare=False)
    prices: tuple[Price, ...] = ()
    balances: tuple[Balance, ...] = ()


@dataclass(frozen=True, slots=True)
class RulesetAst:
    """All files of a ruleset, in sorted path order, before checking."""

    files: tuple[RuleFile, ...]
