"""``tollway usage`` against a real gRPC server on a real socket."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from server_harness import ServerThread

from tollway import Engine
from tollway.policy.usage import UsageEvent
from tollway.policy.usage_query import SpikeQuery, UsageQuery
from tollway.server import usage_convert
from tollway.server.cli import main
from tollway.v1 import tollway_pb2 as pb

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    e = Engine.from_text("default allow\n", store="memory")
    assert e.usage_db is not None
    e.usage_db.write([
        UsageEvent(
            time=T0 + i, request_id=f"req-{i}", user_id=f"user-{i % 8}",
            group_id="acme" if i % 2 else "initech",
            model="openai/gpt-4.1" if i % 3 else "anthropic/claude-sonnet-4.6",
            input_tokens=1000 * i, output_tokens=100 * i, cost_usd=0.5 * (i % 8),
            duration_seconds=1.25,
        )
        for i in range(40)
    ])
    now = time.time()
    e.usage_db.write([  # a spike now: 20 USD where the week before averaged 0.1 per hour
        UsageEvent(time=now - 2 * 86400, request_id="base", user_id="user-1", cost_usd=16.8),
        UsageEvent(time=now, request_id="now", user_id="user-1", cost_usd=20.0),
        UsageEvent(time=now, request_id="new", user_id="newcomer", cost_usd=3.0),
    ])
    yield e
    e.close()


@pytest.fixture(scope="module")
def address(engine: Engine) -> Iterator[str]:
    server = ServerThread(engine)
    try:
        yield server.start()
    finally:
        server.stop()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_lists_top_users_by_cost(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--limit", "3")
    assert (code, err) == (0, "")
    lines = [line for line in out.splitlines() if "user-" in line]
    assert [line.split()[1] for line in lines] == ["user-1", "user-7", "user-6"]
    assert "$39.3000" in lines[0]  # 5 reports x 0.5 USD + 16.8 + 20
    assert "$17.5000" in lines[1]  # 5 reports x 3.5 USD
    assert "users 1-3 of 9, sorted by -total_cost" in out
    assert "Last seen" in out


def test_sort_search_and_groups(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--server", address, "--sort", "last_seen", "--search", "USER-1")
    assert code == 0
    assert [line.split()[1] for line in out.splitlines() if "user-" in line] == ["user-1"]
    code, out, _ = run(capsys, "--server", address, "--groups")
    assert code == 0
    assert "acme" in out and "initech" in out and "Group" in out
    code, out, _ = run(capsys, "--server", address, "--search", "zzz")
    assert (code, out.strip()) == (0, "no users match")


def test_one_users_detail(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--user", "user-3")
    assert (code, err) == (0, "")
    assert "user user-3" in out
    assert "Cost by model" in out and "openai/gpt-4.1" in out
    assert "Latest 5 reports" in out
    assert "req-35" in out and "req-3" in out
    code, out, _ = run(capsys, "--server", address, "--group", "acme")
    assert code == 0 and "group acme" in out


def test_unknown_user_is_one_line_and_exit_1(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--server", address, "--user", "ghost")
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [err.strip()]
    assert "ghost" in err


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_unreachable_server_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    addr = f"127.0.0.1:{_free_port()}"
    code, out, err = run(capsys, "--server", addr)
    assert (code, out) == (1, "")
    assert err == f"tollway usage: cannot reach the tollway server at {addr}\n"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["--sort", "cost"], "--sort"), (["--limit", "0"], "--limit"),
     (["--limit", "1000"], "--limit"), (["--user", "a", "--group", "b"], "--user")],
)
def test_bad_flags_exit_2_before_any_call(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    code, out, err = run(capsys, "--server", "127.0.0.1:1", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"tollway usage: {flag}")


def test_spikes(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--spikes")
    assert (code, err) == (0, "")
    rows = [line.split() for line in out.splitlines() if "user-" in line or "newcomer" in line]
    assert [(r[0], r[-1]) for r in rows] == [("newcomer", "new"), ("user-1", "200.0x")]
    assert "2 users spiking on cost in the last 1h" in out
    code, out, _ = run(capsys, "--server", address, "--spikes", "--min", "5")
    assert [line.split()[0] for line in out.splitlines() if "user-" in line] == ["user-1"]
    code, out, _ = run(capsys, "--server", address, "--spikes", "--groups")
    assert (code, out.strip().split(" (")[0]) == (0, "no groups spiking")
    code, _, err = run(capsys, "--server", address, "--spikes", "--window", "5m")
    assert code == 2 and err.startswith("tollway usage: --window")
    code, _, err = run(capsys, "--server", address, "--spikes", "--user", "a")
    assert code == 2 and "--spikes" in err


def test_convert_round_trips(engine: Engine) -> None:
    detail = engine.get_usage("user", "user-3")
    assert detail is not None
    assert usage_convert.detail_from_proto(usage_convert.detail_to_proto(detail)) == detail
    for query in (UsageQuery.parse(limit=1, search="user", start=T0),
                  UsageQuery.parse(limit=3, sort="last_seen")):
        page = engine.list_usage(query)
        msg = usage_convert.page_to_proto(page)
        assert usage_convert.page_from_proto(msg, query) == page
    request = pb.ListUsageRequest(kind="users", search="u", limit=1)
    request.start.FromSeconds(int(T0))
    assert usage_convert.list_request(request) == UsageQuery.parse(limit=1, search="u", start=T0)
    assert usage_convert.list_request(pb.ListUsageRequest()).limit == 25
    with pytest.raises(ValueError, match=r"^limit"):
        usage_convert.list_request(pb.ListUsageRequest(limit=1000))
    with pytest.raises(ValueError, match=r"^user_id"):
        usage_convert.subject(pb.GetUsageRequest())
    assert usage_convert.subject(pb.GetUsageRequest(group_id="g")) == ("group", "g")
    assert usage_convert.subject(pb.UsageSeriesRequest(user_id="u")) == ("user", "u")
    two = UsageQuery.parse(limit=1)
    first = usage_convert.page_to_proto(engine.list_usage(two))
    assert (first.next, first.HasField("previous"), bool(first.next_cursor)) == (1, False, True)
    beyond = usage_convert.page_to_proto(engine.list_usage(two.with_offset(50)))
    assert (beyond.HasField("next"), beyond.previous) == (False, 8)
    by_cursor = usage_convert.list_request(pb.ListUsageRequest(limit=1, cursor=first.next_cursor))
    assert by_cursor.cursor is not None
    assert engine.list_usage(by_cursor).results == engine.list_usage(two.with_offset(1)).results
    spikes = engine.list_spikes(SpikeQuery.parse())
    assert usage_convert.spikes_from_proto(usage_convert.spikes_to_proto(spikes), "user") == spikes
    series_request = pb.UsageSeriesRequest(user_id="user-1", step="1d", metric="requests")
    series = engine.usage_series("user", "user-1", usage_convert.series_request(series_request))
    assert series is not None
    out = usage_convert.series_to_proto(series)
    assert (out.user_id, out.step, len(out.points)) == ("user-1", "1d", 24)
    assert sum(p.value for p in out.points) == 2  # the last 24 days: base and now
