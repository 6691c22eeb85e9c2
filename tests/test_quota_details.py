"""What a decision says about its quotas is what the store enforces, on both stores.

- ``resets_at`` of the first request into an empty sliding window is when that request
  stops counting: when its bucket leaves the window (at least now + window).
- A fractional effective limit (``50% of user.n`` with n = 5) is shown as enforced: 2.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import redis
from backends import Backend
from conftest import ROOMY

from tollway import Engine

RULES = """
quota hourly limits requests to 10 per 1h for each user
quota half limits requests to 50% of user.n per 1d for each user
quota pennies limits cost to 0.0000025 per 1d for each user
rule counted { when user.plan == "counted" enforce hourly }
rule halved { when user.plan == "halved" enforce half }
rule cheap { when user.plan == "cheap" enforce pennies }
"""

T0 = 1_800_000_030.5  # 2027-01-15T08:00:30.5Z: mid-bucket


@pytest.fixture
def engine_and_clock(backend: Backend) -> Iterator[tuple[Engine, Callable[[], float]]]:
    if backend.name == "memory":
        e = Engine.from_text(RULES, store="memory", clock=lambda: T0)
        yield e, lambda: T0
    else:
        client = redis.Redis.from_url(backend.store)

        def redis_now() -> float:
            sec, usec = client.time()
            return sec + usec / 1e6

        e = Engine.from_text(RULES, store=backend.store, key_prefix=backend.prefix(),
                             store_options=ROOMY)
        yield e, redis_now
        client.close()
    e.close()


def user(uid: str, **metadata: object) -> dict[str, object]:
    return {"id": uid, "metadata": metadata}


def test_the_first_request_resets_when_it_leaves_the_window(
    engine_and_clock: tuple[Engine, Callable[[], float]],
) -> None:
    engine, now = engine_and_clock
    before = now()
    d = engine.decide({"user": user("first", plan="counted"), "model": "m"})
    after = now()
    (q,) = d.quotas
    assert d.allowed and q.used == 1
    assert q.resets_at is not None
    bucket = 3600 // 60
    # the request's bucket, [floor(t/60)*60, +60), stops counting a window after its end
    assert (before // bucket + 1) * bucket + 3600 <= q.resets_at
    assert q.resets_at <= (after // bucket + 1) * bucket + 3600
    assert q.resets_at >= before + 3600  # never earlier than a window from now
    peek = engine.explain({"user": user("first"), "model": "m"}).decision.quotas[0]
    assert peek.resets_at == q.resets_at  # the same bucket, now holding the request


def test_an_empty_window_not_consumed_resets_a_window_ahead_too(
    engine_and_clock: tuple[Engine, Callable[[], float]],
) -> None:
    engine, now = engine_and_clock
    before = now()
    (q,) = engine.explain({"user": user("nobody", plan="counted"), "model": "m"}).decision.quotas
    assert q.used == 0 and q.resets_at is not None and q.resets_at >= before + 3600


def test_a_fractional_limit_shows_what_is_enforced(
    engine_and_clock: tuple[Engine, Callable[[], float]],
) -> None:
    engine, _ = engine_and_clock
    asked = {"user": user("frac", plan="halved", n=5), "model": "m"}
    seen = []
    for _ in range(3):
        d = engine.decide(asked)
        (q,) = d.quotas
        seen.append((d.allowed, q.limit, q.used, q.remaining, q.exceeded))
    assert seen == [
        (True, 2.0, 1.0, 1.0, False),
        (True, 2.0, 2.0, 0.0, False),
        (False, 2.0, 2.0, 0.0, True),
    ]
    assert "2/2 requests" in engine.decide(asked).message


def test_a_cost_limit_is_enforced_to_the_micro_dollar(
    engine_and_clock: tuple[Engine, Callable[[], float]],
) -> None:
    engine, _ = engine_and_clock
    (q,) = engine.explain({"user": user("c", plan="cheap"), "model": "m"}).decision.quotas
    assert q.limit == 0.000002  # 2.5 micro-USD rounds down to 2


@pytest.mark.parametrize(("n", "allowed", "limit"), [
    (-1e308, False, 0.0),  # scaled to -infinity: admits nothing, no overflow
    (1e308, True, float(2**53 - 1)),  # past any counter: capped where counters saturate
])
def test_an_extreme_limit_from_metadata_is_clamped(
    engine_and_clock: tuple[Engine, Callable[[], float]], n: float, allowed: bool, limit: float,
) -> None:
    engine, _ = engine_and_clock
    d = engine.decide({"user": user(f"x{n}", plan="halved", n=n), "model": "m"})
    (q,) = d.quotas
    assert (d.allowed, q.limit) == (allowed, limit)
