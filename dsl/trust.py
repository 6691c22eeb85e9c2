"""Which metadata keys a request may set, and the warning for rules that trust them blindly.

Metadata sent with a request is merged into the entity, so any caller of ``Decide``
could set any key, unless the schema marks it ``admin``: admin keys are set only by
``UpsertEntity`` (docs/security.md). A ruleset that marks no key admin while its rules
test user or group metadata trusts whatever requests say, which ``check`` warns about.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from .ast import (
    And,
    Compare,
    Exists,
    Expr,
    Glob,
    In,
    InlineLimit,
    Not,
    Or,
    Path,
    Quota,
    Route,
    Rule,
    Schema,
)
from .reporter import Reporter

__all__ = ["admin_keys", "condition_paths", "warn_untrusted"]

_ENTITIES = ("user", "group")


def admin_keys(schemas: Iterable[Schema]) -> Mapping[str, frozenset[str]]:
    """``{"user": {...}, "group": {...}}``: the top-level keys only admins may set.

    An entity with no admin key has no entry, so a ruleset without any maps to ``{}``.
    """
    keys: dict[str, set[str]] = {e: set() for e in _ENTITIES}
    for schema in schemas:
        if schema.entity in keys:
            keys[schema.entity].update(f.name for f in schema.fields if f.admin)
    return {e: frozenset(names) for e, names in keys.items() if names}


def condition_paths(expr: Expr) -> Iterator[Path]:
    """Every path a condition reads, in source order (iterative: trees may be deep)."""
    stack: list[object] = [expr]
    while stack:
        node = stack.pop()
        if isinstance(node, Path):
            yield node
        elif isinstance(node, Compare):
            stack += (node.right, node.left)
        elif isinstance(node, In):
            stack += (node.container, node.item)
        elif isinstance(node, Glob):
            stack.append(node.subject)
        elif isinstance(node, Exists):
            stack.append(node.path)
        elif isinstance(node, And | Or):
            stack.extend(reversed(node.items))
        elif isinstance(node, Not):
            stack.append(node.item)


def _metadata_paths(rules: Iterable[Rule], quotas: Iterable[Quota]) -> Iterator[Path]:
    """User and group metadata paths that conditions test or limits read."""
    for rule in rules:
        if rule.condition is not None:
            yield from condition_paths(rule.condition)
        for action in rule.actions:
            if isinstance(action, Route) and action.condition is not None:
                yield from condition_paths(action.condition)
            elif isinstance(action, InlineLimit) and action.quota.limit.path is not None:
                yield action.quota.limit.path
    for quota in quotas:
        if quota.limit.path is not None:
            yield quota.limit.path


def warn_untrusted(
    schemas: Iterable[Schema], rules: Iterable[Rule], quotas: Iterable[Quota], report: Reporter
) -> None:
    """Warn once when no key is ``admin`` but rules read metadata any request may set."""
    schemas = list(schemas)
    if admin_keys(schemas):
        return
    seen: dict[str, Path] = {}
    for path in _metadata_paths(rules, quotas):
        if path.root in _ENTITIES and len(path.parts) > 1 and path.parts[1] != "id":
            seen.setdefault(".".join(path.parts[:2]), path)
    if not seen:
        return
    first = min(seen.values(), key=lambda p: (p.pos.file, p.pos.line, p.pos.column))
    names = ", ".join(sorted(seen))
    root, key = first.parts[0], first.parts[1]
    declared: dict[tuple[str, str], str] = {
        (s.entity, f.name): str(f.type) for s in schemas for f in s.fields
    }
    example = f"schema {root} {{ {key}: {declared.get((root, key), 'any')} admin }}"
    report.warn(
        first.pos,
        f"rules read {names}, which any request may set (no schema key is marked admin); "
        f"mark the keys only admins may set, e.g. `{example}`",
    )
