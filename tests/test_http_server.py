"""The HTTP port as a hostile or careless client meets it, over real sockets: framing,
methods, sizes, timeouts, bodies, the error shape on every route, and the route table."""

from __future__ import annotations

import http.client
import json
import logging
import selectors
import socket
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web
from http_wire import Wire, assert_json_error, exchange, request_bytes
from server_harness import HttpPort, engine_with_usage, http_serving

from tollway import Engine
from tollway.server.http_errors import json_response
from tollway.server.http_limits import HttpLimits
from tollway.server.http_routes import ROUTES, add_route, read_json, route_of, route_table


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    with engine_with_usage(40, users=7) as e:
        yield e


@pytest.fixture(scope="module")
def port(engine: Engine) -> Iterator[HttpPort]:
    with http_serving(engine) as http:
        yield http


# ------------------------------------------------------------------ framing


def test_a_post_body_is_a_body_not_a_second_request(port: HttpPort) -> None:
    smuggled = b"GET /v1/activity?limit=1 HTTP/1.1\r\nHost: tollway.test\r\n\r\n"
    with Wire(port.address) as wire:
        wire.send(request_bytes("POST", "/v1/usage/users", body=smuggled))
        wire.send(request_bytes("GET", "/healthz", "Connection: close"))
        first = wire.reply()
        assert_json_error(first, 405)
        second = wire.reply()
        assert (second.status, second.body) == (200, b"ok\n")  # the next real request
        with pytest.raises(http.client.RemoteDisconnected):
            wire.reply()  # and nothing else: no activity answer for the body's text


def test_keep_alive_and_pipelining_answer_in_order(port: HttpPort) -> None:
    with Wire(port.address) as wire:
        wire.send(request_bytes("GET", "/healthz") + request_bytes("GET", "/v1/usage/users/u3")
                  + request_bytes("GET", "/nope"))
        assert wire.reply().body == b"ok\n"
        assert wire.reply().json()["user_id"] == "u3"
        assert_json_error(wire.reply(), 404)


def test_head_has_headers_and_no_body(port: HttpPort) -> None:
    with Wire(port.address) as wire:
        wire.send(request_bytes("HEAD", "/v1/usage/users"))
        reply = wire.reply("HEAD")
        assert (reply.status, reply.content_type, reply.body) == (200, "application/json", b"")
        wire.send(request_bytes("HEAD", "/v1/activity?format=csv"))
        reply = wire.reply("HEAD")
        assert (reply.status, reply.body) == (200, b"")
        assert reply.content_type.startswith("text/csv")
        wire.send(request_bytes("GET", "/healthz"))
        assert wire.reply().body == b"ok\n"  # the connection is still in step


# ------------------------------------------------------------------ methods


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS", "PROPFIND"])
def test_a_method_a_route_does_not_take_is_a_json_405(port: HttpPort, method: str) -> None:
    reply = exchange(port.address, request_bytes(method, "/metrics", "Connection: close"))
    error = assert_json_error(reply, 405)
    assert reply.headers["allow"] == "GET,HEAD"
    assert method in error["message"]


@pytest.mark.parametrize("method", ["FOO", "BREW", "G-E-T"])
def test_an_unknown_method_is_a_json_405(port: HttpPort, method: str) -> None:
    reply = exchange(port.address, request_bytes(method, "/v1/usage/users"))
    assert_json_error(reply, 405)


# ------------------------------------------------------------------ sizes


def test_an_over_long_url_is_a_json_414(port: HttpPort) -> None:
    limit = HttpLimits().max_url_bytes
    reply = exchange(port.address, request_bytes("GET", "/v1/usage/users?search=" + "a" * limit))
    assert str(limit) in assert_json_error(reply, 414)["message"]
    within = exchange(port.address, request_bytes("GET", "/v1/usage/users?search=" + "a" * 4000))
    error = assert_json_error(within, 400)  # long, within the limit: the parameter is judged
    assert error["parameter"] == "search"


def test_an_over_long_header_is_a_json_431_and_too_many_is_a_400(port: HttpPort) -> None:
    limit = HttpLimits().max_header_bytes
    reply = exchange(port.address, request_bytes("GET", "/healthz", "X-Big: " + "b" * (limit + 10)))
    assert_json_error(reply, 431)
    many = [f"X-H{i}: 1" for i in range(HttpLimits().max_headers + 5)]
    assert_json_error(exchange(port.address, request_bytes("GET", "/healthz", *many)), 400)


def test_malformed_requests_are_json_400s(port: HttpPort) -> None:
    for data in (b"GET /healthz HTTP/9.9\r\n\r\n", b"GET\r\n\r\n",
                 b"GET /healthz HTTP/1.1\r\nBad Header\r\n\r\n",
                 b"GET /h\x00z HTTP/1.1\r\n\r\n", b"GET /v1/usage/users/\xff HTTP/1.1\r\n\r\n",
                 b"POST /metrics HTTP/1.1\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
                 b"POST /metrics HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"):
        reply = exchange(port.address, data)
        assert reply.status in (400, 405), data
        assert_json_error(reply)


def test_refused_requests_are_not_logged_above_debug(
    port: HttpPort, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        for data in (b"GET /" + b"x" * 9000 + b" HTTP/1.1\r\n\r\n", b"\x16\x03\x01\x02\r\n\r\n",
                     b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"):
            assert exchange(port.address, data).status >= 400
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


# ------------------------------------------------------------------ timeouts


def _closed_within(socks: list[socket.socket], seconds: float) -> set[socket.socket]:
    """The sockets the server closed (EOF or reset) within ``seconds``."""
    closed: set[socket.socket] = set()
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + seconds
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
            sock: Any = key.fileobj
            try:
                data = sock.recv(4096)
            except ConnectionError:
                data = b""
            if not data:
                closed.add(sock)
                sel.unregister(sock)
    sel.close()
    return closed


def test_half_open_connections_are_closed_by_the_idle_timeout(engine: Engine) -> None:
    """Silent connections, unfinished request heads and kept-alive idle connections all
    go once ``idle_timeout`` passes: a thousand of them cannot pin the port."""
    limits = HttpLimits(idle_timeout=0.5)
    with http_serving(engine, limits=limits) as http:
        silent = [Wire(http.address).sock for _ in range(300)]
        half = [Wire(http.address).sock for _ in range(300)]
        for s in half:
            s.sendall(b"GET /v1/usage/users HTTP/1.1\r\nHost: tollway.test\r\nX-Slow: ")
        idle = Wire(http.address)
        idle.send(request_bytes("GET", "/healthz"))
        assert idle.reply().body == b"ok\n"  # a complete exchange, then nothing
        started = time.monotonic()
        everyone = [*silent, *half, idle.sock]
        closed = _closed_within(everyone, 10.0)
        assert len(closed) == len(everyone)
        assert time.monotonic() - started < 8.0
        for s in everyone:
            s.close()
        assert exchange(http.address, request_bytes("GET", "/healthz")).status == 200


def test_a_slow_trickle_of_header_bytes_does_not_extend_the_timeout(engine: Engine) -> None:
    with (http_serving(engine, limits=HttpLimits(idle_timeout=0.6)) as http,
          Wire(http.address) as wire):
        started = time.monotonic()
        wire.send(b"GET /healthz HTTP/1.1\r\n")
        while _peek_open(wire.sock):  # a header byte every 0.1 s, for as long as allowed
            assert time.monotonic() - started < 5.0, "a trickling client kept its connection"
            time.sleep(0.1)
            try:
                wire.send(b"X")
            except ConnectionError:
                break


def _peek_open(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except BlockingIOError:
        return True
    except ConnectionError:
        return False
    finally:
        sock.setblocking(True)


# ------------------------------------------------------------------ bodies routes read


def _echo(app: web.Application, engine: Engine) -> None:
    async def echo(request: web.Request) -> web.Response:
        return json_response({"got": await read_json(request)})

    async def whoami(request: web.Request) -> web.Response:
        route = route_of(request)
        assert route is not None
        return web.Response(text=f"{route.method} {route.path}",
                            headers={"X-Route": f"{route.method} {route.path}"})

    add_route(app, "POST", "/v1/echo", echo)
    add_route(app, "GET", "/v1/whoami/{id}", whoami)


@pytest.fixture(scope="module")
def echo_port(engine: Engine) -> Iterator[HttpPort]:
    module = types.ModuleType("tollway_test_echo")
    module.install = _echo  # type: ignore[attr-defined]
    sys.modules[module.__name__] = module
    limits = HttpLimits(max_body_bytes=1024, body_timeout=0.5)
    try:
        with http_serving(engine, limits=limits, route_modules=(module.__name__,)) as http:
            yield http
    finally:
        del sys.modules[module.__name__]


def test_a_route_reads_a_json_body_within_its_limits(echo_port: HttpPort) -> None:
    address = echo_port.address
    body = json.dumps({"a": [1, 2]}).encode()
    ok = exchange(address, request_bytes("POST", "/v1/echo", "Content-Type: application/json",
                                         body=body))
    assert (ok.status, ok.json()) == (200, {"got": {"a": [1, 2]}})
    big = b'"' + b"x" * 2000 + b'"'
    assert_json_error(exchange(address, request_bytes(
        "POST", "/v1/echo", "Content-Type: application/json", body=big)), 413)
    assert_json_error(exchange(address, request_bytes(
        "POST", "/v1/echo", "Content-Type: text/plain", body=body)), 415)
    assert_json_error(exchange(address, request_bytes(
        "POST", "/v1/echo", "Content-Type: application/json", body=b"{nope")), 400)
    with Wire(address) as wire:  # promises 100 bytes, sends 10, then stalls
        started = time.monotonic()
        wire.send(b"POST /v1/echo HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{\"a\": 1, ")
        assert_json_error(wire.reply(), 408)
        assert time.monotonic() - started < 5.0


# ------------------------------------------------------------------ every route


def test_every_route_is_in_the_table(port: HttpPort) -> None:
    """Roles are in server/roles.py; tests/test_security_roles.py checks every route has one."""
    table = {(r.method, r.path) for r in route_table(port.app)}
    served = {(r.method, r.resource.canonical) for r in port.app.router.routes()
              if r.resource is not None}
    assert served == table  # nothing reaches the router except through add_route
    v1 = {path for (_, path) in table if path.startswith("/v1/")}
    assert v1 == {"/v1/activity", "/v1/usage/spikes"} | {
        f"/v1/usage/{kind}{tail}" for kind in ("user", "users", "group", "groups")
        for tail in ("", "/{id}", "/{id}/series")
    } | {"/v1/balances/{kind}/{id}", "/v1/balances/{kind}/{id}/{balance}"}


def _concrete(path: str) -> str:
    return path.replace("{id}", "u1").replace("{kind}", "group").replace("{balance}", "b")


def test_every_error_from_every_route_is_json(port: HttpPort) -> None:
    for route in route_table(port.app):
        if route.method != "GET" or route.path.startswith("/ui/"):
            continue  # the dashboard's pages answer their errors as pages (test_ui_pages.py)
        path = _concrete(route.path)
        for data in (
            request_bytes("PUT", path),
            request_bytes("GET", path + "/extra"),
            request_bytes("GET", path + "%ff"),
            request_bytes("GET", path + "?" + "q=1&" * 3000),
            request_bytes("GET", path + "?x=%c3%28"),
            request_bytes("GET", path, "X-Long: " + "h" * 9000),
            request_bytes("POST", path, body=b"GET /healthz HTTP/1.1\r\n\r\n"),
        ):
            reply = exchange(port.address, data)
            assert reply.status >= 400, (data[:80], reply.status)
            assert_json_error(reply)
        if route.path.startswith("/v1/"):
            assert_json_error(exchange(port.address, request_bytes(
                "GET", path + "?limit=%D9%A1%D9%A2")), 400)
            assert_json_error(exchange(port.address, request_bytes(
                "GET", path + "?unknown=1")), 400)


def test_a_request_finds_its_route_in_the_table(echo_port: HttpPort) -> None:
    reply = exchange(echo_port.address, request_bytes("GET", "/v1/whoami/x"))
    assert reply.body == b"GET /v1/whoami/{id}"
    head = exchange(echo_port.address, request_bytes("HEAD", "/v1/whoami/x"), "HEAD")
    assert head.headers["x-route"] == "HEAD /v1/whoami/{id}"


def test_a_route_is_added_once(echo_port: HttpPort) -> None:
    app = web.Application()
    app[ROUTES] = {}
    add_route(app, "GET", "/x", _noop)
    with pytest.raises(ValueError, match="already installed"):
        add_route(app, "get", "/x", _noop)


async def _noop(request: web.Request) -> web.Response:
    return web.Response()


@pytest.mark.parametrize(
    ("field", "value"),
    [("idle_timeout", 0.0), ("body_timeout", float("nan")), ("shutdown_timeout", -1.0),
     ("threads", 0), ("max_headers", 0), ("max_url_bytes", 8190)],
)
def test_limits_refuse_values_that_cannot_work(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=field):
        HttpLimits(**{field: value})
