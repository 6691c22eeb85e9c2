"""The price table: which ``price`` declaration covers a model.

Several globs may cover one model (``openai/*`` and ``openai/gpt-5*``); the most specific
wins. A pattern without wildcards beats any glob; among globs, the one with more literal
characters (characters other than ``*`` and ``?``) wins, then the one with fewer
wildcards, then the one declared first. The table is built once per ruleset, sorted in
that order, so a lookup is the first pattern that matches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .ast import Price
from .values import compile_glob

__all__ = ["PriceTable", "specificity"]

# distinct model names remembered per table; a gateway names a few hundred at most, and the
# cache is dropped whole when full so that a flood of invented names cannot grow it
_CACHE_LIMIT = 4096


def specificity(pattern: str) -> tuple[bool, int, int]:
    """The sort key of a pattern, larger is more specific: (exact, literal chars, -wildcards)."""
    wildcards = pattern.count("*") + pattern.count("?")
    return (wildcards == 0, len(pattern) - wildcards, -wildcards)


@dataclass(frozen=True, slots=True)
class _Entry:
    price: Price
    match: Callable[[object], bool]


@dataclass(frozen=True, slots=True)
class PriceTable:
    """Prices of a ruleset, most specific first; ``lookup`` answers which one covers a model."""

    entries: tuple[_Entry, ...] = ()
    _cache: dict[str, Price | None] = field(default_factory=dict, repr=False, compare=False)

    @classmethod
    def of(cls, prices: Iterable[Price]) -> PriceTable:
        """A table over ``prices`` in declaration order (ties keep that order)."""
        listed = list(prices)
        ranked = sorted(
            range(len(listed)), key=lambda i: (specificity(listed[i].pattern), -i), reverse=True
        )
        return cls(tuple(_Entry(listed[i], compile_glob(listed[i].pattern)) for i in ranked))

    @property
    def prices(self) -> tuple[Price, ...]:
        """The declarations, most specific first."""
        return tuple(e.price for e in self.entries)

    def __len__(self) -> int:
        return len(self.entries)

    def lookup(self, model: str) -> Price | None:
        """The most specific price whose glob covers ``model``, or None."""
        cache = self._cache
        try:
            return cache[model]
        except KeyError:
            pass
        found = next((e.price for e in self.entries if e.match(model)), None)
        if len(cache) >= _CACHE_LIMIT:
            cache.clear()
        cache[model] = found
        return found
