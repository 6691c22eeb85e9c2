"""Entity stores (memory and Redis): merge semantics, links, caching, and writes only on change."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from backends import Backend
from conftest import WITH_CLUSTER, backend_of

from tests.conftest import RedisServer
from tollway.policy.engine import Engine
from tollway.policy.entities import EntityStore
from tollway.policy.entity_stores import MemoryEntityStore, RedisEntityStore
from tollway.policy.stores import StoreUnavailable, open_entity_store


@pytest.fixture(params=WITH_CLUSTER)
def backend(request: pytest.FixtureRequest) -> Backend:
    return backend_of(request)


@pytest.fixture
def entities(backend: Backend) -> Iterator[EntityStore]:
    s: EntityStore = (
        MemoryEntityStore() if backend.name == "memory"
        else RedisEntityStore(backend.store, key_prefix=backend.prefix(), timeout=2)
    )
    yield s
    s.close()


def test_observe_merges_and_returns_the_merged_view(entities: EntityStore) -> None:
    assert entities.observe("user", "u1", {"tier": "free", "region": "eu"}) == {
        "tier": "free", "region": "eu"}
    assert entities.observe("user", "u1", {"tier": "pro", "region": None, "n": 1}) == {
        "tier": "pro", "n": 1}
    assert entities.observe("user", "u1", None) == {"tier": "pro", "n": 1}
    view = entities.get("user", "u1")
    assert view is not None and dict(view.metadata) == {"tier": "pro", "n": 1}


def test_type_changes_count_as_changes(entities: EntityStore) -> None:
    entities.observe("user", "u1", {"n": 1})
    assert entities.observe("user", "u1", {"n": 1.0}) == {"n": 1.0}
    assert isinstance(entities.get("user", "u1").metadata["n"], float)  # type: ignore[union-attr]
    entities.observe("user", "u1", {"n": True})
    assert entities.get("user", "u1").metadata["n"] is True  # type: ignore[union-attr]


def test_nested_values_and_odd_ids_round_trip(entities: EntityStore) -> None:
    odd = "a:b/c d%ü*" + "x" * 200
    meta = {"categories": ["vip", "risky"], "limits": {"a": [1, 2.5, None]}, "e": []}
    entities.observe("group", odd, meta)
    view = entities.get("group", odd)
    assert view is not None and view.id == odd and dict(view.metadata) == meta


def test_unknown_entities_are_none_and_identical_requests_create_nothing(entities: EntityStore) -> None:
    assert entities.get("user", "ghost") is None
    assert entities.observe("user", "ghost", {}) == {}
    assert entities.observe("user", "ghost", {"gone": None}) == {}
    assert entities.get("user", "ghost") is None


def test_link_is_idempotent_and_get_returns_links(entities: EntityStore) -> None:
    entities.link("u1", "g1")
    entities.link("u1", "g1")
    entities.link("u1", "g0")
    entities.link("u2", "g1")
    user = entities.get("user", "u1")
    group = entities.get("group", "g1")
    assert user is not None and user.links == ("g0", "g1") and dict(user.metadata) == {}
    assert group is not None and group.links == ("u1", "u2")


def test_put_merges_or_replaces(entities: EntityStore) -> None:
    entities.put("group", "acme", {"monthly_credits": 500, "plan": "team"})
    view = entities.put("group", "acme", {"plan": None, "owner": "x"})
    assert dict(view.metadata) == {"monthly_credits": 500, "owner": "x"}
    view = entities.put("group", "acme", {"monthly_credits": 900}, replace=True)
    assert dict(view.metadata) == {"monthly_credits": 900}
    assert dict(entities.observe("group", "acme", None)) == {"monthly_credits": 900}
    empty = entities.put("group", "new", {})
    assert empty.metadata == {} and entities.get("group", "new") is not None


@pytest.mark.parametrize(
    ("kind", "id", "message"),
    [("user", "", "user.id: must not be empty"), ("group", "x" * 257, "group.id: 257 bytes"),
     ("robot", "r", "kind: must be 'user' or 'group'")],
)
def test_bad_ids_are_rejected_before_anything_is_written(
    entities: EntityStore, kind: str, id: str, message: str
) -> None:
    engine = Engine.from_text("default allow", entities=entities)
    with pytest.raises(ValueError, match=message):
        engine.upsert_entity(kind, id, {"a": 1})
    with pytest.raises(ValueError, match=r"groups\[1\]: must not be empty"):
        engine.upsert_entity("user", "u1", {"a": 1}, groups=["g1", ""])
    with pytest.raises(ValueError, match=r"group\.id: must not be empty"):
        engine.decide({"user": {"id": "u1", "metadata": {"a": 1}}, "group": {"id": ""},
                       "model": "m"})
    assert entities.get("user", "u1") is None  # nothing half-written
    assert entities.get("group", "g1") is None


def test_kind_is_accepted_singular_or_plural(entities: EntityStore) -> None:
    engine = Engine.from_text("default allow", entities=entities)
    engine.upsert_entity("users", "u1", {"a": 1}, groups=["g1"])
    assert engine.get_entity("user", "u1") == engine.get_entity("users", "u1")
    group = engine.get_entity("groups", "g1")
    assert group is not None and group.kind == "group" and group.links == ("u1",)


# ------------------------------------------------------------- Redis specifics


def _calls(c: redis.Redis) -> int:
    info = c.info("commandstats")
    return sum(int(v["calls"]) for k, v in info.items()
               if not k.startswith(("cmdstat_info", "cmdstat_config")))


@pytest.mark.redis
def test_a_steady_stream_of_identical_requests_costs_no_redis_calls(redis_server: RedisServer) -> None:
    store = RedisEntityStore(redis_server.url, key_prefix="t:")
    meta = {"tier": "free", "region": "eu"}
    store.observe("user", "u1", meta)
    store.observe("group", "g1", {"monthly_credits": 100})
    store.link("u1", "g1")
    c = redis_server.client()
    c.ping()
    c.config_resetstat()
    for _ in range(200):
        store.observe("user", "u1", meta)
        store.observe("group", "g1", {"monthly_credits": 100})
        store.link("u1", "g1")
    assert _calls(c) == 0
    store.observe("user", "u1", {"tier": "pro"})  # a change: one MULTI/EXEC round trip
    assert c.info("commandstats")["cmdstat_hset"]["calls"] == 1
    store.close()
    c.close()


@pytest.mark.redis
def test_merges_from_two_replicas_keep_each_others_keys(redis_url: str, redis_prefix: str) -> None:
    a = RedisEntityStore(redis_url, key_prefix=redis_prefix, cache_ttl=60)
    b = RedisEntityStore(redis_url, key_prefix=redis_prefix, cache_ttl=60)
    a.observe("user", "u1", {})  # both caches now hold the empty view
    b.observe("user", "u1", {})
    a.observe("user", "u1", {"tier": "pro"})
    b.observe("user", "u1", {"region": "eu"})
    view = a.get("user", "u1")
    assert view is not None and dict(view.metadata) == {"tier": "pro", "region": "eu"}
    a.close()
    b.close()


@pytest.mark.redis
def test_cache_expires_and_sees_other_replicas(redis_url: str, redis_prefix: str) -> None:
    now = [0.0]
    a = RedisEntityStore(redis_url, key_prefix=redis_prefix, clock=lambda: now[0], cache_ttl=5)
    b = RedisEntityStore(redis_url, key_prefix=redis_prefix)
    a.observe("user", "u1", {"tier": "free"})
    b.put("user", "u1", {"tier": "pro"})
    assert a.observe("user", "u1", None) == {"tier": "free"}  # cached
    now[0] += 6
    assert a.observe("user", "u1", None) == {"tier": "pro"}
    a.close()
    b.close()


@pytest.mark.redis
@pytest.mark.timeout(20)
def test_redis_entity_store_faults_are_store_unavailable(redis_server: RedisServer) -> None:
    store = open_entity_store(redis_server.url, key_prefix="t:")
    store.observe("user", "u1", {"a": 1})
    redis_server.kill()
    with pytest.raises(StoreUnavailable):
        store.observe("user", "u2", {"a": 1})
    with pytest.raises(StoreUnavailable):
        store.get("user", "u1")
    redis_server.start()
    assert store.observe("user", "u2", {"a": 2}) == {"a": 2}
    store.close()


def test_open_entity_store_memory() -> None:
    assert isinstance(open_entity_store("memory"), MemoryEntityStore)
    with pytest.raises(ValueError, match="not a store"):
        open_entity_store("file:///tmp/x")
