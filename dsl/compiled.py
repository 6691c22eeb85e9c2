"""What the compiler hands to the policy layer: an immutable, indexed ruleset.

The policy layer never sees syntax: it asks a ``CompiledRuleset`` which rules match an
``EvalContext`` and reads each matched rule's flattened actions.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from .ast import Balance, Default, Quota, Rule, RuleFile, Schema, TestCase, Value
from .diagnostics import Diagnostic

if TYPE_CHECKING:  # prices.py reads values.py, which reads EvalContext from here
    from .prices import PriceTable

__all__ = [
    "EvalContext",
    "Predicate",
    "CompiledRoute",
    "CompiledRule",
    "RuleIndex",
    "TestTrace",
    "RuleTrace",
    "CompiledRuleset",
]


@dataclass(frozen=True, slots=True)
class EvalContext:
    """The facts a condition can read.

    ``user_id``/``group_id`` are None when the request does not name that entity; then
    every ``user.*`` (or ``group.*``) path is null. ``user``/``group`` hold the merged
    metadata; ``request`` holds ``model`` plus the request's string attributes.
    ``user.id`` and ``group.id`` resolve to the ids, never to a metadata key ``id``.
    """

    user_id: str | None = None
    user: Mapping[str, Value] = field(default_factory=dict)
    group_id: str | None = None
    group: Mapping[str, Value] = field(default_factory=dict)
    request: Mapping[str, Value] = field(default_factory=dict)


Predicate = Callable[[EvalContext], bool]


@dataclass(frozen=True, slots=True)
class CompiledRoute:
    model: str
    test: Predicate | None  # None: unconditional


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """A rule with its condition compiled and its actions flattened.

    ``quotas`` lists quota names (declared and inline ``<rule>.limitN``) in source order;
    ``deny`` is the message of the rule's first ``deny`` action, if any.
    """

    rule: Rule
    test: Predicate  # the whole condition; always True for a rule without `when`
    deny: str | None
    allow: bool
    quotas: tuple[str, ...]
    checks: tuple[str, ...]
    routes: tuple[CompiledRoute, ...]
    annotations: tuple[tuple[str, str], ...]
    # the balances it spends: (balance, quota spent first or "" for a balance alone)
    balances: tuple[tuple[str, str], ...] = ()

    @property
    def name(self) -> str:
        return self.rule.name

    @property
    def priority(self) -> int:
        return self.rule.priority

    @property
    def shadow(self) -> bool:
        return self.rule.shadow


class RuleIndex(Protocol):
    """The decision tree: from a context to the rules whose indexed tests can hold."""

    def candidates(self, ctx: EvalContext) -> list[int]:
        """Positions (into ``CompiledRuleset.rules``) of candidate rules, ascending."""
        ...

    def describe(self) -> str:
        """A human-readable dump of the tree (for ``tollway explain --tree`` and debugging)."""
        ...


@dataclass(frozen=True, slots=True)
class TestTrace:
    """One test in a condition as ``explain`` shows it."""

    text: str  # the test as written, e.g. 'user.tier == "free"'
    held: bool
    values: tuple[tuple[str, Value], ...] = ()  # path -> value seen

    __test__ = False


@dataclass(frozen=True, slots=True)
class RuleTrace:
    rule: str
    priority: int
    shadow: bool
    candidate: bool  # selected by the index (rules not selected are still traced)
    matched: bool
    tests: tuple[TestTrace, ...] = ()


@dataclass(frozen=True, slots=True)
class CompiledRuleset:
    """An immutable compiled ruleset; the engine swaps whole instances on reload.

    ``rules`` is sorted by priority (highest first), then by ``Rule.order``.
    """

    version: str
    paths: tuple[str, ...]
    default: Default
    schemas: tuple[Schema, ...]
    quotas: Mapping[str, Quota]
    rules: tuple[CompiledRule, ...]
    tests: tuple[TestCase, ...]
    warnings: tuple[Diagnostic, ...]
    index: RuleIndex
    # the reference interpreter: evaluates a rule's AST condition directly, no index, no closures
    reference_test: Callable[[Rule, EvalContext], bool] = field(repr=False)
    tracer: Callable[[Rule, EvalContext], tuple[bool, tuple[TestTrace, ...]]] = field(repr=False)
    # the `price` declarations: what a model's tokens cost when the gateway does not say
    prices: PriceTable
    # the parsed files it was compiled from, text and comments kept (``format_file`` lays
    # out what is in force, whatever the files on disk hold now)
    files: tuple[RuleFile, ...] = ()
    # "user"/"group" -> the top-level metadata keys only UpsertEntity sets (``admin`` in a schema)
    admin_keys: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # the ``balance`` declarations by name
    balances: Mapping[str, Balance] = field(default_factory=dict)

    def match(self, ctx: EvalContext) -> list[CompiledRule]:
        """Matching rules (shadow included) in priority order, through the index."""
        rules = self.rules
        return [r for i in self.index.candidates(ctx) if (r := rules[i]).test(ctx)]

    def match_reference(self, ctx: EvalContext) -> list[CompiledRule]:
        """Same answer as ``match``, by interpreting every rule: the correctness oracle."""
        return [r for r in self.rules if self.reference_test(r.rule, ctx)]

    def trace(self, ctx: EvalContext) -> list[RuleTrace]:
        """Every rule, whether the index selected it, and each test's outcome and values."""
        chosen = set(self.index.candidates(ctx))
        out = []
        for i, r in enumerate(self.rules):
            matched, tests = self.tracer(r.rule, ctx)
            out.append(RuleTrace(r.name, r.priority, r.shadow, i in chosen, matched, tests))
        return out
