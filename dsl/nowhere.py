"""Syntax trees with every position erased, for comparing trees by meaning alone."""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

from .ast import NOWHERE, Pos

__all__ = ["strip_positions"]

T = TypeVar("T")


def strip_positions(node: T) -> T:
    """A copy of ``node`` in which every ``Pos`` is ``NOWHERE`` (lists, tuples, dicts too)."""
    return _strip(node)


def _strip(node: Any) -> Any:
    if isinstance(node, Pos):
        return NOWHERE
    if isinstance(node, tuple):
        return tuple(_strip(n) for n in node)
    if isinstance(node, list):
        return [_strip(n) for n in node]
    if isinstance(node, dict):
        return {k: _strip(v) for k, v in node.items()}
    if dataclasses.is_dataclass(node) and not isinstance(node, type):
        changes = {f.name: _strip(getattr(node, f.name)) for f in dataclasses.fields(node)}
        return dataclasses.replace(node, **changes)
    return node
