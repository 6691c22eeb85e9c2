"""Random requests at every HTTP route over a real socket.

Properties: nothing is ever a 500; every answer is either a valid success for its route
or the documented JSON error; nothing is written. A few hundred examples by default;
``TOLLWAY_FUZZ_EXAMPLES=5000`` runs more.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from http_wire import Reply, assert_json_error, exchange
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families
from server_harness import HttpPort, engine_with_usage, http_serving

from tollway import Engine
from tollway.policy.usage_query import ActivityQuery, UsageQuery
from tollway.server.http_limits import HttpLimits
from tollway.server.http_routes import route_table
from tollway.server.usage_http import ACTIVITY_COLUMNS

EXAMPLES = int(os.environ.get("TOLLWAY_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with engine_with_usage(60, users=9) as e:
        yield e


def _state(engine: Engine) -> Any:
    """Everything an HTTP call could have changed."""
    pages = [engine.list_usage(UsageQuery(kind=k, limit=100)) for k in ("users", "groups")]
    return ([[r.to_dict() for r in p.results] for p in pages],
            [e.to_dict() for e in engine.activity(ActivityQuery())])


@pytest.fixture(scope="module")
def port(engine: Engine) -> Iterator[HttpPort]:
    before = _state(engine)
    # a short idle timeout: a request head left unfinished by a random example costs little
    with http_serving(engine, limits=HttpLimits(idle_timeout=0.5)) as http:
        yield http
        assert exchange(http.address, b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n").body == b"ok\n"
    assert _state(engine) == before  # nothing was written


# ------------------------------------------------------------------ what a good answer is


def check_page(reply: Reply, method: str) -> None:
    """A dashboard answer: an HTML page (its errors too), or a redirect within the
    dashboard; what is refused before any page runs (no such path, a method a route does
    not take, a target that is not UTF-8) is the JSON error of every route."""
    if reply.status in (302, 303):
        assert reply.headers["location"].startswith("/ui/"), reply.headers
        return
    assert reply.status in (200, 400, 403, 404, 405, 413, 415), (reply.status, reply.body[:300])
    if reply.content_type == "application/json":
        assert reply.status in (400, 404, 405, 413, 415), reply.status
        if method != "HEAD":
            assert_json_error(reply)
        return
    kind = reply.content_type.split(";")[0]
    assert kind in ("text/html", "text/css"), reply.headers
    if method != "HEAD" and kind == "text/html":
        assert reply.body.startswith(b"<!doctype html>") and b"<script" not in reply.body


def check(reply: Reply, method: str, path: str) -> None:
    assert reply.status < 500 or (reply.status == 503 and path == "/readyz"), (
        reply.status, reply.body[:300])
    if path.startswith("/ui/"):
        check_page(reply, method)
        return
    if method == "HEAD":  # the headers of the GET answer, without its body
        assert reply.body == b""
        if reply.status >= 400:
            assert reply.content_type == "application/json"
        return
    if reply.status >= 400:
        if reply.status == 503:
            assert reply.json()["ready"] is False
        else:
            assert_json_error(reply)
        return
    assert reply.status == 200, reply.status
    ctype = reply.content_type
    if ctype == "application/json":
        data = reply.json()
        assert isinstance(data, dict) and "error" not in data
    elif ctype == "application/x-ndjson":
        for line in reply.body.splitlines():
            assert set(json.loads(line)) >= {"time", "request_id", "user_id"}
    elif ctype.startswith("text/csv"):
        rows = list(csv.reader(io.StringIO(reply.body.decode())))
        assert tuple(rows[0]) == ACTIVITY_COLUMNS
        assert all(len(r) == len(ACTIVITY_COLUMNS) for r in rows)
    elif path == "/metrics":
        assert list(text_string_to_metric_families(reply.body.decode()))
    else:
        assert reply.body == b"ok\n", (ctype, reply.body[:200])


# ------------------------------------------------------------------ strategies

PARAMS = ["search", "sort", "limit", "offset", "start", "end", "kind", "user", "group",
          "model", "format", "cursor", "id", "period", "next", "step", "metric", "window",
          "baseline", "factor", "min"]
UI_PATHS = ["/ui/", "/ui/users", "/ui/groups", "/ui/users/{id}", "/ui/groups/{id}",
            "/ui/spikes", "/ui/rules", "/ui/rules/explain", "/ui/login", "/ui/logout",
            "/ui/static/{name}"]
ROUTE_PATHS = ["/metrics", "/healthz", "/readyz", "/v1/activity", "/v1/usage/spikes"] + [
    f"/v1/usage/{kind}{tail}" for kind in ("user", "users", "group", "groups")
    for tail in ("", "/{id}", "/{id}/series")
] + ["/v1/balances/{kind}/{id}", "/v1/balances/{kind}/{id}/{balance}"] + UI_PATHS

values = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["", "0", "1", "25", "100", "101", "-1", "1e3", "0x10", "\u0661\u0662",
                     "\u00b2", "\uff11", " 7 ", "99999999999999999999", "total_cost",
                     "-total_cost", "-last_seen", "jsonl", "csv", "xml", "2027-01-15",
                     "2027-01-15T08:00:10Z", "2027-13-45", "u1", "g1", "m0"]),
)


@st.composite
def encoded(draw: st.DrawFn, text: st.SearchStrategy[str]) -> str:
    """Percent-encoded text, sometimes with raw or broken escapes mixed in."""
    out = quote(draw(text), safe=draw(st.sampled_from(["", "/", "=&", "%+"])))
    if draw(st.booleans()):
        out += draw(st.sampled_from(["%", "%z", "%ff", "%c3%28", "%ed%a0%80", "%00", "+",
                                     "%25", "%2F", "&", "=", "#", ";"]))
    return out


@st.composite
def targets(draw: st.DrawFn) -> tuple[str, str]:
    """(request target, the route path it aims at) mostly near real routes."""
    path = draw(st.sampled_from(ROUTE_PATHS))
    if "{id}" in path:
        path = path.replace("{id}", draw(encoded(st.text(min_size=0, max_size=30))) or "x")
    if "{kind}" in path:
        path = path.replace("{kind}", draw(st.sampled_from(["user", "groups", "team", "%00"])))
    if "{balance}" in path:
        path = path.replace("{balance}", draw(encoded(st.text(min_size=0, max_size=12))) or "b")
    if "{name}" in path:
        path = path.replace("{name}", draw(st.sampled_from(["tollway.css", "x.js", "..%2F"])))
    if draw(st.integers(0, 9)) == 0:
        path += "/" + draw(encoded(st.text(max_size=10)))
    pairs = draw(st.lists(st.tuples(st.one_of(st.sampled_from(PARAMS), st.text(max_size=8)),
                                    values), max_size=5))
    query = "&".join(f"{quote(k)}={draw(encoded(st.just(v)))}" for k, v in pairs)
    return (path + ("?" + query if query else "")), path


methods = st.sampled_from(["GET"] * 6 + ["HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS",
                                         "FOO"])


# ------------------------------------------------------------------ properties


@FUZZ
@given(method=methods, target=targets(), body=st.one_of(st.just(b""), st.binary(max_size=64)))
def test_random_requests_get_a_valid_answer(
    port: HttpPort, method: str, target: tuple[str, str], body: bytes
) -> None:
    text, path = target
    head = f"{method} {text} HTTP/1.1\r\nHost: tollway.test\r\n"
    if body:
        head += f"Content-Length: {len(body)}\r\n"
    reply = exchange(port.address, head.encode() + b"\r\n" + body, method)
    check(reply, method, path.split("?")[0])


@FUZZ
@given(
    line=st.one_of(
        st.binary(max_size=120),
        st.builds(lambda m, t, v: m + b" " + t + b" " + v,
                  st.sampled_from([b"GET", b"HEAD", b"POST", b"G\x00T", b"", b"get"]),
                  st.one_of(st.binary(max_size=60), st.sampled_from(
                      [b"/v1/usage/users", b"/metrics", b"*", b"http://x/healthz", b"//",
                       b"/v1/usage/users/\xff", b"/readyz?\x7f"])),
                  st.sampled_from([b"HTTP/1.1", b"HTTP/1.0", b"HTTP/2", b"HTTP/1.1 x", b""])),
    ),
    headers=st.lists(st.one_of(
        st.binary(max_size=40),
        st.sampled_from([b"Host: t", b"Content-Length: -1", b"Content-Length: 1x",
                         b"Transfer-Encoding: chunked", b"Transfer-Encoding: gzip, chunked",
                         b"Expect: 100-continue", b"Connection: upgrade", b"Upgrade: websocket",
                         b": empty name", b"X: \x00"]),
    ), max_size=4),
)
def test_malformed_requests_get_a_json_error_or_a_valid_answer(
    port: HttpPort, line: bytes, headers: list[bytes]
) -> None:
    data = b"\r\n".join([line, *headers]) + b"\r\n\r\n"
    method = line.split(b" ", 1)[0].decode("latin-1")
    try:
        reply = exchange(port.address, data, method, timeout=5)
    except (ConnectionError, TimeoutError, OSError) as exc:
        # a head the parser still waits on (a body promised but not sent) is closed by the
        # idle timeout without an answer; a refused one always gets its JSON error first
        assert isinstance(exc, ConnectionError | TimeoutError), exc
        return
    target = line.split(b" ")[1].decode("latin-1") if line.count(b" ") >= 2 else ""
    check(reply, method, target.split("?")[0])


def test_the_fuzzed_paths_cover_every_route(port: HttpPort) -> None:
    assert {r.path for r in route_table(port.app)} == set(ROUTE_PATHS)
