"""The integration's settings: the ``tollway`` entry of the proxy config's ``callback_settings``.

Every value may be written ``os.environ/NAME`` (LiteLLM's convention): it is read from
that environment variable (or the proxy's secret manager), and an unset one counts as not
given. Unknown keys and bad values raise ``ValueError`` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

from tollway.client.channel import DEFAULT_TARGET
from tollway.client.failure import OnError
from tollway.server.identity import parse_attribute_headers

from .identity import SOURCES

__all__ = ["Settings", "SETTINGS_KEY"]

SETTINGS_KEY = "tollway"  # callback_settings.tollway
_WHERE = f"callback_settings.{SETTINGS_KEY}"
_ENV = "os.environ/"


@dataclass(frozen=True, slots=True)
class Settings:
    """How the proxy reaches tollway and whom each request is for (docs/integrations.md)."""

    target: str = DEFAULT_TARGET
    token: str | None = None
    tls: bool | str | None = None  # True (system roots) or a CA bundle's path
    timeout: float = 0.05
    on_error: OnError = "allow"
    rules: str | None = None  # decide in process with these rules instead of a sidecar
    store: str = "memory"  # the in-process engine's counter store
    key_prefix: str = "tollway:"  # its keys' prefix in a shared store
    user: tuple[str, ...] = ("request", "key.user_id")
    group: tuple[str, ...] = ("key.team_id", "request")
    request_metadata: bool = True  # take user and group metadata from the request too
    attribute_headers: Mapping[str, str] = field(default_factory=dict)
    endpoint_attribute: str | None = "endpoint"  # the route's path, as request.<this>

    @classmethod
    def parse(
        cls, raw: Any, resolve: Callable[[str], str | None] | None = None
    ) -> Settings:
        """Settings from the config's mapping; ``resolve("os.environ/NAME")`` reads a secret
        (default: the environment)."""
        if raw is None:
            return cls()
        if not isinstance(raw, Mapping):
            raise ValueError(f"{_WHERE}: must be a mapping, got {type(raw).__name__}")
        parsed: dict[str, Any] = {}
        for key, value in raw.items():
            check = _CHECKS.get(key)
            name = f"{_WHERE}.{key}"
            if check is None:
                known = ", ".join(sorted(_CHECKS))
                raise ValueError(f"{name}: unknown setting (known: {known})")
            value = _resolved(value, resolve)
            if value is not None:
                parsed[key] = check(value, name)
        return dataclasses.replace(cls(), **parsed)


def _resolved(value: Any, resolve: Callable[[str], str | None] | None) -> Any:
    if isinstance(value, str) and value.startswith(_ENV):
        found = resolve(value) if resolve is not None else os.environ.get(value[len(_ENV):])
        return found or None
    if isinstance(value, list | tuple):
        return [_resolved(v, resolve) for v in value]
    return value


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name}: must be a non-empty string, got {value!r}")
    return value.strip()


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise ValueError(f"{name}: must be true or false, got {value!r}")
    return value


def _tls(value: Any, name: str) -> bool | str:
    if isinstance(value, bool) or (isinstance(value, str) and value.lower() in ("true", "false")):
        return _flag(value, name)
    return _text(value, name)  # a CA bundle's path


def _seconds(value: Any, name: str) -> float:
    try:
        seconds = math.nan if isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise ValueError(f"{name}: must be a positive number of seconds, got {value!r}")
    return seconds


def _on_error(value: Any, name: str) -> OnError:
    for choice in get_args(OnError):
        if value == choice:
            return choice
    raise ValueError(f"{name}: must be one of {', '.join(get_args(OnError))}, got {value!r}")


def _sources(value: Any, name: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not items:
        raise ValueError(f"{name}: must be a source or a list of sources")
    for i, source in enumerate(items):
        if source not in SOURCES:
            raise ValueError(f"{name}[{i}]: unknown source {source!r} (known: {', '.join(SOURCES)})")
    return tuple(items)


def _attribute_headers(value: Any, name: str) -> dict[str, str]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Sequence) or not all(isinstance(i, str) for i in items):
        raise ValueError(f"{name}: must be a list of HEADER=ATTRIBUTE")
    try:
        return parse_attribute_headers(items)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None


def _endpoint_attribute(value: Any, name: str) -> str | None:
    if value is False:
        return None
    return _text(value, name)


# One check per setting, named after it: (value, "callback_settings.tollway.<key>") -> value
_CHECKS: dict[str, Callable[[Any, str], Any]] = {
    "target": _text,
    "token": _text,
    "tls": _tls,
    "timeout": _seconds,
    "on_error": _on_error,
    "rules": _text,
    "store": _text,
    "key_prefix": _text,
    "user": _sources,
    "group": _sources,
    "request_metadata": _flag,
    "attribute_headers": _attribute_headers,
    "endpoint_attribute": _endpoint_attribute,
}
