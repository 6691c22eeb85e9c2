"""Where a parametrized test keeps its state: memory or Redis (see ``backend`` in conftest)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import count


@dataclass
class Backend:
    """Where a test keeps its state: in memory, or in a Redis under fresh key prefixes."""

    name: str  # "memory" or "redis"
    store: str  # "memory", or the Redis URL
    base_prefix: str = "tollway:"
    _made: Iterator[int] = field(default_factory=count)

    def prefix(self) -> str:
        """A key prefix no other call returned (several stores in one test stay apart)."""
        return f"{self.base_prefix}{next(self._made)}:"
