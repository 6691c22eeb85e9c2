"""The Redis scripts touch only the keys their call declares in KEYS.

Redis Cluster runs a script on the node of its declared keys and refuses keys of other
slots, so a key built inside a script is a key the cluster cannot route. ``MONITOR``
shows every command a script runs (marked ``lua``) and the ``EVALSHA`` that started it:
the keys of the first must be among the declared keys of the second.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import redis

from tollway import Engine
from tollway.policy.stores import StoreOptions

RULES = """
quota per_minute limits requests to 100 per 1m for each user
quota tokens limits tokens to 100_000 per 1d for each user
quota team limits cost to 50 per month for each group
rule everyone { enforce per_minute, tokens, team }
"""
# commands whose first argument is not a key
_KEYLESS = {"time", "ping"}


def _watch(client: redis.Redis, seen: list[dict[str, object]], ready: threading.Event,
           stop: threading.Event) -> None:
    with client.monitor() as monitor:
        ready.set()
        for event in monitor.listen():
            seen.append(event)
            if stop.is_set() and "tollway-monitor-end" in str(event.get("command")):
                return


@pytest.fixture
def monitored(redis_server_factory: object) -> Iterator[tuple[str, list[dict[str, object]]]]:
    server = redis_server_factory()  # type: ignore[operator]
    client = server.client()
    seen: list[dict[str, object]] = []
    ready, stop = threading.Event(), threading.Event()
    thread = threading.Thread(target=_watch, args=(client, seen, ready, stop), daemon=True)
    thread.start()
    ready.wait(5)
    yield server.url, seen
    stop.set()
    marker = server.client()
    marker.execute_command("CLIENT", "SETNAME", "tollway-monitor-end")
    marker.close()
    thread.join(timeout=5)
    client.close()


def _scripts(seen: list[dict[str, object]]) -> list[tuple[set[str], set[str]]]:
    """(declared keys, keys its commands touched) of each script call MONITOR showed."""
    out: list[tuple[set[str], set[str]]] = []
    for event in seen:
        parts = str(event.get("command", "")).split(" ")
        if not parts or not parts[0]:
            continue
        name = parts[0].lower()
        if name in ("evalsha", "eval") and event.get("client_type") != "lua":
            numkeys = int(parts[2])
            out.append((set(parts[3:3 + numkeys]), set()))
        elif event.get("client_type") == "lua" and out and name not in _KEYLESS:
            out[-1][1].add(parts[1])
    return out


def test_decide_and_report_scripts_touch_only_declared_keys(
    monitored: tuple[str, list[dict[str, object]]],
) -> None:
    url, seen = monitored
    # MONITOR slows Redis down: a generous budget per call
    engine = Engine.from_text(RULES, store=url, key_prefix="keys:",
                              store_options=StoreOptions(timeout=5.0))
    try:
        user, group = {"id": "alice"}, {"id": "acme"}
        d = engine.decide({"user": user, "group": group, "model": "m",
                           "estimate": {"output_tokens": 50, "cost_usd": 0.01}})
        assert d.allowed
        engine.report({"request_id": "r1", "decision_id": d.decision_id, "user": user,
                       "group": group, "model": "m", "output_tokens": 40, "cost_usd": 0.02})
        engine.report({"request_id": "r2", "user": user, "model": "m", "output_tokens": 7})
        time.sleep(0.3)  # MONITOR's lines arrive on their own connection
    finally:
        engine.close()
    # an EVALSHA that Redis answered NOSCRIPT ran nothing (the script is loaded and sent again)
    scripts = [(declared, touched) for declared, touched in _scripts(seen) if touched]
    assert len(scripts) == 3  # the decision and two reports (settling, then adding)
    for declared, touched in scripts:
        assert touched <= declared, f"undeclared: {sorted(touched - declared)}"
    streams = {k for declared, _ in scripts for k in declared if k.endswith("usage:events")}
    assert streams == {"keys:usage:events"}  # the event stream is declared, not built


def test_a_reservation_the_report_does_not_declare_is_settled_by_a_second_call(
    monitored: tuple[str, list[dict[str, object]]],
) -> None:
    """The rules changed between the decision and its report: the report's own counters
    are others, so the reserved counter comes back and is settled with its key declared."""
    url, seen = monitored
    engine = Engine.from_text(RULES, store=url, key_prefix="moved:",
                              store_options=StoreOptions(timeout=5.0))
    try:
        user = {"id": "bob"}
        d = engine.decide({"user": user, "model": "m", "estimate": {"output_tokens": 500}})
        assert [q.used for q in d.quotas if q.name == "tokens"] == [500]
        engine.swap(Engine.from_text(
            "quota other limits tokens to 9 per 1h for each user\n"
            "rule r { enforce other }\n", usage_db=None).ruleset)
        ack = engine.report({"request_id": "r1", "decision_id": d.decision_id, "user": user,
                             "model": "m", "output_tokens": 20})
        assert ack.outcome == "settled"
        engine.swap(Engine.from_text(RULES, usage_db=None).ruleset)
        later = engine.explain({"user": user, "model": "m"})
        # the reservation of 500 became the 20 really used
        assert [q.used for q in later.decision.quotas if q.name == "tokens"] == [20]
        time.sleep(0.3)
    finally:
        engine.close()
    scripts = [(declared, touched) for declared, touched in _scripts(seen) if touched]
    # the second call, settle.lua: the reserved counters and nothing else
    assert {"moved:q:tokens:u=bob", "moved:q:per_minute:u=bob"} in [d for d, _ in scripts]
    for declared, touched in scripts:
        assert touched <= declared, f"undeclared: {sorted(touched - declared)}"


def test_balance_scripts_touch_only_declared_keys(
    monitored: tuple[str, list[dict[str, object]]],
) -> None:
    url, seen = monitored
    rules = RULES.replace("rule everyone { enforce per_minute, tokens, team }", (
        "balance credits of cost for each group\n"
        "balance wallet of tokens for each user\n"
        "rule everyone { enforce per_minute, tokens, team then credits, wallet }"))
    engine = Engine.from_text(rules, store=url, key_prefix="bal:",
                              store_options=StoreOptions(timeout=5.0))
    try:
        user, group = {"id": "alice"}, {"id": "acme"}
        engine.credit("group", "acme", "credits", 5, idempotency_key="k")
        engine.credit("user", "alice", "wallet", 500, idempotency_key="k")
        d = engine.decide({"user": user, "group": group, "model": "m",
                           "estimate": {"output_tokens": 50, "cost_usd": 54}})
        assert d.allowed, d.message  # 50 from the plan, 4 from the credits
        engine.report({"request_id": "r1", "decision_id": d.decision_id, "user": user,
                       "group": group, "model": "m", "output_tokens": 40, "cost_usd": 55})
        engine.report({"request_id": "r2", "user": user, "model": "m", "output_tokens": 7})
        assert [b.available for b in engine.get_balance("group", "acme")] == [0]
        time.sleep(0.3)
    finally:
        engine.close()
    scripts = [(declared, touched) for declared, touched in _scripts(seen) if touched]
    assert len(scripts) >= 6  # loading, two credits, the decision, two reports, reads
    for declared, touched in scripts:
        assert touched <= declared, f"undeclared: {sorted(touched - declared)}"
