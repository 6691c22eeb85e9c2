"""``tollway usage`` against a real gRPC server on a real socket."""

from __future__ import annotations

import csv
import io
import json
import os
import pty
import re
import socket
import subprocess
import sys
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


def serve(events: list[UsageEvent]) -> Iterator[tuple[Engine, str]]:
    """A gRPC server over an engine whose usage database holds ``events``."""
    engine = Engine.from_text("default allow\n", store="memory")
    assert engine.usage_db is not None
    engine.usage_db.write(events)
    server = ServerThread(engine)
    try:
        yield engine, server.start()
    finally:
        server.stop()
        engine.close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[Engine, str]]:
    yield from serve([
        UsageEvent(
            time=T0 + i, request_id=f"req-{i}", user_id=f"user-{i % 8}",
            group_id="acme" if i % 2 else "initech",
            model="openai/gpt-4.1" if i % 3 else "anthropic/claude-sonnet-4.6",
            input_tokens=1000 * i, output_tokens=100 * i, cost_usd=0.5 * (i % 8),
            duration_seconds=1.25,
        )
        for i in range(40)
    ])


@pytest.fixture(scope="module")
def address(served: tuple[Engine, str]) -> str:
    return served[1]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["usage", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def rows(out: str) -> list[list[str]]:
    """Plain output: tab-separated cells, header first."""
    return [line.split("\t") for line in out.splitlines()]


def test_plain_output_when_not_a_terminal(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--limit", "3")
    assert code == 0
    table = rows(out)
    assert table[0] == ["#", "User", "Cost (USD)", "Requests", "Tokens", "Last seen (UTC)",
                        "Top model"]
    assert [r[1] for r in table[1:]] == ["user-7", "user-6", "user-5"]
    assert table[1][2] == "17.5"  # raw values: 5 reports x 3.5 USD
    assert table[1][5] == "2027-01-15T08:00:39Z"
    assert "  " not in out and "─" not in out  # no padding, no box characters
    assert err == (f"users 1-3 of 8, sorted by -total_cost\nnext page: tollway usage "
                   f"--server {address} --limit 3 --offset 3\n")


def test_the_next_page_hint_shows_the_next_page(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, first, err = run(capsys, "--server", address, "--sort", "-request_count", "--limit", "5")
    hint = err.split("next page: ", 1)[1].split()
    assert hint[:2] == ["tollway", "usage"] and "--sort=-request_count" in hint
    code, second, err = run(capsys, *hint[2:])
    assert code == 0 and "next page" not in err
    assert err.startswith("users 6-8 of 8, sorted by -request_count")
    seen = [r[1] for r in rows(first)[1:] + rows(second)[1:]]
    assert sorted(seen) == [f"user-{i}" for i in range(8)]  # every user once


def test_sort_search_and_groups(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--server", address, "--sort", "last_seen", "--search", "USER-1")
    assert code == 0
    assert [r[1] for r in rows(out)[1:]] == ["user-1"]
    code, out, _ = run(capsys, "--server", address, "--groups")
    assert code == 0
    assert rows(out)[0][1] == "Group" and {r[1] for r in rows(out)[1:]} == {"acme", "initech"}
    code, out, err = run(capsys, "--server", address, "--search", "zzz")
    assert (code, out, err) == (0, "", "no users match\n")
    code, out, err = run(capsys, "--server", address, "--offset", "100")
    assert (code, out, err) == (0, "", "no users at offset 100 (8 in all)\n")


def test_a_time_span_lists_what_was_used_in_it(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # every report is in the hour from T0; spans round out to whole hours
    code, out, err = run(capsys, "--server", address, "--start", "2027-01-15T08:00:33Z",
                         "--end", "2027-01-15T08:00:35Z", "--sort", "-total_cost")
    assert code == 0
    assert [r[1] for r in rows(out)[1:]][:2] == ["user-7", "user-6"]
    assert err.startswith("users 1-8 of 8, sorted by -total_cost, used from "
                          "2027-01-15T08:00:00Z to 2027-01-15T09:00:00Z")
    code, out, err = run(capsys, "--server", address, "--start", "2027-01-15T09:00:00Z",
                         "--end", "2027-01-16")
    assert (code, out, err) == (0, "", "no users match\n")


def test_json_and_csv(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "--server", address, "--limit", "2", "--json")
    assert code == 0
    page = json.loads(out)
    assert (page["count"], page["next"], page["previous"]) == (8, 2, None)
    assert page["results"][0]["user_id"] == "user-7"
    assert page["results"][0]["last_seen"] == "2027-01-15T08:00:39Z"
    code, out, _ = run(capsys, "--server", address, "--limit", "2", "--csv")
    records = list(csv.DictReader(io.StringIO(out)))
    assert [r["id"] for r in records] == ["user-7", "user-6"]
    assert float(records[0]["total_cost"]) == 17.5
    assert json.loads(records[0]["models"])[0]["model"] == "openai/gpt-4.1"
    code, out, _ = run(capsys, "--server", address, "--user", "user-3", "--csv")
    reports = list(csv.DictReader(io.StringIO(out)))
    assert [r["request_id"] for r in reports] == ["req-35", "req-27", "req-19", "req-11", "req-3"]
    code, out, _ = run(capsys, "--server", address, "--user", "user-3", "--json")
    assert json.loads(out)["user_id"] == "user-3"


def test_one_users_detail(address: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", address, "--user", "user-3")
    assert (code, err) == (0, "")
    assert out.startswith("user user-3\n")
    assert "requests\t5\n" in out and "Cost by model" in out and "openai/gpt-4.1\t" in out
    assert "Latest 5 reports" in out
    assert "req-35" in out and "req-3" in out
    code, out, _ = run(capsys, "--server", address, "--group", "acme")
    assert code == 0 and out.startswith("group acme\n")


def test_unknown_user_is_one_line_and_exit_1(
    address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, "--server", address, "--user", "ghost")
    assert (code, out) == (1, "")
    assert err.strip().splitlines() == [err.strip()]
    assert "ghost" in err


def test_on_an_80_column_terminal(address: str) -> None:
    """A real pseudo-terminal: a fitted table, a dim footer, nothing over 80 columns."""
    main_fd, sub_fd = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env.update(COLUMNS="80", LINES="40", TERM="xterm")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "usage", "--server", address, "--limit", "4",
         "--sort", "-last_seen"],
        stdin=sub_fd, stdout=sub_fd, stderr=sub_fd, env=env, close_fds=True,
    )
    os.close(sub_fd)
    chunks = []
    while True:
        try:
            data = os.read(main_fd, 4096)
        except OSError:  # the terminal closes when the process ends
            break
        if not data:
            break
        chunks.append(data)
    assert proc.wait(timeout=60) == 0
    os.close(main_fd)
    screen = re.sub(r"\x1b\[[0-9;]*m", "", b"".join(chunks).decode()).replace("\r", "")
    *lines, summary, hint = screen.rstrip("\n").split("\n")
    assert all(len(line) <= 80 for line in lines), lines
    assert lines[0].split() == ["#", "User", "Cost", "(USD)", "Requests", "Tokens",
                                "Last", "seen", "(UTC)", "Top", "model"]
    assert lines[1].split()[:2] == ["1", "user-7"]
    assert "2027-01-15 08:00:39Z" in lines[1]
    assert summary == "users 1-4 of 8, sorted by -last_seen"
    assert hint.endswith("--sort=-last_seen --limit 4 --offset 4")


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


@pytest.fixture(scope="module")
def spiking() -> Iterator[str]:
    now = time.time()
    for _, address in serve([  # 20 USD now where the week before averaged 0.1 per hour
        UsageEvent(time=now - 2 * 86400, request_id="base", user_id="steady", cost_usd=16.8),
        UsageEvent(time=now, request_id="now", user_id="steady", cost_usd=20.0),
        UsageEvent(time=now, request_id="new", user_id="newcomer", cost_usd=3.0),
    ]):
        yield address


def test_spikes(spiking: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "--server", spiking, "--spikes")
    assert code == 0
    assert rows(out) == [["User", "Last 1h", "Average per 1h", "Ratio"],
                         ["newcomer", "3.0", "0.0", "new"], ["steady", "20.0", "0.1", "200.0"]]
    assert err.startswith("2 users spiking on cost in the last 1h (over 5x their average")
    code, out, _ = run(capsys, "--server", spiking, "--spikes", "--min", "5", "--json")
    assert [s["user_id"] for s in json.loads(out)] == ["steady"]
    code, out, _ = run(capsys, "--server", spiking, "--spikes", "--csv", "--metric", "requests")
    assert [r["user_id"] for r in csv.DictReader(io.StringIO(out))] == ["newcomer", "steady"]
    code, out, err = run(capsys, "--server", spiking, "--spikes", "--groups")
    assert (code, out) == (0, "") and err.startswith("no groups spiking")
    code, _, err = run(capsys, "--server", spiking, "--spikes", "--window", "5m")
    assert code == 2 and err.startswith("tollway usage: --window")
    code, _, err = run(capsys, "--server", spiking, "--spikes", "--user", "a")
    assert code == 2 and "--spikes" in err


def test_convert_round_trips(served: tuple[Engine, str]) -> None:
    engine = served[0]
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
    assert (beyond.HasField("next"), beyond.previous) == (False, 7)
    by_cursor = usage_convert.list_request(pb.ListUsageRequest(limit=1, cursor=first.next_cursor))
    assert by_cursor.cursor is not None
    assert engine.list_usage(by_cursor).results == engine.list_usage(two.with_offset(1)).results
    spikes = engine.list_spikes(SpikeQuery.parse(min=0, factor=0, window="1d", baseline="1h"))
    assert usage_convert.spikes_from_proto(usage_convert.spikes_to_proto(spikes), "user") == spikes
    series_request = pb.UsageSeriesRequest(user_id="user-1", step="1d", metric="requests")
    series_request.start.FromSeconds(int(T0 - 86400))
    series_request.end.FromSeconds(int(T0 + 1))
    series = engine.usage_series("user", "user-1", usage_convert.series_request(series_request))
    assert series is not None
    out = usage_convert.series_to_proto(series)
    assert (out.user_id, out.step, len(out.points)) == ("user-1", "1d", 2)
    assert [p.value for p in out.points] == [0, 5]
