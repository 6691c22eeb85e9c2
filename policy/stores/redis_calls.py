"""Redis calls that never wait past a deadline, and say what is known when they fail.

redis-py waits for a reply up to the connection's socket timeout, one timeout per
command. A decision has one budget (the store timeout) for all its Redis work, starting
when the call reached the server, so ``RedisCalls`` sends commands on a connection of
the client's pool and polls for each reply only until the deadline. redis-py opens the
connection (address, AUTH, database, Sentinel's master); on a plain TCP or Unix socket
``RedisCalls`` then writes and reads it itself (non-blocking, one ``poll`` for the reply,
hiredis to parse it), keeping it checked out between calls: a round trip costs about a
third of redis-py's own command path. An idle connection is checked before each use
(one ``poll`` without waiting): one the server closed is replaced before anything is
sent on it. TLS connections are read through redis-py. A call that fails says whether
it had any effect:

- ``not_applied``: nothing was sent (the deadline had passed, no connection could be
  opened), or the script answered that Redis's own clock was past the deadline it was
  given, so it wrote nothing;
- ``unknown``: the command was sent and no answer came in time. A script sent with a
  deadline writes nothing once Redis's clock passes that deadline, so if Redis was
  stalled it will not apply late; only a reply lost after the script ran in time leaves
  it applied. A report's retry with the same request_id settles either way.

Scripts get their deadline on Redis's clock: each script call returns Redis ``TIME``,
from which the offset between this host's clock and Redis's is kept (the sample with the
shortest round trip, replaced by a newer one every 30 seconds; ``TIME`` is asked for only
when no sample is known or the latest is over a minute old). The
deadline sent leaves a margin of the round trip for the reply to come back in time.
"""

from __future__ import annotations

import hashlib
import math
import os
import select
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import hiredis
import redis
from redis._parsers.base import BaseParser
from redis.connection import Connection
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError
from redis.exceptions import ConnectionError as RedisConnectionError

from .base import StoreOutcome, StoreRejected, StoreUnavailable

__all__ = ["RedisCalls", "Script", "store_error"]

# Redis answers a sane script in well under a millisecond; a reply that has been on its
# way for longer than the measured round trip plus this is not coming in time.
_MARGIN = 0.001
# How long an offset sample is trusted before a new one replaces it whatever its round trip.
_OFFSET_MAX_AGE = 60.0


def store_error(exc: BaseException, outcome: StoreOutcome = "not_applied") -> StoreUnavailable:
    """The store error for a redis-py (or socket) exception or error reply:
    ``StoreRejected`` when Redis refused the credentials (WRONGPASS, NOAUTH, NOPERM),
    else ``StoreUnavailable``. Neither carries more than Redis's own words."""
    text = str(exc)
    if isinstance(exc, AuthenticationError) or (
        isinstance(exc, ResponseError) and text.startswith(("NOAUTH", "WRONGPASS", "NOPERM"))
    ):
        return StoreRejected(f"redis: {text}", outcome="not_applied")
    return StoreUnavailable(f"redis: {text}", outcome=outcome)


@dataclass(frozen=True, slots=True)
class Script:
    """A Lua script known by its SHA1 (``EVALSHA``), loaded on demand."""

    source: str
    sha: str

    @classmethod
    def of(cls, source: str) -> Script:
        return cls(source, hashlib.sha1(source.encode()).hexdigest())


class _Late(Exception):
    """The deadline passed before the reply came."""


def _pack(command: Sequence[Any]) -> bytes:
    return hiredis.pack_command(tuple(command))


def _reply_error(error: hiredis.ReplyError) -> ResponseError:
    """redis-py's exception for an error reply (``NoScriptError`` for NOSCRIPT, …), as
    redis-py's own reads would raise it."""
    return cast("ResponseError", BaseParser.parse_error(str(error)))


class _Link:
    """A connection of ``RedisCalls``: opened by redis-py (address, AUTH, database,
    Sentinel), then written and read directly on its socket without blocking: a reply
    is waited for with ``poll`` until the deadline, and parsed by hiredis."""

    __slots__ = ("conn", "poller", "pool", "reader", "sock")

    def __init__(self, conn: Connection, sock: socket.socket, pool: Any) -> None:
        sock.settimeout(0)
        self.conn = conn
        self.sock = sock
        self.reader = hiredis.Reader()
        self.poller = select.poll()
        self.poller.register(sock, select.POLLIN)
        self.pool = pool  # the connection stays the pool's (counted against its maximum)

    def usable(self) -> bool:
        """Nothing to read on an idle connection: anything there (the end of the stream
        of a server that closed it, a late reply) makes it unusable."""
        return not self.poller.poll(0)

    def send(self, data: bytes, deadline: float, clock: Callable[[], float]) -> None:
        sock = self.sock
        view = memoryview(data)
        while view:
            try:
                view = view[sock.send(view):]
            except BlockingIOError:
                remaining = deadline - clock()
                if remaining <= 0:
                    raise _Late from None
                select.select([], [sock], [], remaining)

    def read(self, deadline: float, clock: Callable[[], float]) -> Any:
        """The next reply (an error reply as its ``ResponseError``), by ``deadline``."""
        reader = self.reader
        reply = reader.gets()
        while reply is False:
            remaining = deadline - clock()
            if remaining <= 0 or not self.poller.poll(remaining * 1000):
                raise _Late
            chunk = self.sock.recv(65536)
            if not chunk:
                raise RedisConnectionError("Connection closed by server.")
            reader.feed(chunk)
            reply = reader.gets()
        if isinstance(reply, hiredis.ReplyError):
            return _reply_error(reply)
        return reply

    def drop(self) -> None:
        """Close it and give it back to the pool, which opens it anew when it is next used."""
        self.conn.disconnect()
        self.pool.release(self.conn)


class RedisCalls:
    """Commands and scripts on ``client``'s connection pool, each bounded by a deadline
    (``time.monotonic()`` seconds)."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` measures deadlines; ``wall`` is this host's unix time, whose offset
        from Redis ``TIME`` is measured (injectable: tests skew it)."""
        self._pool = client.connection_pool
        self._idle: list[_Link] = []  # LIFO: the warmest connection first
        self._tls = False
        self._pid = os.getpid()
        self._clock = clock
        self._wall = wall
        self._lock = threading.Lock()
        self._offset: float | None = None  # Redis TIME minus this host's time.time()
        self._offset_rtt = math.inf
        self._offset_at = -math.inf

    # ------------------------------------------------------------------ commands

    def run(self, commands: Sequence[Sequence[Any]], deadline: float) -> list[Any]:
        """Send ``commands`` at once and read every reply by ``deadline``.

        Error replies are returned as ``ResponseError`` values, in place. Raises
        ``StoreUnavailable`` with ``outcome`` set when the replies do not all come.
        """
        if deadline - self._clock() <= 0:
            raise StoreUnavailable("redis: no time left for the call", outcome="not_applied")
        link = self._checkout()
        if link is None:  # a TLS connection: through redis-py's own reads
            return self._run_pooled(commands, deadline)
        sent = False
        try:
            if len(commands) == 1:
                link.send(_pack(commands[0]), deadline, self._clock)
            else:
                link.send(b"".join([_pack(c) for c in commands]), deadline, self._clock)
            sent = True
            replies = [link.read(deadline, self._clock) for _ in commands]
        except _Late:
            link.drop()  # a reply may still come: this connection is out of step
            raise StoreUnavailable("redis: no answer in time", outcome="unknown") from None
        except (RedisError, OSError, hiredis.ProtocolError) as exc:
            link.drop()
            raise store_error(exc, "unknown" if sent else "not_applied") from exc
        except BaseException:  # an argument hiredis cannot pack, an interrupt: not reused
            link.drop()
            raise
        self._idle.append(link)
        return replies

    def _checkout(self) -> _Link | None:
        """An idle connection that the server has not closed, or a new one; None when
        the connections are TLS (read by redis-py)."""
        if self._tls:
            return None
        if self._pid != os.getpid():  # forked: the parent's sockets are not ours
            self._idle, self._pid = [], os.getpid()
        while True:
            try:
                link = self._idle.pop()
            except IndexError:
                break
            if link.usable():
                return link
            link.drop()  # closed by the server (a restart) or out of step: replace it
        try:  # connected by the pool (AUTH happens here: a refusal is StoreRejected)
            conn = self._pool.get_connection()
        except (RedisError, OSError) as exc:
            raise store_error(exc) from exc
        sock = getattr(conn, "_sock", None)
        if type(sock) is not socket.socket:  # TLS: redis-py reads it (pending bytes)
            self._pool.release(conn)
            self._tls = True
            return None
        return _Link(conn, sock, self._pool)

    def _run_pooled(self, commands: Sequence[Sequence[Any]], deadline: float) -> list[Any]:
        """``run`` on a connection of the client's pool, read through redis-py (TLS)."""
        clock = self._clock
        try:
            conn = self._pool.get_connection()
        except (RedisError, OSError) as exc:  # AUTH happens here: a refusal is StoreRejected
            raise store_error(exc) from exc
        sent = False
        try:
            conn.send_packed_command(conn.pack_commands(commands))
            sent = True
            replies: list[Any] = []
            for _ in commands:
                remaining = deadline - clock()
                if remaining <= 0 or not conn.can_read(timeout=remaining):
                    raise _Late
                try:
                    replies.append(conn.read_response())
                except ResponseError as exc:  # an error reply: the connection stays in sync
                    replies.append(exc)
        except _Late:
            conn.disconnect()  # a reply may still come: this connection is out of step
            raise StoreUnavailable(
                "redis: no answer in time", outcome="unknown"
            ) from None
        except (RedisError, OSError) as exc:
            conn.disconnect()
            raise store_error(exc, "unknown" if sent else "not_applied") from exc
        finally:
            self._pool.release(conn)
        return replies

    def close(self) -> None:
        """Hand the idle connections back to the client's pool (which closes them)."""
        idle, self._idle = self._idle, []
        for link in idle:
            self._pool.release(link.conn)

    def one(self, command: Sequence[Any], deadline: float) -> Any:
        """One command; an error reply is raised as ``StoreUnavailable`` (not applied)."""
        (reply,) = self.run([command], deadline)
        if isinstance(reply, ResponseError):
            raise store_error(reply)
        return reply

    # ------------------------------------------------------------------ scripts

    def script(self, script: Script, keys: Sequence[str], args: Sequence[Any],
               deadline: float) -> Any:
        """``EVALSHA``, loading the script first if Redis does not know it (a restart)."""
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        reply = self.one_or_error(command, deadline)
        if isinstance(reply, NoScriptError):
            self.one(("SCRIPT", "LOAD", script.source), deadline)
            reply = self.one_or_error(command, deadline)
        if isinstance(reply, ResponseError):
            # a script error is raised before its first write (the scripts check first)
            raise store_error(reply)
        return reply

    def one_or_error(self, command: Sequence[Any], deadline: float) -> Any:
        (reply,) = self.run([command], deadline)
        return reply

    # ------------------------------------------------------------------ clocks

    def redis_deadline(self, deadline: float) -> str:
        """The ARGV clock spec of a script sent now: ``D<unix µs on Redis's clock>`` by
        which it must have run to write anything, early enough for its answer to be back
        by ``deadline``. Asks Redis for ``TIME`` first when its offset is not known (or
        is too old); ``StoreUnavailable`` (not applied) when there is no time left."""
        if self._offset is None or self._clock() - self._offset_at > _OFFSET_MAX_AGE:
            self._measure(deadline)
        assert self._offset is not None
        room = deadline - self._clock() - self._offset_rtt - _MARGIN
        if room <= 0:  # the answer could not come back in time: do not send
            raise StoreUnavailable("redis: no time left for the call", outcome="not_applied")
        return f"D{math.floor((self._wall() + self._offset + room) * 1_000_000)}"

    def wall(self) -> float:
        return self._wall()

    def observe_time(self, sent_at: float, received_at: float, sec: int, usec: int) -> None:
        """A reply carrying Redis ``TIME`` (``sent_at``/``received_at`` from ``wall()``)."""
        rtt = max(0.0, received_at - sent_at)
        now = self._clock()
        with self._lock:
            # half the age limit: replies keep the sample fresh, so that a busy store never
            # needs an extra TIME call
            if rtt <= self._offset_rtt or now - self._offset_at > _OFFSET_MAX_AGE / 2:
                self._offset = sec + usec / 1_000_000 - (sent_at + received_at) / 2
                self._offset_rtt = rtt
                self._offset_at = now

    def _measure(self, deadline: float) -> None:
        sent_at = self._wall()
        sec, usec = self.one(("TIME",), deadline)
        received_at = self._wall()
        with self._lock:
            self._offset_at = -math.inf  # a fresh sample replaces an old one outright
        self.observe_time(sent_at, received_at, int(sec), int(usec))
