"""``tollway usage`` against a real gRPC server on a real socket."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
from server_harness import ServerThread

from tollway import Engine
from tollway.policy.stores.usage_memory import MemoryUsage
from tollway.policy.usage import ActivityQuery, UsageEvent, UsageQuery
from tollway.server import usage_convert
from tollway.server.cli import main
from tollway.v1 import tollway_pb2 as pb

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def usage_engine(usage: MemoryUsage) -> Engine:
    """An engine whose usage calls read ``usage`` (the shape the engine exposes)."""
    engine = Engine.from_text("default allow\n", store="memory")
    engine.get_usage = usage.get  # type: ignore[attr-defined]
    engine.list_usage = lambda query=None, **kw: usage.list(  # type: ignore[attr-defined]
        UsageQuery.parse(query, **kw)
    )
    engine.activity = lambda query=None, **kw: usage.activity(  # type: ignore[attr-defined]
        ActivityQuery.parse(query, **kw)
    )
    return engine


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    usage = MemoryUsage()
    for i in range(40):
        usage.apply(UsageEvent(
            time=T0 + i, request_id=f"req-{i}", user_id=f"user-{i % 8}",
            group_id="acme" if i % 2 else "initech",
            model="openai/gpt-4.1" if i % 3 else "anthropic/claude-sonnet-4.6",
            input_tokens=1000 * i, output_tokens=100 * i, cost_usd=0.5 * (i % 8),
            duration_seconds=1.25,
        ))
    engine = usage_engine(usage)
    server = ServerThread(engine)
    try:
        yield server.start()
    finally:
        server.stop()
        engine.close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_lists_top_users_by_cost(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--limit", "3")
    assert (code, err) == (0, "")
    lines = [line for line in out.splitlines() if "user-" in line]
    assert [line.split()[1] for line in lines] == ["user-7", "user-6", "user-5"]
    assert "$17.5000" in lines[0]  # 5 reports x 3.5 USD
    assert "users 1-3 of 8, sorted by -total_cost" in out
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
     (["--limit", "1000"], "--limit"), (["--start", "yesterday"], "--start")],
)
def test_bad_flags_exit_2_before_any_call(
    capsys: pytest.CaptureFixture[str], argv: list[str], flag: str
) -> None:
    code, out, err = run(capsys, "--server", "127.0.0.1:1", *argv)
    assert (code, out) == (2, "")
    assert err.startswith(f"tollway usage: {flag}")


def test_convert_round_trips() -> None:
    usage = MemoryUsage()
    usage.apply(UsageEvent(time=T0 + 0.25, request_id="r", user_id="u", model="m",
                           input_tokens=3, cost_usd=0.125, duration_seconds=2))
    detail = usage.get("user", "u")
    assert detail is not None
    assert usage_convert.detail_from_proto(usage_convert.detail_to_proto(detail)) == detail
    query = UsageQuery.parse(limit=1, search="u", start=T0)
    page = usage.list(query)
    msg = usage_convert.page_to_proto(page)
    assert usage_convert.page_from_proto(msg, query) == page
    request = pb.ListUsageRequest(kind="users", search="u", limit=1)
    request.start.FromSeconds(int(T0))
    assert usage_convert.list_request(request) == query
    assert usage_convert.list_request(pb.ListUsageRequest()).limit == 25
    with pytest.raises(ValueError, match=r"^limit"):
        usage_convert.list_request(pb.ListUsageRequest(limit=1000))
    with pytest.raises(ValueError, match=r"^user_id"):
        usage_convert.get_request(pb.GetUsageRequest())
    assert usage_convert.get_request(pb.GetUsageRequest(group_id="g")) == ("group", "g")
    two = UsageQuery.parse(limit=1)
    usage.apply(UsageEvent(time=T0, request_id="r2", user_id="v"))
    first = usage_convert.page_to_proto(usage.list(two))
    assert (first.next, first.HasField("previous")) == (1, False)
    second = usage_convert.page_to_proto(usage.list(two.with_offset(1)))
    assert (second.HasField("next"), second.previous) == (False, 0)
    assert usage_convert.page_from_proto(second, two.with_offset(1)).previous == 0
