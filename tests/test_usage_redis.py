"""What is particular to Redis usage: the Lua snippet inside another script, key layout,
stream IDs when clocks disagree, and an unreachable server. Shared behaviour is in
``test_usage_contract.py``."""

from __future__ import annotations

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tollway.policy.stores.base import StoreUnavailable
from tollway.policy.stores.usage_redis import (
    REQUEST_ARGC,
    USAGE_ARGC,
    USAGE_LUA,
    RedisUsage,
    request_args,
    usage_args,
)
from tollway.policy.usage import ActivityQuery, RequestSeen, Retention, UsageEvent, UsageQuery

pytestmark = pytest.mark.redis

T0 = 1_800_000_000.0

# The shape of a report script: an idempotency check, then usage in the same call.
_HOST_SCRIPT = USAGE_LUA + """
-- KEYS[1] the request_id key; ARGV[1] its TTL; ARGV[2..] the usage values
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', ARGV[1]) then
  return 0
end
usage_apply(ARGV, 2)
return 1
"""


@pytest.fixture
def client(redis_url: str) -> redis.Redis:
    return redis.Redis.from_url(redis_url)


def ev(user: str, t: float = T0, **kw: object) -> UsageEvent:
    return UsageEvent(time=t, request_id=f"r-{user}-{t}", user_id=user, **kw)  # type: ignore[arg-type]


def test_snippet_runs_inside_a_report_script_once_per_request_id(
    client: redis.Redis, redis_prefix: str
) -> None:
    script = client.register_script(_HOST_SCRIPT)
    reader = RedisUsage(client, key_prefix=redis_prefix)
    event = UsageEvent(time=T0, request_id="req-1", user_id="alice", group_id="acme",
                       model="gpt", input_tokens=10, cost_usd=0.5)
    args = usage_args(redis_prefix, event, Retention())
    assert len(args) == USAGE_ARGC
    key = redis_prefix + "report:req-1"
    assert script(keys=[key], args=["60", *args]) == 1
    assert script(keys=[key], args=["60", *args]) == 0  # the duplicate changes nothing
    detail = reader.get("user", "alice")
    assert detail is not None
    assert (detail.usage.request_count, detail.usage.total_cost) == (1, 0.5)
    assert len(detail.recent_reports) == 1
    assert len(list(reader.activity(ActivityQuery()))) == 1
    group = reader.get("group", "acme")
    assert group is not None and group.usage.request_count == 1


def test_key_layout(client: redis.Redis, redis_prefix: str) -> None:
    usage = RedisUsage(client, key_prefix=redis_prefix)
    usage.apply(ev("alice", model="gpt", input_tokens=2, output_tokens=3, cost_usd=1.5,
                   duration_seconds=0.25))
    keys = sorted(k.decode() for k in client.scan_iter(match=redis_prefix + "*"))
    assert keys == sorted(
        [redis_prefix + "usage:user:alice", redis_prefix + "usage:recent:user:alice",
         redis_prefix + "usage:activity"]
        + [redis_prefix + f"usage:users:by:{f}" for f in
           ("last_seen", "first_seen", "request_count", "total_cost", "total_tokens")]
    )
    fields = {k.decode(): int(v) for k, v in client.hgetall(redis_prefix + "usage:user:alice").items()}
    assert fields == {
        "request_count": 1, "first_seen": int(T0 * 1e6), "last_seen": int(T0 * 1e6),
        "input_tokens": 2, "output_tokens": 3, "total_tokens": 5, "cost": 1_500_000_000,
        "duration": 250_000, "m:gpt:n": 1, "m:gpt:tokens": 5, "m:gpt:cost": 1_500_000_000,
    }
    assert client.zscore(redis_prefix + "usage:users:by:total_cost", "alice") == 1.5e9
    assert client.type(redis_prefix + "usage:activity") == b"stream"


def test_a_counted_request_writes_the_request_side_of_the_same_keys(
    client: redis.Redis, redis_prefix: str
) -> None:
    usage = RedisUsage(client, key_prefix=redis_prefix)
    seen = RequestSeen(T0, "alice", "", "gpt")
    assert len(request_args(redis_prefix, seen)) == REQUEST_ARGC
    usage.count_request(seen)
    keys = sorted(k.decode() for k in client.scan_iter(match=redis_prefix + "*"))
    assert keys == sorted(  # no recent list, no activity log: those are the reports'
        [redis_prefix + "usage:user:alice"]
        + [redis_prefix + f"usage:users:by:{f}" for f in
           ("last_seen", "first_seen", "request_count", "total_cost", "total_tokens")]
    )
    usage.apply(ev("alice", T0 + 1, model="gpt", input_tokens=2, cost_usd=1.5,
                   counts_request=False))
    fields = {k.decode(): int(v) for k, v in client.hgetall(redis_prefix + "usage:user:alice").items()}
    assert fields == {
        "request_count": 1, "first_seen": int(T0 * 1e6), "last_seen": int((T0 + 1) * 1e6),
        "input_tokens": 2, "output_tokens": 0, "total_tokens": 2, "cost": 1_500_000_000,
        "duration": 0, "m:gpt:n": 1, "m:gpt:tokens": 2, "m:gpt:cost": 1_500_000_000,
    }
    assert client.zscore(redis_prefix + "usage:users:by:request_count", "alice") == 1


def test_an_event_older_than_the_newest_is_kept_in_arrival_order(
    client: redis.Redis, redis_prefix: str
) -> None:
    usage = RedisUsage(client, key_prefix=redis_prefix)
    usage.apply(ev("a", T0 + 10))
    usage.apply(ev("b", T0 + 5))  # a replica whose clock is behind
    usage.apply(ev("c", T0 + 11))
    events = list(usage.activity(ActivityQuery()))
    assert [e.user_id for e in events] == ["c", "b", "a"]
    assert [e.time - T0 for e in events] == [11, 5, 10]  # each keeps its own time
    # filters use the event's own time, not its position
    assert [e.user_id for e in usage.activity(ActivityQuery(start=T0 + 4, end=T0 + 6))] == ["b"]
    detail = usage.get("user", "b")
    assert detail is not None and detail.usage.first_seen == T0 + 5


def test_age_trim_still_works_after_every_entry_was_trimmed(
    client: redis.Redis, redis_prefix: str
) -> None:
    usage = RedisUsage(client, key_prefix=redis_prefix, retention=Retention(max_age_seconds=10))
    usage.apply(ev("a", T0))
    usage.apply(ev("b", T0 + 100))  # trims "a"
    usage.apply(ev("c", T0 + 50))  # behind the last ID: filed after it
    assert [e.user_id for e in usage.activity(ActivityQuery())] == ["c", "b"]


def test_unreachable_server_raises_store_unavailable(redis_server: object) -> None:
    server = redis_server
    client = server.client(  # type: ignore[attr-defined]
        socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    usage = RedisUsage(client, key_prefix="t:")
    usage.apply(ev("a"))
    server.kill()  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable):
        usage.apply(ev("b"))
    with pytest.raises(StoreUnavailable):
        usage.count_request(RequestSeen(T0, "b"))
    with pytest.raises(StoreUnavailable):
        usage.get("user", "a")
    with pytest.raises(StoreUnavailable):
        usage.list(UsageQuery())
    with pytest.raises(StoreUnavailable):
        list(usage.activity(ActivityQuery()))
    server.start()  # type: ignore[attr-defined]
    usage.apply(ev("c"))  # the script is loaded again after the restart (NOSCRIPT)
    assert usage.get("user", "c") is not None
