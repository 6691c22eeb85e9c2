"""The HTTP usage API: the pure handlers, then real round trips through the HTTP server."""

from __future__ import annotations

import csv
import io
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tollway import Engine
from tollway.policy.usage import UsageEvent
from tollway.server import usage_http
from tollway.server.http import Router, start_http

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


def q(**params: Any) -> dict[str, list[str]]:
    return {k: [str(v)] for k, v in params.items()}


def body(result: usage_http.HttpResult) -> Any:
    return json.loads(result.read())


# ------------------------------------------------------------------ pure handlers


def test_listing_has_results_count_and_links(engine: Engine) -> None:
    result = usage_http.list_usage(
        engine, "users", q(sort="-total_cost", limit=5, offset=5), path="/v1/usage/users",
        host="tollway.local:9464",
    )
    assert result.status == 200 and result.content_type == "application/json"
    data = body(result)
    assert data["count"] == 12
    assert data["next"] == "http://tollway.local:9464/v1/usage/users?sort=-total_cost&limit=5&offset=10"
    assert data["previous"] == "http://tollway.local:9464/v1/usage/users?sort=-total_cost&limit=5"
    everyone = body(usage_http.list_usage(engine, "users", q(sort="-total_cost", limit=100)))
    assert data["results"] == everyone["results"][5:10]
    # user k costs 0.03k (k < 6) or 0.02k: user04 and user06 tie at 0.12; ties by id, reversed
    assert [r["user_id"] for r in data["results"]] == ["user07", "user06", "user04", "user03",
                                                       "user02"]
    rec = data["results"][0]
    assert set(rec) == {"user_id", "request_count", "first_seen", "last_seen", "total_tokens",
                        "input_tokens", "output_tokens", "total_cost", "total_duration", "models"}
    assert rec["last_seen"].endswith("Z")


def test_last_page_has_no_next_and_links_are_relative_without_a_host(engine: Engine) -> None:
    data = body(usage_http.list_usage(engine, "users", q(limit=10, offset=10)))
    assert data["next"] is None
    assert data["previous"] == "/v1/usage/users?limit=10"
    assert len(data["results"]) == 2


def test_groups_listing_and_search(engine: Engine) -> None:
    data = body(usage_http.list_usage(engine, "groups", q(search="ACM")))
    assert [r["group_id"] for r in data["results"]] == ["acme"]
    assert data["results"][0]["request_count"] == 15
    assert "user_id" not in data["results"][0]


@pytest.mark.parametrize(
    ("params", "parameter"),
    [({"sort": "cost"}, "sort"), ({"limit": 101}, "limit"), ({"limit": 0}, "limit"),
     ({"offset": -3}, "offset"), ({"start": "soon"}, "start"),
     ({"start": "2027-02-01", "end": "2027-01-01"}, "end"), ({"kind": "groups"}, "kind"),
     ({"bogus": 1}, "bogus")],
)
def test_bad_parameters_are_400_naming_the_parameter(
    engine: Engine, params: dict[str, Any], parameter: str
) -> None:
    result = usage_http.list_usage(engine, "users", q(**params))
    assert result.status == 400
    data = body(result)
    assert data["parameter"] == parameter
    assert data["error"].startswith(parameter + ":")


def test_detail_and_unknown_id(engine: Engine) -> None:
    data = body(usage_http.get_usage(engine, "users", "user05"))
    assert data["user_id"] == "user05"
    assert data["request_count"] == 3
    assert set(data["cost_by_model"]) == {"gpt"}
    assert [r["request_id"] for r in data["recent_reports"]] == ["r29", "r17", "r5"]
    assert data["recent_reports"][0]["attributes"] == {"region": "eu"}
    missing = usage_http.get_usage(engine, "users", "nobody")
    assert missing.status == 404
    assert "nobody" in body(missing)["error"]
    assert usage_http.get_usage(engine, "groups", "acme").status == 200
    too_long = usage_http.get_usage(engine, "users", "x" * 300)
    assert (too_long.status, body(too_long)["parameter"]) == (400, "id")


def test_activity_as_json_lines(engine: Engine) -> None:
    result = usage_http.activity(engine, q(user="user05", limit=2))
    assert result.status == 200 and result.content_type == "application/x-ndjson"
    lines = [json.loads(line) for line in result.read().splitlines()]
    assert [r["request_id"] for r in lines] == ["r29", "r17"]
    assert lines[0]["time"] == "2027-01-15T08:00:29Z"


def test_activity_as_csv_with_a_header(engine: Engine) -> None:
    result = usage_http.activity(engine, q(format="csv", group="acme", start="2027-01-15T08:00:20Z"))
    assert result.content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(result.read().decode())))
    assert [r["request_id"] for r in rows] == ["r29", "r27", "r25", "r23", "r21"]
    assert tuple(rows[0]) == usage_http.ACTIVITY_COLUMNS
    assert json.loads(rows[0]["attributes"]) == {"region": "eu"}
    empty = usage_http.activity(engine, q(format="csv", user="nobody")).read().decode()
    assert empty.splitlines() == [",".join(usage_http.ACTIVITY_COLUMNS)]


def test_activity_bad_parameters(engine: Engine) -> None:
    for params, parameter in (({"format": "xml"}, "format"), ({"limit": "x"}, "limit"),
                              ({"end": "nope"}, "end")):
        result = usage_http.activity(engine, q(**params))
        assert (result.status, body(result)["parameter"]) == (400, parameter)


def test_cursor_paging_links_carry_cursors(engine: Engine) -> None:
    first = body(usage_http.list_usage(engine, "users", q(limit=5, cursor="")))
    assert first["next"].startswith("/v1/usage/users?limit=5&cursor=")
    assert first["previous"] is None and first["period"] is None
    seen = [r["user_id"] for r in first["results"]]
    link = first["next"]
    while link:
        query = {k: [v] for k, v in (kv.split("=", 1) for kv in link.split("?", 1)[1].split("&"))}
        page = body(usage_http.list_usage(engine, "users", query))
        assert page["previous"] is not None and "offset" not in page["previous"]
        seen += [r["user_id"] for r in page["results"]]
        link = page["next"]
    assert seen == [r["user_id"] for r in body(usage_http.list_usage(
        engine, "users", q(limit=100)))["results"]]
    bad = usage_http.list_usage(engine, "users", q(cursor="garbage"))
    assert (bad.status, body(bad)["parameter"]) == (400, "cursor")


def test_a_period_listing_says_which_hours_it_covers(engine: Engine) -> None:
    data = body(usage_http.list_usage(
        engine, "users", q(start="2027-01-15T08:00:10Z", end="2027-01-15T08:00:20Z")))
    assert data["period"] == {"start": "2027-01-15T08:00:00Z", "end": "2027-01-15T09:00:00Z"}
    assert data["count"] == 12
    later = body(usage_http.list_usage(engine, "users", q(start="2027-01-15T09:00:00Z")))
    assert later["count"] == 0


def test_series_and_spikes(engine: Engine) -> None:
    data = body(usage_http.usage_series(
        engine, "users", "user05", q(start="2027-01-15T06:00:00Z", end="2027-01-15T09:00:00Z")))
    assert data["user_id"] == "user05" and data["metric"] == "cost" and data["step"] == "1h"
    assert [(p["time"], p["value"]) for p in data["points"]] == [
        ("2027-01-15T06:00:00Z", 0.0), ("2027-01-15T07:00:00Z", 0.0),
        ("2027-01-15T08:00:00Z", pytest.approx(0.15))]
    assert usage_http.usage_series(engine, "groups", "nobody", {}).status == 404
    bad = usage_http.usage_series(engine, "users", "user05", q(step="5m"))
    assert (bad.status, body(bad)["parameter"]) == (400, "step")
    spikes = body(usage_http.list_spikes(engine, q(metric="tokens", min=1, baseline="1d")))
    assert (spikes["kind"], spikes["window"], spikes["baseline"]) == ("users", "1h", "24h")
    assert spikes["results"] == []  # all of it is long before the window
    bad = usage_http.list_spikes(engine, q(window="5m"))
    assert (bad.status, body(bad)["parameter"]) == (400, "window")


def test_an_unreachable_database_is_503_and_no_usage_is_501() -> None:
    down = Engine.from_text("default allow\n", usage_db="postgresql://tollway@127.0.0.1:1/x")
    none = Engine.from_text("default allow\n", usage_db=None)
    try:
        for result in (usage_http.list_usage(down, "users", {}),
                       usage_http.activity(down, {}),  # before any byte is streamed
                       usage_http.usage_series(down, "users", "a", {}),
                       usage_http.list_spikes(down, {})):
            assert (result.status, body(result)) == (
                503, {"error": "usage database unavailable"})
        assert usage_http.get_usage(none, "users", "a").status == 501
        assert usage_http.list_spikes(none, {}).status == 501
    finally:
        down.close()
        none.close()


# ------------------------------------------------------------------ real round trips


@pytest.fixture
def base_url(engine: Engine) -> Iterator[str]:
    router = Router()
    usage_http.install(router, engine)
    server = start_http("127.0.0.1:0", router)
    try:
        yield f"http://{server.address}"
    finally:
        server.stop()


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            if headers is not None:
                headers.update(resp.headers.items())
            return resp.status, resp.headers["Content-Type"], resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read()


def test_walking_next_links_over_http_sees_every_user_once(base_url: str) -> None:
    url: str | None = f"{base_url}/v1/usage/users?limit=5&sort=last_seen"
    seen: list[str] = []
    while url:
        status, _, raw = fetch(url)
        assert status == 200
        data = json.loads(raw)
        seen += [r["user_id"] for r in data["results"]]
        url = data["next"]
    # last seen: user k at T0+k+24 for k < 6, T0+k+12 otherwise
    assert seen == [f"user{i:02d}" for i in [*range(6, 12), *range(6)]]


def test_http_errors_and_detail(base_url: str) -> None:
    status, ctype, raw = fetch(f"{base_url}/v1/usage/users?limit=500")
    assert (status, ctype) == (400, "application/json")
    assert json.loads(raw)["parameter"] == "limit"
    status, _, raw = fetch(f"{base_url}/v1/usage/users/nobody")
    assert status == 404
    status, _, raw = fetch(f"{base_url}/v1/usage/groups/acme")
    assert (status, json.loads(raw)["group_id"]) == (200, "acme")


def test_http_activity_export(base_url: str) -> None:
    status, ctype, raw = fetch(f"{base_url}/v1/activity?format=csv&model=claude")
    assert (status, ctype) == (200, "text/csv; charset=utf-8")
    rows = list(csv.DictReader(io.StringIO(raw.decode())))
    assert len(rows) == 10 and {r["model"] for r in rows} == {"claude"}
    seen: dict[str, str] = {}
    status, ctype, raw = fetch(f"{base_url}/v1/activity", seen)
    assert (status, ctype) == (200, "application/x-ndjson")
    assert seen.get("Transfer-Encoding") == "chunked"  # streamed, not built in memory
    assert len(raw.splitlines()) == 30
