"""Where users, groups, their metadata and memberships live: memory or Redis.

Both stores implement ``EntityStore`` (``policy.entities``) with the same merge rules.
The Redis store keeps one hash per entity, one field per top-level metadata key (JSON
value), so a merge is a handful of ``HSET``/``HDEL`` on the keys that changed: two
replicas merging different keys never undo each other. Reads on the decision path come
from a short-lived in-process cache, and nothing is written unless the merge changed
something, so a steady stream of identical requests costs no Redis calls beyond one
cache refresh per entity every few seconds. Kinds, ids and metadata arrive validated
(``policy.validate``, through the engine): the stores only keep them.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote

import redis
from cachetools import TTLCache
from redis.exceptions import ResponseError

from tollway.dsl.ast import Value

from .entities import EntityKind, EntityView, merge_metadata
from .stores import StoreAddress, parse_store_url
from .stores.base import StoreUnavailable
from .stores.cluster_calls import ClusterCalls, SlotCalls
from .stores.cluster_tags import check_prefix, tag_of, tagged_prefix
from .stores.redis_calls import RedisCalls
from .stores.redis_cluster import cluster_calls
from .stores.redis_store import DEFAULT_TIMEOUT, redis_client

__all__ = ["MemoryEntityStore", "RedisEntityStore", "CACHE_TTL", "LINK_TTL"]

CACHE_TTL = 5.0  # seconds another replica's metadata change may take to be seen here
LINK_TTL = 600.0  # links are only ever added, so a known link can be trusted for longer
# Marks an entity that exists with empty metadata. Metadata keys are valid UTF-8, which
# never contains the byte 0xff, so it cannot collide with one.
_EXISTS = b"\xff"


def _same(a: Value, b: Value) -> bool:
    """Equal and of the same type (``1 == 1.0 == True`` must still count as a change)."""
    return type(a) is type(b) and a == b


def _diff(old: Mapping[str, Value], new: Mapping[str, Value]) -> tuple[dict[str, Value], list[str]]:
    """What to set and what to remove to turn ``old`` into ``new``."""
    changed = {k: v for k, v in new.items() if k not in old or not _same(old[k], v)}
    return changed, [k for k in old if k not in new]


# ------------------------------------------------------------------------ memory


class MemoryEntityStore:
    """Entities in this process's memory (the ``memory`` store)."""

    blocking = False

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._meta: dict[tuple[str, str], dict[str, Value]] = {}
        self._links: dict[tuple[str, str], set[str]] = {}
        self._memberships = 0  # user -> group pairs

    def observe(
        self,
        kind: EntityKind,
        id: str,
        patch: Mapping[str, Value] | None,
        *,
        deadline: float | None = None,
    ) -> Mapping[str, Value]:
        with self._lock:
            stored = self._meta.get((kind, id), {})
            merged = merge_metadata(stored, patch)
            if merged is None:
                return stored
            self._meta[(kind, id)] = merged
            return merged

    def link(self, user_id: str, group_id: str, *, deadline: float | None = None) -> None:
        with self._lock:
            groups = self._links.setdefault(("user", user_id), set())
            if group_id not in groups:
                groups.add(group_id)
                self._links.setdefault(("group", group_id), set()).add(user_id)
                self._memberships += 1

    def get(
        self, kind: EntityKind, id: str, *, deadline: float | None = None
    ) -> EntityView | None:
        with self._lock:
            meta = self._meta.get((kind, id))
            links = self._links.get((kind, id))
            if meta is None and not links:
                return None
            return EntityView(kind, id, dict(meta or {}), tuple(sorted(links or ())))

    def put(
        self,
        kind: EntityKind,
        id: str,
        metadata: Mapping[str, Value] | None,
        *,
        replace: bool = False,
    ) -> EntityView:
        new: dict[str, Value]
        with self._lock:
            if replace:
                new = {k: v for k, v in (metadata or {}).items() if v is not None}
            else:
                stored = self._meta.get((kind, id), {})
                new = merge_metadata(stored, metadata) or dict(stored)
            self._meta[(kind, id)] = new
        view = self.get(kind, id)
        assert view is not None
        return view

    def entries(self) -> dict[str, int]:
        """Users and groups with metadata, and user -> group memberships."""
        return {"entities": len(self._meta), "memberships": self._memberships}

    def close(self) -> None:
        pass


# ------------------------------------------------------------------------- redis


def _encode_id(id: str) -> str:
    return quote(id, safe="", encoding="utf-8", errors="surrogatepass")


def _raw(id: str) -> bytes:
    return id.encode("utf-8", "surrogatepass")


def _dumps(value: Value) -> str:
    try:
        return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except ValueError as exc:
        raise ValueError(f"metadata: {exc}") from exc


class RedisEntityStore:
    """Entities in Redis, shared by replicas, with an in-process read cache.

    Keys: ``{prefix}e:{kind}:{id}`` (hash: metadata key -> JSON value),
    ``{prefix}m:user:{id}`` (set of the user's groups), ``{prefix}m:group:{id}`` (set of
    the group's members); ids are percent-encoded in key names and raw in set members.
    Every call waits for Redis until its deadline at most (``RedisCalls``); a metadata
    write or a link that timed out may still land later, which is harmless: both only
    ever record what a request said.

    On a Redis Cluster (a ``redis+cluster://`` address) an entity's two keys carry the
    hash tag of ``{kind}:{id}`` (``{prefix}{<tag>}e:…``, ``{prefix}{<tag>}m:…``,
    ``cluster_tags``), so reading both is one call to one master; a link adds the user's
    and the group's set in two calls, each to its own master.
    """

    blocking = True

    def __init__(
        self,
        url: StoreAddress | str,
        *,
        key_prefix: str = "tollway:",
        clock: Callable[[], float] | None = None,
        cache_ttl: float = CACHE_TTL,
        cache_size: int = 100_000,
        link_ttl: float = LINK_TTL,
        client: redis.Redis | None = None,
        timeout: float = DEFAULT_TIMEOUT,
    ) -> None:
        address = parse_store_url(url) if isinstance(url, str) else url
        self._cluster: ClusterCalls | None = None
        self._client: redis.Redis | None = None
        if address.kind == "cluster":
            check_prefix(key_prefix)
            self._cluster = cluster_calls(address, timeout=timeout)
        else:
            self._client = client or redis_client(address, timeout=timeout)
            self._calls = RedisCalls(self._client)
        self.timeout = timeout
        self._prefix = key_prefix
        timer = clock or time.monotonic
        self._lock = threading.Lock()  # TTLCache is not thread-safe; I/O stays outside it
        self._meta: TTLCache[tuple[str, str], dict[str, Value]] = TTLCache(
            cache_size, cache_ttl, timer=timer
        )
        self._links: TTLCache[tuple[str, str], bool] = TTLCache(cache_size, link_ttl, timer=timer)

    def observe(
        self,
        kind: EntityKind,
        id: str,
        patch: Mapping[str, Value] | None,
        *,
        deadline: float | None = None,
    ) -> Mapping[str, Value]:
        with self._lock:
            cached = self._meta.get((kind, id))
        if cached is None:
            (raw,) = self._run([("HGETALL", self._key(kind, id))], deadline)
            cached = self._decode(raw)
            with self._lock:
                self._meta[(kind, id)] = cached
        merged = merge_metadata(cached, patch)
        if merged is None:
            return cached
        changed, removed = _diff(cached, merged)
        self._write(kind, id, changed, removed, deadline=deadline)
        with self._lock:
            self._meta[(kind, id)] = merged
        return merged

    def link(self, user_id: str, group_id: str, *, deadline: float | None = None) -> None:
        with self._lock:
            if (user_id, group_id) in self._links:
                return
        adds = [
            ("SADD", self._links_key("user", user_id), _raw(group_id)),
            ("SADD", self._links_key("group", group_id), _raw(user_id)),
        ]
        if self._cluster is None:
            self._transaction(adds, deadline)
        else:  # two slots: each set on its own (adding twice is harmless)
            for add in adds:
                self._run([add], deadline)
        with self._lock:
            self._links[(user_id, group_id)] = True

    def get(
        self, kind: EntityKind, id: str, *, deadline: float | None = None
    ) -> EntityView | None:
        raw, members = self._run(
            [("HGETALL", self._key(kind, id)), ("SMEMBERS", self._links_key(kind, id))], deadline
        )
        if not raw and not members:
            return None
        meta = self._decode(raw)
        with self._lock:
            self._meta[(kind, id)] = meta
        links = sorted(m.decode("utf-8", "surrogatepass") for m in members)
        return EntityView(kind, id, dict(meta), tuple(links))

    def put(
        self,
        kind: EntityKind,
        id: str,
        metadata: Mapping[str, Value] | None,
        *,
        replace: bool = False,
    ) -> EntityView:
        patch = dict(metadata or {})
        setting = {k: v for k, v in patch.items() if v is not None}
        removing = [k for k, v in patch.items() if v is None]
        self._write(kind, id, setting, removing, replace=replace)
        with self._lock:
            self._meta.pop((kind, id), None)
        view = self.get(kind, id)
        assert view is not None  # the write just created it
        return view

    def entries(self) -> dict[str, int]:
        """The in-process read caches (the entities themselves live in Redis)."""
        with self._lock:
            return {"entity_cache": len(self._meta), "link_cache": len(self._links)}

    def close(self) -> None:
        if self._client is not None:
            self._calls.close()  # its idle connections back to the pool, closed just after
            self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    # ------------------------------------------------------------------ internals

    def _prefix_of(self, kind: str, id: str) -> str:
        if self._cluster is None:
            return self._prefix
        return tagged_prefix(self._prefix, tag_of(f"{kind}:{id}"))

    def _key(self, kind: str, id: str) -> str:
        return f"{self._prefix_of(kind, id)}e:{kind}:{_encode_id(id)}"

    def _links_key(self, kind: str, id: str) -> str:
        return f"{self._prefix_of(kind, id)}m:{kind}:{_encode_id(id)}"

    def _write(
        self,
        kind: str,
        id: str,
        setting: Mapping[str, Value],
        removing: Iterable[str],
        *,
        replace: bool = False,
        deadline: float | None = None,
    ) -> None:
        """One MULTI: optionally clear, then set and remove top-level keys."""
        fields: list[Any] = []
        for k, v in setting.items():
            fields += (k, _dumps(v))
        fields += (_EXISTS, b"1")
        gone = list(removing)
        key = self._key(kind, id)
        commands: list[tuple[Any, ...]] = []
        if replace:
            commands.append(("DEL", key))
        elif gone:
            commands.append(("HDEL", key, *gone))
        commands.append(("HSET", key, *fields))
        self._transaction(commands, deadline)

    def _transaction(self, commands: list[tuple[Any, ...]], deadline: float | None) -> None:
        self._run([("MULTI",), *commands, ("EXEC",)], deadline)

    def _run(self, commands: list[tuple[Any, ...]], deadline: float | None) -> list[Any]:
        """Every reply, by ``deadline`` (the store's timeout from now when None)."""
        if deadline is None:
            deadline = time.monotonic() + self.timeout
        calls: RedisCalls | SlotCalls
        if self._cluster is not None:  # every key of the commands is in one slot
            calls = self._cluster.at(next(str(c[1]) for c in commands if len(c) > 1))
        else:
            calls = self._calls
        replies = calls.run(commands, deadline)
        for reply in replies:
            if isinstance(reply, ResponseError):
                raise StoreUnavailable(f"redis: {reply}", outcome="unknown")
        return replies

    @staticmethod
    def _decode(raw: list[bytes]) -> dict[str, Value]:
        """An ``HGETALL`` reply (field, value, field, value…) as metadata."""
        return {
            raw[i].decode("utf-8"): json.loads(raw[i + 1])
            for i in range(0, len(raw), 2)
            if raw[i] != _EXISTS
        }
