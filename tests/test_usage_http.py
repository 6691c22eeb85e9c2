"""The HTTP usage API, through the real HTTP port on a real socket."""

from __future__ import annotations

import csv
import http.client as http_client
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest
from conftest import RedisServer
from server_harness import HttpPort, http_serving

from tollway import Engine
from tollway.policy.usage import UsageEvent
from tollway.policy.usage_query import ActivityQuery
from tollway.server import usage_http

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z


def fill(engine: Engine) -> None:
    """Thirty reports' worth of usage, written straight into the engine's usage database."""
    assert engine.usage_db is not None
    engine.usage_db.write([
        UsageEvent(
            time=T0 + i, request_id=f"r{i}", user_id=f"user{i % 12:02d}",
            group_id="acme" if i % 2 else "initech", model="gpt" if i % 3 else "claude",
            input_tokens=10 * i, output_tokens=i, cost_usd=0.01 * (i % 12),
            duration_seconds=0.5, attributes={"region": "eu"} if i == 29 else {},
        )
        for i in range(30)
    ])


@pytest.fixture
def engine() -> Iterator[Engine]:
    e = Engine.from_text("default allow\n", store="memory")
    fill(e)
    yield e
    e.close()



@pytest.fixture
def port(engine: Engine) -> Iterator[HttpPort]:
    with http_serving(engine) as http:
        yield http


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    request = urllib.request.Request(url, headers={"Host": "tollway.local:9464"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            if headers is not None:
                headers.update(resp.headers.items())
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def get(port: HttpPort, path: str, **params: Any) -> tuple[int, Any]:
    """Status and JSON body of ``GET path?params``."""
    url = port.url(path) + ("?" + urlencode(params) if params else "")
    status, ctype, raw = fetch(url)
    assert ctype == "application/json"
    return status, json.loads(raw)


def lines(port: HttpPort, **params: Any) -> list[dict[str, Any]]:
    status, ctype, raw = fetch(port.url("/v1/activity?" + urlencode(params)))
    assert (status, ctype) == (200, "application/x-ndjson")
    return [json.loads(line) for line in raw.splitlines()]


def csv_rows(port: HttpPort, **params: Any) -> tuple[bytes, list[dict[str, str]]]:
    status, ctype, raw = fetch(port.url("/v1/activity?" + urlencode({"format": "csv", **params})))
    assert (status, ctype) == (200, "text/csv; charset=utf-8")
    return raw, list(csv.DictReader(io.StringIO(raw.decode())))


def assert_error(data: Any, code: str, parameter: str | None = None) -> str:
    """The documented error shape; returns its message."""
    error = data["error"]
    assert error["code"] == code
    assert set(error) == ({"code", "message"} | ({"parameter"} if parameter else set()))
    if parameter:
        assert error["parameter"] == parameter
        assert error["message"].startswith(parameter + ":")
    return str(error["message"])


# ------------------------------------------------------------------ listings


def test_listing_has_results_count_and_links(port: HttpPort) -> None:
    status, data = get(port, "/v1/usage/users", sort="-total_cost", limit=5, offset=5)
    assert status == 200
    assert data["count"] == 12
    assert data["next"] == "http://tollway.local:9464/v1/usage/users?sort=-total_cost&limit=5&offset=10"
    assert data["previous"] == "http://tollway.local:9464/v1/usage/users?sort=-total_cost&limit=5"
    _, everyone = get(port, "/v1/usage/users", sort="-total_cost", limit=100)
    assert data["results"] == everyone["results"][5:10]
    # user k costs 0.03k (k < 6) or 0.02k: user04 and user06 tie at 0.12; ties by id, reversed
    assert [r["user_id"] for r in data["results"]] == ["user07", "user06", "user04", "user03",
                                                       "user02"]
    rec = data["results"][0]
    assert set(rec) == {"user_id", "request_count", "first_seen", "last_seen", "total_tokens",
                        "input_tokens", "output_tokens", "total_cost", "total_duration", "models"}
    assert rec["last_seen"].endswith("Z")


def test_last_page_has_no_next_and_links_are_relative_without_a_usable_host(
    port: HttpPort,
) -> None:
    _, data = get(port, "/v1/usage/users", limit=10, offset=10)
    assert data["next"] is None
    assert len(data["results"]) == 2
    request = urllib.request.Request(
        port.url("/v1/usage/users?limit=10&offset=10"), headers={"Host": "evil.example/x?"}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        assert json.loads(resp.read())["previous"] == "/v1/usage/users?limit=10"


def test_groups_listing_and_search(port: HttpPort) -> None:
    _, data = get(port, "/v1/usage/groups", search="ACM")
    assert [r["group_id"] for r in data["results"]] == ["acme"]
    assert data["results"][0]["request_count"] == 15
    assert "user_id" not in data["results"][0]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"sort": "cost"}, "sort"), ({"limit": 101}, "limit"), ({"limit": 0}, "limit"),
     ({"offset": -3}, "offset"), ({"start": "soon"}, "start"),
     ({"start": "2027-02-01", "end": "2027-01-01"}, "end"), ({"kind": "groups"}, "kind"),
     ({"bogus": 1}, "bogus"),
     # only ASCII digits are numbers: str.isdigit() would take Arabic-Indic and superscripts
     ({"limit": "\u0661\u0662"}, "limit"), ({"offset": "\u00b2"}, "offset"),
     ({"limit": "\uff11\uff12"}, "limit"), ({"limit": "1_0"}, "limit"), ({"limit": "+5"}, "limit")],
)
def test_bad_parameters_are_400_naming_the_parameter(
    port: HttpPort, params: dict[str, Any], parameter: str
) -> None:
    status, data = get(port, "/v1/usage/users", **params)
    assert status == 400
    assert_error(data, "invalid_parameter", parameter)


def test_undecodable_query_and_path_are_400(port: HttpPort) -> None:
    for path in ("/v1/usage/users?limit=%ff", "/v1/usage/users?%c3%28=1",
                 "/v1/usage/users/a%ffb", "/v1/activity?user=%ed%a0%80"):
        status, _, raw = fetch(port.url(path))
        assert status == 400, path
        assert_error(json.loads(raw), "bad_request")
    many = "&".join(f"p{i}=1" for i in range(100))
    status, _, raw = fetch(port.url("/v1/usage/users?" + many))
    assert status == 400 and "64" in assert_error(json.loads(raw), "bad_request")


# ------------------------------------------------------------------ details


def test_detail_and_unknown_id(port: HttpPort) -> None:
    status, data = get(port, "/v1/usage/users/user05")
    assert status == 200
    assert data["user_id"] == "user05"
    assert data["request_count"] == 3
    assert set(data["cost_by_model"]) == {"gpt"}
    assert [r["request_id"] for r in data["recent_reports"]] == ["r29", "r17", "r5"]
    assert data["recent_reports"][0]["attributes"] == {"region": "eu"}
    status, data = get(port, "/v1/usage/users/nobody")
    assert status == 404
    assert "nobody" in assert_error(data, "not_found")
    assert get(port, "/v1/usage/groups/acme")[0] == 200
    status, data = get(port, "/v1/usage/users/" + "x" * 300)
    assert status == 400
    assert_error(data, "invalid_parameter", "user_id")
    status, data = get(port, "/v1/usage/user/user05")  # the singular kind too
    assert (status, data["user_id"]) == (200, "user05")
    status, data = get(port, "/v1/usage/group", limit=1)
    assert status == 200 and data["next"].startswith("http://tollway.local:9464/v1/usage/group?")


def test_an_id_with_a_slash_is_percent_encoded(engine: Engine, port: HttpPort) -> None:
    assert engine.usage_db is not None
    engine.usage_db.write([UsageEvent(time=T0, request_id="s1", user_id="team/alice")])
    status, data = get(port, "/v1/usage/users/team%2Falice")
    assert (status, data["user_id"]) == (200, "team/alice")


# ------------------------------------------------------------------ activity


def test_activity_as_json_lines(port: HttpPort) -> None:
    got = lines(port, user="user05", limit=2)
    assert [r["request_id"] for r in got] == ["r29", "r17"]
    assert got[0]["time"] == "2027-01-15T08:00:29Z"


def test_activity_as_csv_with_a_header(port: HttpPort) -> None:
    _, rows = csv_rows(port, group="acme", start="2027-01-15T08:00:20Z")
    assert [r["request_id"] for r in rows] == ["r29", "r27", "r25", "r23", "r21"]
    assert tuple(rows[0]) == usage_http.ACTIVITY_COLUMNS
    assert json.loads(rows[0]["attributes"]) == {"region": "eu"}
    assert rows[0]["counts_request"] == "true" and rows[0]["input_tokens"] == "290"
    raw, rows = csv_rows(port, user="nobody")
    assert rows == [] and raw.decode().splitlines() == [
        ",".join(f'"{c}"' for c in usage_http.ACTIVITY_COLUMNS)
    ]


def test_activity_bad_parameters(port: HttpPort) -> None:
    for params, parameter in (({"format": "xml"}, "format"), ({"limit": "x"}, "limit"),
                              ({"end": "nope"}, "end"), ({"limit": "\u0661"}, "limit"),
                              ({"usr": "a"}, "usr")):
        status, data = get(port, "/v1/activity", **params)
        assert status == 400
        assert_error(data, "invalid_parameter", parameter)


FORMULAS = ['=HYPERLINK("x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\r=1"]


def test_csv_export_is_safe_to_open_in_a_spreadsheet(tmp_path: Any) -> None:
    """Ids, models and statuses a client chose cannot run as formulas (OWASP's advice:
    a leading single quote, and the field quoted); the JSON export keeps them as sent."""
    engine = Engine.from_text("default allow\n", store="memory")
    try:
        for i, text in enumerate(FORMULAS):
            engine.report({"request_id": f"f{i}", "user": {"id": text}, "model": text,
                           "group": {"id": "g"}, "status": "=1", "input_tokens": 7})
        assert engine.flush_usage()
        with http_serving(engine) as http:
            raw, rows = csv_rows(http)
            got = lines(http)
    finally:
        engine.close()
    assert b'"\'=HYPERLINK(""x"")"' in raw  # quoted, quote-prefixed, quotes doubled
    by_request = {r["request_id"]: r for r in rows}
    for i, text in enumerate(FORMULAS):
        row = by_request[f"f{i}"]
        assert row["user_id"] == row["model"] == "'" + text
        assert row["status"] == "'=1" and row["group_id"] == "g" and row["input_tokens"] == "7"
    assert {r["user_id"] for r in got} == set(FORMULAS)


@pytest.mark.redis
def test_queries_never_touch_redis(tmp_path: Any, redis_server: RedisServer) -> None:
    engine = Engine.from_text("default allow\n", store=redis_server.url, key_prefix="down:")
    try:
        fill(engine)
        with http_serving(engine) as http:
            redis_server.kill()
            for path in ("/v1/usage/users", "/v1/usage/groups/acme", "/v1/activity",
                         "/v1/usage/users/user01/series", "/v1/usage/spikes"):
                status, _, _ = fetch(http.url(path))
                assert status == 200, path  # usage is read from the usage database
            status, _, raw = fetch(http.url("/readyz"))
            assert status == 503 and json.loads(raw)["ready"] is False
    finally:
        engine.close()


def test_usage_database_down_is_503_before_any_byte() -> None:
    engine = Engine.from_text("default allow\n", usage_db="postgresql://tollway@127.0.0.1:1/x")
    try:
        with http_serving(engine) as http:
            for path in ("/v1/usage/users", "/v1/usage/groups/g", "/v1/activity",
                         "/v1/activity?format=csv", "/v1/usage/users/u/series",
                         "/v1/usage/spikes"):
                status, ctype, raw = fetch(http.url(path))
                assert (status, ctype) == (503, "application/json"), path
                assert assert_error(json.loads(raw), "unavailable") == "usage database unavailable"
    finally:
        engine.close()


def test_no_usage_database_is_501() -> None:
    engine = Engine.from_text("default allow\n", usage_db=None)
    try:
        with http_serving(engine) as http:
            for path in ("/v1/usage/users", "/v1/usage/users/u", "/v1/usage/spikes"):
                status, data = get(http, path)
                assert status == 501, path
                assert_error(data, "not_implemented")
    finally:
        engine.close()


# ------------------------------------------------------------------ cursors, periods, series


def test_cursor_paging_links_carry_cursors(port: HttpPort) -> None:
    status, first = get(port, "/v1/usage/users", limit=5, cursor="")
    assert status == 200
    assert first["next"].startswith("http://tollway.local:9464/v1/usage/users?limit=5&cursor=")
    assert first["previous"] is None and first["period"] is None
    assert first["next_cursor"] and first["previous_cursor"] is None
    seen = [r["user_id"] for r in first["results"]]
    url = first["next"]
    while url:
        status, _, raw = fetch(url.replace("tollway.local:9464", port.address))
        page = json.loads(raw)
        assert "offset" not in page["previous"]
        seen += [r["user_id"] for r in page["results"]]
        url = page["next"]
    _, everyone = get(port, "/v1/usage/users", limit=100)
    assert seen == [r["user_id"] for r in everyone["results"]]
    status, data = get(port, "/v1/usage/users", cursor="garbage")
    assert status == 400
    assert_error(data, "invalid_parameter", "cursor")


def test_a_period_listing_says_which_hours_it_covers(port: HttpPort) -> None:
    _, data = get(port, "/v1/usage/users", start="2027-01-15T08:00:10Z",
                  end="2027-01-15T08:00:20Z")
    assert data["period"] == {"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T09:00:00Z"}
    assert data["count"] == 12
    _, later = get(port, "/v1/usage/users", start="2027-01-15T09:00:00Z", end="2027-01-16")
    assert (later["count"], later["results"]) == (0, [])


def test_series_and_spikes(port: HttpPort) -> None:
    status, data = get(port, "/v1/usage/users/user05/series", start="2027-01-15T06:00:00Z",
                       end="2027-01-15T09:00:00Z")
    assert status == 200
    assert (data["user_id"], data["metric"], data["step"]) == ("user05", "cost", "1h")
    assert [(p["time"], p["value"]) for p in data["points"]] == [
        ("2027-01-15T06:00:00Z", 0.0), ("2027-01-15T07:00:00Z", 0.0),
        ("2027-01-15T08:00:00Z", pytest.approx(0.15))]
    status, data = get(port, "/v1/usage/group/acme/series", metric="requests", step="1d",
                       start="2027-01-15", end="2027-01-16")
    assert (status, [p["value"] for p in data["points"]]) == (200, [15])
    status, data = get(port, "/v1/usage/groups/nobody/series")
    assert status == 404
    status, data = get(port, "/v1/usage/users/user05/series", step="5m")
    assert status == 400
    assert_error(data, "invalid_parameter", "step")
    status, data = get(port, "/v1/usage/spikes", metric="tokens", min=1, baseline="1d")
    assert status == 200
    assert (data["kind"], data["window"], data["baseline"]) == ("users", "1h", "24h")
    assert data["results"] == []  # all of it is long before the window
    status, data = get(port, "/v1/usage/spikes", window="5m")
    assert status == 400
    assert_error(data, "invalid_parameter", "window")


class _FailingActivity:
    """An engine whose export fails after its first batches (a store lost mid-export)."""

    def __init__(self, engine: Engine, fail_after: int) -> None:
        self._engine = engine
        self._fail_after = fail_after

    def __getattr__(self, name: str) -> Any:
        return getattr(self._engine, name)

    def activity(self, query: ActivityQuery) -> Iterator[UsageEvent]:
        event = UsageEvent(time=T0, request_id="r", user_id="u")
        for _ in range(self._fail_after):
            yield event
        raise ConnectionError("store went away")


def test_an_export_that_fails_midway_is_cut_not_completed(engine: Engine) -> None:
    failing: Any = _FailingActivity(engine, fail_after=usage_http.ACTIVITY_BATCH * 2 + 5)
    with http_serving(failing) as http:
        with urllib.request.urlopen(http.url("/v1/activity"), timeout=10) as resp:
            assert resp.status == 200
            with pytest.raises(http_client.IncompleteRead):
                resp.read()
        assert fetch(http.url("/healthz"))[0] == 200  # the port lives on


# ------------------------------------------------------------------ walking and streaming


def test_walking_next_links_over_http_sees_every_user_once(port: HttpPort) -> None:
    url: str | None = port.url("/v1/usage/users?limit=5&sort=last_seen")
    seen: list[str] = []
    while url:
        status, _, raw = fetch(url.replace("tollway.local:9464", port.address))
        assert status == 200
        data = json.loads(raw)
        seen += [r["user_id"] for r in data["results"]]
        url = data["next"]
    # last seen: user k at T0+k+24 for k < 6, T0+k+12 otherwise
    assert seen == [f"user{i:02d}" for i in [*range(6, 12), *range(6)]]


def test_http_activity_export_is_streamed(port: HttpPort) -> None:
    _, rows = csv_rows(port, model="claude")
    assert len(rows) == 10 and {r["model"] for r in rows} == {"claude"}
    seen: dict[str, str] = {}
    status, ctype, raw = fetch(port.url("/v1/activity"), seen)
    assert (status, ctype) == (200, "application/x-ndjson")
    assert seen.get("Transfer-Encoding") == "chunked"  # streamed, not built in memory
    assert len(raw.splitlines()) == 30
