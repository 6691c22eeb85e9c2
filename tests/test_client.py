"""``tollway.client`` against a real server over real sockets: answers, failures, retries.

The server is the real gRPC service over the real engine, in process (a thread with its
own loop) or as a ``tollway serve`` process where a test must stop or kill it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from server_harness import ServerThread, tollway_serve, write_rules

from tollway.client import AsyncClient, Client, SidecarUnavailable
from tollway.policy.engine import Engine
from tollway.policy.model import Decision, Explanation, QuotaStatus, ReportAck
from tollway.policy.usage import UsageDetail
from tollway.policy.usage_query import UsagePage

# A generous deadline for calls that must succeed on a busy 2-core machine; the tests of
# deadlines set their own.
PATIENT = 5.0


@pytest.fixture(scope="module")
def rules(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_rules(tmp_path_factory.mktemp("rules"))


@pytest.fixture(scope="module")
def served(rules: Path) -> Iterator[tuple[str, Engine]]:
    engine = Engine.from_path(rules)
    server = ServerThread(engine)
    address = server.start()
    yield address, engine
    server.stop()
    engine.close()


@pytest.fixture()
def client(served: tuple[str, Engine]) -> Iterator[Client]:
    with Client(served[0], timeout=PATIENT) as c:
        yield c


def _uid() -> str:
    return "u-" + uuid.uuid4().hex[:12]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _comparable(d: Decision) -> Decision:
    """What two engines with the same rules must agree on: not the random decision id,
    nor the instant a sliding window frees (it moves with the clock)."""
    quotas = tuple(dataclasses.replace(q, resets_at=None, retry_after=0.0) for q in d.quotas)
    message = re.sub(r"retry in \d+s", "retry in Ns", d.message)
    return dataclasses.replace(d, decision_id="", quotas=quotas, message=message)


# ------------------------------------------------------------------ answers


def test_answers_are_the_engines_dataclasses(client: Client, rules: Path) -> None:
    """The same requests through an embedded engine and through the sidecar: equal answers."""
    embedded = Engine.from_path(rules)
    user = {"id": _uid(), "metadata": {"tier": "free", "categories": ["vip"]}}
    requests: list[dict[str, Any]] = [
        {"user": user, "model": "small", "estimate": {"output_tokens": 100}},
        {"user": user, "group": {"id": "acme", "metadata": {"credits": 5}}, "model": "other"},
        {"user": user, "model": "small"},
        {"user": user, "model": "small"},  # 4th: the per_user quota of 3 is exceeded
        {"user": {"id": _uid(), "metadata": {"status": "blocked"}}, "model": "m"},
        {"model": "anonymous"},
    ]
    for request in requests:
        here = embedded.decide(request)
        there = client.decide(request)
        assert type(there) is Decision and all(type(q) is QuotaStatus for q in there.quotas)
        assert _comparable(there) == _comparable(here)
        if not here.allowed and here.reason == "QUOTA_EXCEEDED":
            exceeded = [q for q in there.quotas if q.exceeded]
            assert exceeded and all(q.retry_after > 0 for q in exceeded)
    seen = [client.decide(r).reason for r in requests[3:]]
    assert seen == ["QUOTA_EXCEEDED", "DENIED_BY_RULE", "ALLOWED"]
    embedded.close()


def test_explain_matches_the_engine(client: Client, served: tuple[str, Engine]) -> None:
    request = {"user": {"id": _uid(), "metadata": {"tier": "free"}}, "model": "small"}
    there = client.explain(request)
    here = served[1].explain(request)
    assert type(there) is Explanation
    assert _comparable(there.decision) == _comparable(here.decision)
    assert (there.candidates, there.total_rules) == (here.candidates, here.total_rules)
    assert [t.rule for t in there.trace] == [t.rule for t in here.trace]
    for a, b in zip(there.trace, here.trace, strict=True):
        assert [(t.text, t.held, dict(t.values)) for t in a.tests] == [
            (t.text, t.held, dict(t.values)) for t in b.tests
        ]


def test_keyword_fields_a_mapping_or_both(client: Client) -> None:
    uid = _uid()
    by_keywords = client.decide(user={"id": uid, "metadata": {"tier": "free"}}, model="m")
    by_mapping = client.decide({"user": {"id": uid}, "model": "m"})
    merged = client.decide({"user": {"id": uid}, "model": "x"}, model="m", dry_run=True)
    used = [next(q.used for q in d.quotas if q.name == "per_user") for d in (by_keywords, by_mapping, merged)]
    assert used == [1, 2, 2]  # the dry run consumed nothing
    assert merged.model == "m"
    assert client.decide(user=uid, model="m").quotas  # a plain id is a user


def test_report_settles_and_usage_reads_back(client: Client, served: tuple[str, Engine]) -> None:
    uid = _uid()
    d = client.decide(user={"id": uid, "metadata": {"tier": "free"}}, model="m",
                      group={"id": "team-x", "metadata": {"credits": 10}},
                      estimate={"output_tokens": 400})
    assert d.allowed and d.decision_id
    ack = client.report(
        request_id="rq-" + uid, decision_id=d.decision_id, user=uid, group="team-x", model="m",
        input_tokens=120, output_tokens=30, cost_usd=0.0125, duration_seconds=1.5,
    )
    assert ack == ReportAck("rq-" + uid, "settled")
    again = client.report({"request_id": "rq-" + uid, "user": uid, "input_tokens": 999})
    assert again.duplicate and again.outcome == "duplicate"
    assert served[1].flush_usage()  # usage is written a moment after the report
    detail = client.get_usage("user", uid)
    assert isinstance(detail, UsageDetail)
    assert (detail.usage.request_count, detail.usage.total_tokens) == (1, 150)
    assert detail.usage.total_cost == pytest.approx(0.0125)
    assert detail.recent_reports[0].request_id == "rq-" + uid
    page = client.list_usage(kind="users", search=uid)
    assert isinstance(page, UsagePage) and [r.id for r in page.results] == [uid]
    assert page.query.search == uid


def test_entities(client: Client) -> None:
    uid = _uid()
    view = client.upsert_entity("user", uid, {"tier": "pro", "n": 3}, groups=["g1", "g2"])
    assert (view.kind, view.id, dict(view.metadata), view.links) == (
        "user", uid, {"tier": "pro", "n": 3}, ("g1", "g2"),
    )
    assert client.get_entity("user", uid) == view
    assert client.get_entity("user", _uid()) is None
    assert client.get_usage("group", "never-reported") is None


@pytest.mark.parametrize(
    "request_",
    [
        {"user": {"id": ""}},
        {"user": {"id": "x" * 257}},
        {"user": {"id": "u", "metadata": {"t": float("nan")}}},
        {"user": {"id": "u", "metadata": {"when": object()}}},
        {"estimate": {"output_tokens": -1}},
        {"estimate": {"cost_usd": float("inf")}},
        {"attributes": {"k": 3}},
        {"model": 12},
        {"dry_run": "yes"},
        {"usr": {"id": "u"}},
    ],
)
def test_bad_requests_raise_what_the_engine_raises(
    client: Client, served: tuple[str, Engine], request_: dict[str, Any]
) -> None:
    with pytest.raises(ValueError) as embedded:
        served[1].decide(request_)
    with pytest.raises(ValueError) as remote:
        client.decide(request_)
    assert str(remote.value) == str(embedded.value)


def test_the_servers_own_checks_come_back_as_value_errors(
    client: Client, served: tuple[str, Engine]
) -> None:
    with pytest.raises(ValueError) as embedded:
        served[1].upsert_entity("group", "g", groups=["x"])
    with pytest.raises(ValueError) as remote:
        client.upsert_entity("group", "g", groups=["x"])
    assert str(remote.value) == str(embedded.value) == "groups: only a user can be linked to groups"
    with pytest.raises(ValueError, match="report: unknown field"):
        client.report(request_id="r", tokens=3)  # type: ignore[call-arg]
    with pytest.raises(ValueError, match=r"^request_id: must not be empty"):
        client.report(user="u")
    with pytest.raises(ValueError, match=r"^sort: "):
        client.list_usage(sort="cost")


def test_unix_socket_targets(rules: Path) -> None:
    engine = Engine.from_path(rules)
    server = ServerThread(engine)
    with tempfile.TemporaryDirectory(prefix="tw") as short:
        path = f"{short}/tollway.sock"
        server.start(f"unix:{path}")
        try:
            for target in (path, f"unix:{path}", f"unix://{path}"):
                with Client(target, timeout=PATIENT) as c:
                    assert c.target.startswith("unix:")
                    assert c.decide(model="m").reason == "ALLOWED"
        finally:
            server.stop()
            engine.close()


def test_ready_waits_for_a_serving_sidecar(client: Client) -> None:
    assert client.ready(timeout=PATIENT) is True
    with Client(f"127.0.0.1:{_free_port()}") as nobody:
        assert nobody.ready(timeout=0.2) is False


# ------------------------------------------------------------------ failures


def _fallbacks(code: str, allowed: str) -> float:
    value = REGISTRY.get_sample_value(
        "tollway_client_fallback_decisions_total", {"code": code, "allowed": allowed}
    )
    return value or 0.0


@pytest.mark.parametrize("on_error", ["allow", "deny"])
def test_an_unreachable_sidecar_answers_by_on_error(on_error: Any) -> None:
    before = _fallbacks("UNAVAILABLE", "true" if on_error == "allow" else "false")
    with Client(f"127.0.0.1:{_free_port()}", on_error=on_error) as c:
        d = c.decide(user="u1", model="gpt-x")
        assert d.reason == "STORE_UNAVAILABLE"
        assert d.allowed is (on_error == "allow")
        assert d.model == "gpt-x" and d.decision_id == "" and "UNAVAILABLE" in d.message
        c.decide(model="again")
        assert c.stats.fallback_decisions == 2
    after = _fallbacks("UNAVAILABLE", "true" if on_error == "allow" else "false")
    assert after - before == 2


def test_on_error_raise_and_admin_calls_raise() -> None:
    with Client(f"127.0.0.1:{_free_port()}", on_error="raise") as c:
        with pytest.raises(SidecarUnavailable) as err:
            c.decide(model="m")
        assert err.value.code == "UNAVAILABLE" and err.value.method == "Decide"
        assert c.stats.fallback_decisions == 0
        for call in (lambda: c.explain(model="m"), lambda: c.get_usage("user", "u"),
                     lambda: c.list_usage(), lambda: c.upsert_entity("user", "u")):
            with pytest.raises(SidecarUnavailable):
                call()


def test_a_report_the_sidecar_misses_is_delivered_once_it_is_back(rules: Path) -> None:
    port = _free_port()
    with Client(f"127.0.0.1:{port}") as c:
        ack = c.report(request_id="late-1", user="u-late", model="m", input_tokens=7, cost_usd=0.5)
        assert ack == ReportAck("late-1", "queued")
        assert c.stats.reports_queued == 1 and c.stats.reports_pending == 1
        engine = Engine.from_path(rules)
        server = ServerThread(engine)
        server.start(f"127.0.0.1:{port}")
        try:
            assert c.flush(timeout=20), c.stats
            assert c.stats.reports_delivered == 1 and c.stats.reports_pending == 0
            assert engine.flush_usage()
            detail = engine.get_usage("user", "u-late")
            assert detail is not None and detail.usage.input_tokens == 7
        finally:
            server.stop()
            engine.close()


def test_the_retry_queue_is_bounded() -> None:
    c = Client(f"127.0.0.1:{_free_port()}", report_queue=2)
    outcomes = [c.report(request_id=f"r{i}", user="u").outcome for i in range(3)]
    assert outcomes == ["queued", "queued", "dropped"]
    assert c.stats.reports_dropped == 1
    c.close(timeout=0.2)
    stats = c.stats
    assert (stats.reports_queued, stats.reports_dropped, stats.reports_pending) == (2, 3, 0)


def test_async_client_64_in_flight_and_fallback(served: tuple[str, Engine]) -> None:
    async def main() -> None:
        async with AsyncClient(served[0], timeout=PATIENT) as c:
            uid = _uid()
            decisions = await asyncio.gather(
                *(c.decide(user=f"{uid}-{i}", model="m", request_id=str(i)) for i in range(64))
            )
            assert all(type(d) is Decision and d.allowed for d in decisions)
            assert len({d.decision_id for d in decisions}) == 64
            ack = await c.report(request_id=uid, user=uid, output_tokens=5)
            assert ack.outcome == "added"
            assert served[1].flush_usage()
            detail = await c.get_usage("user", uid)
            assert detail is not None and detail.usage.output_tokens == 5
            assert await c.ready(timeout=PATIENT)
            with pytest.raises(ValueError, match=r"^user.id: must not be empty"):
                await c.decide(user="")
        down = AsyncClient(f"127.0.0.1:{_free_port()}", on_error="deny")
        d = await down.decide(model="m")
        assert (d.allowed, d.reason) == (False, "STORE_UNAVAILABLE")
        assert (await down.report(request_id="x")).outcome == "queued"
        assert down.stats.fallback_decisions == 1
        await down.close(timeout=0.1)  # gives up on the queued report
        assert (down.stats.reports_dropped, down.stats.reports_pending) == (1, 0)

    asyncio.run(main())


def test_a_late_sidecar_is_answered_by_deadline_and_reports_count_once(rules: Path) -> None:
    """A stopped (SIGSTOP) server accepts connections but answers nothing: deadlines fire."""
    with tollway_serve(rules) as served, Client(served.grpc, timeout=0.05) as c:
        assert c.ready(timeout=PATIENT)
        c.decide(user="warm", model="m")
        os.kill(served.proc.pid, signal.SIGSTOP)
        try:
            d = c.decide(user="u-stalled", model="m")
            assert (d.allowed, d.reason) == (True, "STORE_UNAVAILABLE")
            assert "DEADLINE_EXCEEDED" in d.message
            ack = c.report(request_id="stalled-1", user="u-stalled", output_tokens=11)
            assert ack.outcome == "queued"
        finally:
            os.kill(served.proc.pid, signal.SIGCONT)
        assert c.flush(timeout=20), c.stats
        with Client(served.grpc, admin_timeout=PATIENT) as admin:
            deadline = time.monotonic() + 10  # usage is written a moment after the report
            while (detail := admin.get_usage("user", "u-stalled")) is None:
                assert time.monotonic() < deadline
                time.sleep(0.02)
        # the late first attempt and the retry both arrived: counted once
        assert detail is not None and detail.usage.output_tokens == 11
        assert [e.request_id for e in detail.recent_reports].count("stalled-1") == 1


def test_reconnects_soon_after_the_sidecar_restarts(rules: Path) -> None:
    port = _free_port()
    with tollway_serve(rules, listen=f"127.0.0.1:{port}") as first, Client(
        f"127.0.0.1:{port}", timeout=PATIENT
    ) as c:
        assert c.decide(model="m").reason == "ALLOWED"
        first.proc.kill()
        first.proc.wait(timeout=10)
        for _ in range(20):  # down for a while: gRPC's own backoff would grow past a minute
            assert c.decide(model="m").reason == "STORE_UNAVAILABLE"
            time.sleep(0.1)
        with tollway_serve(rules, listen=f"127.0.0.1:{port}"):
            start = time.monotonic()
            while c.decide(model="m").reason != "ALLOWED":
                assert time.monotonic() - start < 10, "the client did not reconnect"
                time.sleep(0.05)


def test_importing_the_client_loads_no_server_runtime() -> None:
    code = (
        "import sys, tollway.client\n"
        "heavy = [m for m in sys.modules if m.split('.')[0] in ('redis', 'aiohttp', 'lark')\n"
        "         or m.startswith(('tollway.server.app', 'tollway.server.grpc_service',\n"
        "                          'tollway.policy.engine', 'tollway.policy.stores'))]\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"on_error": "ignore"}, "^on_error: "),
        ({"timeout": 0}, "^timeout: "),
        ({"timeout": float("nan")}, "^timeout: "),
        ({"admin_timeout": -1}, "^admin_timeout: "),
        ({"token": "two words"}, "^token: "),
        ({"token": ""}, "^token: "),
        ({"tls": 3}, "^tls: "),
        ({"tls": "/nonexistent/ca.pem"}, "^tls.ca: cannot read"),
        ({"report_queue": 0}, "^report_queue: "),
        ({"target": " "}, "^target: "),
    ],
)
def test_bad_settings_are_refused_up_front(kwargs: dict[str, Any], message: str) -> None:
    target = kwargs.pop("target", "127.0.0.1:1")
    with pytest.raises(ValueError, match=message):
        Client(target, **kwargs)
