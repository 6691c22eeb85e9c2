"""Counter stores: where quota counters live (memory or Redis).

``open_store`` and ``open_entity_store`` are the one place where a backend is chosen
from a URL (``parse_store_url``); the Redis modules are imported only when a Redis URL
is given. The URL forms:

- ``memory``: this process;
- ``redis://[USER:PASSWORD@]HOST:PORT/DB``, ``rediss://…`` (TLS), ``unix:///PATH?db=N``:
  one Redis (redis-py's URL syntax);
- ``redis+sentinel://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…]/SERVICE[/DB]``: the master
  that Redis Sentinel names ``SERVICE``, found through any of the sentinels listed
  (port 26379 when left out); the password is the master's.
- ``redis+cluster://[USER:PASSWORD@]HOST:PORT[,HOST:PORT…][/PREFIX]``: a Redis Cluster,
  found through any of the nodes listed (port 6379 when left out); ``PREFIX``, when
  given, is the key prefix (in place of the one the caller passes). Keys are hash-tagged
  (``cluster_tags``), so a prefix may not hold ``{`` or ``}``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Literal
from urllib.parse import unquote, urlsplit

from .base import (
    CounterSpec,
    CounterState,
    CounterStore,
    ForeignDecision,
    ReportOutcome,
    StoreOptions,
    StoreRejected,
    StoreUnavailable,
)

if TYPE_CHECKING:
    from ..entities import EntityStore

__all__ = [
    "CounterSpec",
    "CounterState",
    "CounterStore",
    "ReportOutcome",
    "StoreOptions",
    "StoreUnavailable",
    "StoreRejected",
    "ForeignDecision",
    "StoreAddress",
    "parse_store_url",
    "with_password",
    "open_store",
    "open_entity_store",
]

_REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
_SENTINEL = "redis+sentinel://"
_CLUSTER = "redis+cluster://"
_SENTINEL_PORT = 26379
_REDIS_PORT = 6379
_FORMS = (
    "'memory', a redis://, rediss:// or unix:// URL, "
    "redis+sentinel://HOST:PORT[,HOST:PORT…]/SERVICE[/DB] or "
    "redis+cluster://HOST:PORT[,HOST:PORT…][/PREFIX]"
)


@dataclass(frozen=True, slots=True)
class StoreAddress:
    """Where a store lives, read from its URL by ``parse_store_url``.

    ``kind``: ``memory``, ``redis`` (one server: ``url`` is redis-py's URL),
    ``sentinel`` (``nodes`` are the sentinels, ``service`` the master's name, ``db`` its
    database) or ``cluster`` (``nodes`` are where to find the cluster, ``prefix`` the key
    prefix the URL names, None when it names none). ``username``/``password`` are the
    credentials of the master(s) (a plain Redis URL keeps those it has in ``url``;
    ``password`` is then one given apart, ``with_password``).
    """

    kind: Literal["memory", "redis", "sentinel", "cluster"]
    url: str
    nodes: tuple[tuple[str, int], ...] = ()
    service: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    prefix: str | None = None


def _host_port(text: str, default_port: int, url: str) -> tuple[str, int]:
    host, port = text, ""
    if text.startswith("["):  # [IPv6]:PORT
        host, _, rest = text[1:].partition("]")
        port = rest.removeprefix(":")
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    if not host:
        raise ValueError(f"store: {url!r}: a host is missing")
    if not port:
        return host, default_port
    if not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ValueError(f"store: {url!r}: {port!r} is not a port")
    return host, int(port)


def parse_store_url(url: str) -> StoreAddress:
    """The address of a store URL (the forms are in this module's docstring); ValueError
    naming the URL and its problem otherwise."""
    if url == "memory":
        return StoreAddress("memory", url)
    if not isinstance(url, str) or not url.startswith((*_REDIS_SCHEMES, _SENTINEL, _CLUSTER)):
        raise ValueError(f"store: {url!r} is not a store; use {_FORMS}")
    if url.startswith(_CLUSTER):
        return _cluster_address(url)
    if not url.startswith(_SENTINEL):
        return StoreAddress("redis", url)
    nodes, path, username, password = _nodes_and_path(url, _SENTINEL, _SENTINEL_PORT, "sentinel")
    parts = [unquote(p) for p in path.split("/")] if path else []
    if not parts or not parts[0] or len(parts) > 2:
        raise ValueError(f"store: {url!r}: expected …/SERVICE or …/SERVICE/DB after the sentinels")
    db = parts[1] if len(parts) == 2 else "0"
    if not (db.isascii() and db.isdigit()):
        raise ValueError(f"store: {url!r}: the database {db!r} is not a number")
    return StoreAddress("sentinel", url, nodes, parts[0], int(db), username, password)


def _nodes_and_path(
    url: str, scheme: str, default_port: int, what: str
) -> tuple[tuple[tuple[str, int], ...], str, str | None, str | None]:
    """The hosts of a ``scheme[USER:PASSWORD@]HOST:PORT[,…][/PATH]`` URL, its path and
    its credentials."""
    netloc, _, path = url.removeprefix(scheme).partition("/")
    userinfo, at, hosts = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    nodes = tuple(_host_port(h, default_port, url) for h in hosts.split(",") if h)
    if not nodes:
        raise ValueError(f"store: {url!r}: list at least one {what} as HOST:PORT")
    return nodes, path, username, password


def _cluster_address(url: str) -> StoreAddress:
    nodes, path, username, password = _nodes_and_path(url, _CLUSTER, _REDIS_PORT, "node")
    prefix = unquote(path) if path else None
    return StoreAddress("cluster", url, nodes, username=username, password=password,
                        prefix=prefix)


def with_password(address: StoreAddress, password: str | None) -> StoreAddress:
    """``address`` with a password kept out of its URL (``StoreOptions.password``: out of
    ``ps`` and logs); ValueError when the URL has one too."""
    if password is None or address.kind == "memory":
        return address
    in_url = address.password if address.kind != "redis" else urlsplit(address.url).password
    if in_url is not None:
        raise ValueError("store: the URL has a password and one was given apart; give it once")
    return replace(address, password=password)


def open_store(
    url: str,
    *,
    key_prefix: str = "tollway:",
    clock: Callable[[], float] | None = None,
    options: StoreOptions | None = None,
) -> CounterStore:
    """The counter store for ``url``. ``clock`` drives the memory store (Redis uses TIME);
    ``options`` its caps, timeout and password."""
    options = options or StoreOptions()
    address = with_password(parse_store_url(url), options.password)
    if address.kind == "memory":
        from .memory import MemoryCounterStore

        if clock is not None:
            return MemoryCounterStore(clock, options=options)
        return MemoryCounterStore(options=options)
    if address.kind == "cluster":
        from .redis_cluster import RedisClusterCounterStore

        return RedisClusterCounterStore(
            address, key_prefix=address.prefix or key_prefix, timeout=options.timeout
        )
    from .redis_store import RedisCounterStore

    return RedisCounterStore(address, key_prefix=key_prefix, timeout=options.timeout)


def open_entity_store(
    url: str,
    *,
    key_prefix: str = "tollway:",
    clock: Callable[[], float] | None = None,
    options: StoreOptions | None = None,
) -> EntityStore:
    """The entity store for ``url``. ``clock`` times the Redis store's read cache."""
    from ..entity_stores import MemoryEntityStore, RedisEntityStore

    options = options or StoreOptions()
    address = with_password(parse_store_url(url), options.password)
    if address.kind == "memory":
        return MemoryEntityStore()
    return RedisEntityStore(
        address, key_prefix=address.prefix or key_prefix, clock=clock, timeout=options.timeout
    )
