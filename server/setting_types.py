"""The value types of command-line settings: how a flag's or variable's text becomes a value.

Each type parses text (``parse``), names its placeholder in ``--help`` (``metavar``) and
writes a default back as text (``show``). ``parse`` raises ``ValueError`` with a message
that says what was expected and what was given; the caller adds the flag or the
environment variable in front, so every message reads ``--grace: expected …``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

__all__ = [
    "ValueType", "Text", "FilePath", "Integer", "Number", "Duration", "Choice", "Flag",
    "KeyValue", "SecretFile",
]


class ValueType(Protocol):
    """What a settings row needs of its type."""

    @property
    def metavar(self) -> str: ...

    def parse(self, text: str) -> Any: ...

    def show(self, value: Any) -> str: ...


@dataclass(frozen=True)
class Text:
    """Any text; ``allow_empty=False`` refuses the empty string."""

    metavar: str = "TEXT"
    allow_empty: bool = True

    def parse(self, text: str) -> str:
        if not text and not self.allow_empty:
            raise ValueError("must not be empty")
        return text

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class FilePath:
    """A filesystem path; ``must_exist`` checks it when the command line is read."""

    metavar: str = "PATH"
    must_exist: bool = False

    def parse(self, text: str) -> str:
        if not text:
            raise ValueError("expected a path, got ''")
        if self.must_exist and not Path(text).exists():
            raise ValueError(f"{text}: no such file")
        return text

    def show(self, value: Any) -> str:
        return str(value)


@dataclass(frozen=True)
class Number:
    """A finite number within ``[low, high]`` (either bound may be open); ``whole``: an int."""

    low: float | None = None
    high: float | None = None
    whole: bool = False

    @property
    def metavar(self) -> str:
        return "N" if self.whole else "X"

    def parse(self, text: str) -> float:
        digits = text.strip().replace("_", "")
        try:
            value = int(digits, 10) if self.whole else float(digits)
        except ValueError:
            kind = "a whole number" if self.whole else "a number"
            raise ValueError(f"expected {kind}, got {text!r}") from None
        if not math.isfinite(value):
            raise ValueError(f"expected a finite number, got {text!r}")
        if self.low is not None and self.high is not None and not self.low <= value <= self.high:
            raise ValueError(f"must be between {self.low:g} and {self.high:g}, got {text!r}")
        if self.low is not None and value < self.low:
            raise ValueError(f"must be at least {self.low:g}, got {text!r}")
        if self.high is not None and value > self.high:
            raise ValueError(f"must be at most {self.high:g}, got {text!r}")
        return value

    def show(self, value: Any) -> str:
        return str(value) if self.whole else f"{value:g}"


def Integer(low: int | None = None, high: int | None = None) -> Number:
    """A whole number within ``[low, high]``: a ``Number`` that parses to ``int``."""
    return Number(low, high, whole=True)


_DURATION = re.compile(r"(?P<amount>\d+(?:\.\d*)?|\.\d+)\s*(?P<unit>ms|s|m|h|d|w)?")
_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


@dataclass(frozen=True)
class Duration:
    """A span of time, held in seconds.

    A bare number counts in ``unit`` (``--grace 10`` is 10 seconds, ``--usage-retention
    30`` is 30 days); a suffix names another one: ``500ms``, ``1.5s``, ``5m``, ``12h``,
    ``7d``, ``2w``. Never negative; at most ``high`` seconds when given.
    """

    unit: str = "s"
    high: float | None = None

    @property
    def metavar(self) -> str:
        return {"s": "SECONDS", "d": "DAYS"}.get(self.unit, "DURATION")

    def parse(self, text: str) -> float:
        match = _DURATION.fullmatch(text.strip())
        if match is None:
            raise ValueError(
                f"expected a duration such as 10, 1.5{self.unit}, 500ms, 5m or 12h "
                f"(a bare number counts in {self.unit}), got {text!r}"
            )
        seconds = float(match["amount"]) * _SECONDS[match["unit"] or self.unit]
        if self.high is not None and seconds > self.high:
            raise ValueError(f"must be at most {self.show(self.high)}, got {text!r}")
        return seconds

    def show(self, value: Any) -> str:
        amount = float(value) / _SECONDS[self.unit]
        if amount.is_integer():
            return f"{int(amount)}{self.unit}"
        return f"{format(Decimal(repr(amount)), 'f')}{self.unit}"  # never 1e-05: parse reads it


@dataclass(frozen=True)
class Choice:
    """One of a fixed list of words (case-sensitive)."""

    choices: tuple[str, ...]

    @property
    def metavar(self) -> str:
        return "{" + ",".join(self.choices) + "}"

    def parse(self, text: str) -> str:
        if text not in self.choices:
            raise ValueError(f"expected one of {', '.join(self.choices)}, got {text!r}")
        return text

    def show(self, value: Any) -> str:
        return str(value)


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Flag:
    """A switch: present on the command line means true; in the environment one of
    1/true/yes/on or 0/false/no/off."""

    metavar: str = ""

    def parse(self, text: str) -> bool:
        word = text.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
        raise ValueError(f"expected one of {', '.join(_TRUE + _FALSE)}, got {text!r}")

    def show(self, value: Any) -> str:
        return "on" if value else "off"


_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class KeyValue:
    """``KEY=VALUE`` with a KEY made of letters, digits, ``_ . -``; becomes ``(key, value)``."""

    metavar: str = "KEY=VALUE"

    def parse(self, text: str) -> tuple[str, str]:
        key, sep, value = text.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not _NAME.fullmatch(key) or not value:
            raise ValueError(f"expected {self.metavar}, got {text!r}")
        return key, value

    def show(self, value: Any) -> str:
        key, val = value
        return f"{key}={val}"


@dataclass(frozen=True)
class HeaderAttribute(KeyValue):
    """``HEADER=ATTRIBUTE``: a request header read as a request attribute; becomes
    ``(header, attribute)``, checked by ``tollway.server.identity.parse_attribute_headers``
    (header names may hold ``:``, as Envoy's pseudo-headers do)."""

    metavar: str = "HEADER=ATTRIBUTE"

    def parse(self, text: str) -> tuple[str, str]:
        from tollway.policy.validate import FieldError

        from .identity import parse_attribute_headers

        try:
            ((header, attribute),) = parse_attribute_headers([text]).items()
        except FieldError as exc:  # the flag is named by whoever reports it
            raise ValueError(exc.problem) from None
        return header, attribute


@dataclass(frozen=True)
class SecretFile:
    """A path to a file holding a secret; the value is the file's text without the
    trailing newline. The secret itself never appears in ``--help`` or in an error."""

    metavar: str = "FILE"

    def parse(self, text: str) -> str:
        try:
            secret = Path(text).read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ValueError(f"{text}: no such file") from None
        except (OSError, UnicodeDecodeError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
            raise ValueError(f"{text}: {reason}") from None
        secret = secret.rstrip("\r\n")
        if not secret:
            raise ValueError(f"{text}: the file is empty")
        return secret

    def show(self, value: Any) -> str:
        return "(none)"

