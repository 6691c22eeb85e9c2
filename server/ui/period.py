"""The period picker: which span of time a page's amounts cover.

``period`` is ``all`` (lifetime totals), ``1h``, ``1d``, ``7d``, ``30d`` (that long
before now) or ``custom`` with ``start`` and/or ``end`` (ISO 8601; a browser's
``datetime-local`` value such as ``2026-11-29T14:00`` is read as UTC). Times are
checked by ``tollway.policy.validate.need_time``, the rule every usage query follows.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from tollway.policy.validate import FieldError, need_time

__all__ = ["CHOICES", "Period"]

# (value, label, seconds before now; None: no fixed length)
CHOICES: tuple[tuple[str, str, int | None], ...] = (
    ("all", "All time", None),
    ("1h", "Last hour", 3600),
    ("1d", "Last day", 86400),
    ("7d", "Last 7 days", 7 * 86400),
    ("30d", "Last 30 days", 30 * 86400),
    ("custom", "Custom", None),
)
_LENGTH = {value: seconds for value, _, seconds in CHOICES}
_LABEL = {value: label for value, label, _ in CHOICES}


@dataclass(frozen=True, slots=True)
class Period:
    """A chosen period: its picker value, and ``[start, end)`` in unix seconds (None: open)."""

    name: str
    start: float | None = None
    end: float | None = None
    start_text: str = ""  # what the custom fields held, shown back in the form
    end_text: str = ""

    @property
    def label(self) -> str:
        return _LABEL[self.name]

    @property
    def lifetime(self) -> bool:
        return self.start is None and self.end is None

    @classmethod
    def parse(cls, params: Mapping[str, str], now: float, default: str = "all") -> Period:
        """The period of a page's query; ``FieldError`` names ``period``, ``start`` or ``end``."""
        name = params.get("period") or default
        if name not in _LENGTH:
            choices = ", ".join(_LENGTH)
            raise FieldError("period", f"must be one of {choices}; got {name!r}")
        start_text = params.get("start", "").strip()
        end_text = params.get("end", "").strip()
        if name != "custom":
            if start_text or end_text:
                name = "custom"  # a hand-written start/end means what it says
            else:
                length = _LENGTH[name]
                return cls(name) if length is None else cls(name, now - length, now)
        start = need_time(start_text, "start")
        end = need_time(end_text, "end")
        if start is not None and end is not None and start >= end:
            raise FieldError("end", "must be after start")
        return cls("custom", start, end, start_text, end_text)

    def params(self) -> list[tuple[str, str]]:
        """The query parameters that choose this period again (none for the default)."""
        if self.name == "custom":
            out = [("period", "custom")]
            if self.start_text:
                out.append(("start", self.start_text))
            if self.end_text:
                out.append(("end", self.end_text))
            return out
        return [("period", self.name)]

    def span(self, first_seen: float, now: float) -> tuple[float, float]:
        """``[start, end)`` with open ends closed: from ``first_seen``, up to ``now``."""
        start = first_seen if self.start is None else self.start
        end = now if self.end is None else self.end
        return start, max(end, start)
