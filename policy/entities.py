"""Users, groups, their metadata and memberships.

Metadata sent with a request is merged into what is stored (top-level keys replace; a
key set to null is removed) and the merged view is what rules see. Stores write only
when the merge changed something, so a steady stream of identical requests costs no
writes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from tollway.dsl.ast import Value

from .validate import EntityKind

__all__ = ["EntityKind", "EntityView", "EntityStore", "merge_metadata"]


@dataclass(frozen=True, slots=True)
class EntityView:
    """An entity as stored. ``links`` are a user's groups, or a group's members, sorted."""

    kind: EntityKind
    id: str
    metadata: Mapping[str, Value]
    links: tuple[str, ...] = ()


def merge_metadata(
    stored: Mapping[str, Value], patch: Mapping[str, Value] | None
) -> dict[str, Value] | None:
    """The merged metadata, or None when ``patch`` changes nothing (so no write is needed)."""
    if not patch:
        return None
    merged = dict(stored)
    changed = False
    for key, value in patch.items():
        if value is None:
            if key in merged:
                del merged[key]
                changed = True
        elif key not in merged or merged[key] != value or type(merged[key]) is not type(value):
            merged[key] = value
            changed = True
    return merged if changed else None


class EntityStore(Protocol):
    blocking: bool  # True when calls may do network I/O

    def observe(
        self,
        kind: EntityKind,
        id: str,
        patch: Mapping[str, Value] | None,
        *,
        deadline: float | None = None,
    ) -> Mapping[str, Value]:
        """Merge ``patch`` into the stored metadata (written only on change); return the merge.

        The hot path of every decision: served from an in-process cache where the store is remote.
        The returned mapping must not be mutated by the caller. A remote store waits for
        its answers until ``deadline`` (``time.monotonic()``) at most; raises
        ``StoreUnavailable``.
        """
        ...

    def link(self, user_id: str, group_id: str, *, deadline: float | None = None) -> None:
        """Record that the user is a member of the group; idempotent, writes only when new."""
        ...

    def get(
        self, kind: EntityKind, id: str, *, deadline: float | None = None
    ) -> EntityView | None:
        """The entity with its links, or None if tollway has never heard of it."""
        ...

    def put(
        self,
        kind: EntityKind,
        id: str,
        metadata: Mapping[str, Value] | None,
        *,
        replace: bool = False,
    ) -> EntityView:
        """Admin write (``UpsertEntity``): merge, or with ``replace`` overwrite, the metadata."""
        ...

    def entries(self) -> Mapping[str, int]:
        """How many entries the store keeps in this process, by kind."""
        ...

    def close(self) -> None: ...
