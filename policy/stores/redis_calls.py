"""Redis calls that never wait past a deadline, and say what is known when they fail.

redis-py waits for a reply up to the connection's socket timeout, one timeout per
command. A decision has one budget (the store timeout) for all its Redis work, starting
when the call reached the server, so ``RedisCalls`` sends commands on a pooled connection
and polls for each reply only until the deadline. A call that fails says whether it had
any effect:

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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.exceptions import AuthenticationError, NoScriptError, RedisError, ResponseError

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
        clock = self._clock
        if deadline - clock() <= 0:
            raise StoreUnavailable("redis: no time left for the call", outcome="not_applied")
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
