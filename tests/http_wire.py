"""Talking HTTP over a raw socket: requests a polite client would never send, and
responses read one at a time off the connection (pipelined or not)."""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from http.client import HTTPResponse
from typing import Any

from tollway.server.http_errors import ERROR_CODES

# every ``code`` an error may carry: the status codes' and the parameter one
ERROR_CODE_NAMES = frozenset(ERROR_CODES.values()) | {"invalid_parameter"}


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    chunked: bool = False

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    def json(self) -> Any:
        return json.loads(self.body)


class _KeepOpen:
    """The connection's one buffered reader, lent to each ``HTTPResponse`` in turn (each
    would otherwise buffer, then drop, bytes of the responses after its own)."""

    def __init__(self, sock: socket.socket) -> None:
        self._file = sock.makefile("rb")

    def makefile(self, mode: str) -> _KeepOpen:
        return self

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)

    def close(self) -> None:
        """``HTTPResponse`` closes its file after each body; the connection lives on."""


class Wire:
    """A raw client connection: send any bytes, read responses one by one."""

    def __init__(self, address: str, timeout: float = 10.0) -> None:
        host, _, port = address.rpartition(":")
        self.sock = socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)
        self._reader = _KeepOpen(self.sock)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def reply(self, method: str = "GET") -> Reply:
        """The next response (``http.client.RemoteDisconnected`` when the server closed)."""
        resp = HTTPResponse(self._reader, method=method)  # type: ignore[arg-type]
        resp.begin()
        chunked = bool(resp.chunked)
        body = resp.read()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, body, chunked)

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def exchange(address: str, data: bytes, method: str = "GET", timeout: float = 10.0) -> Reply:
    """Send ``data`` on a new connection and read one response."""
    with Wire(address, timeout) as wire:
        wire.send(data)
        return wire.reply(method)


def request_bytes(method: str, target: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {target} HTTP/1.1", "Host: tollway.test", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def assert_json_error(reply: Reply, status: int | None = None) -> dict[str, Any]:
    """The documented error shape: ``{"error": {"code", "message"[, "parameter"]}}``."""
    assert reply.content_type == "application/json", (reply.status, reply.headers, reply.body)
    if status is not None:
        assert reply.status == status, (reply.status, reply.body)
    data = reply.json()
    assert set(data) == {"error"}, data
    error = data["error"]
    assert {"code", "message"} <= set(error) <= {"code", "message", "parameter"}, error
    assert error["code"] in ERROR_CODE_NAMES, error
    assert isinstance(error["message"], str) and error["message"]
    if error["code"] == "invalid_parameter":
        assert reply.status == 400 and isinstance(error["parameter"], str)
    else:
        assert ERROR_CODES.get(reply.status) == error["code"], (reply.status, error)
    return dict(error)
