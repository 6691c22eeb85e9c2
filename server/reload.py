"""Reload the rules when their files change or on SIGHUP; a broken file never replaces good rules.

Other files the server reads at start (the ``--auth`` token file, the TLS certificates)
are ``Watched`` alongside: re-read on SIGHUP with the rules, and by the watch when their
own files change. A file that does not load keeps what is in force, like broken rules.

Polling mtimes and sizes needs no dependency and works on every filesystem (including
the bind mounts and ConfigMap symlink swaps of containers, where inotify is unreliable).
A successful compile is swapped into the engine in one assignment; calls already running
finish on the snapshot they took. A ``RulesError`` keeps the old rules, is counted, and
every diagnostic is logged. ``Reloader.status`` holds the outcome of the last attempt
(diagnostics included) for whoever shows it, the dashboard's Rules page among them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tollway.dsl.diagnostics import Diagnostic, RulesError
from tollway.dsl.source import rule_files
from tollway.policy.engine import Engine

from .metrics import Metrics

__all__ = ["Fingerprint", "fingerprint", "ReloadOutcome", "ReloadStatus", "Reloader"]
__all__ = ["Fingerprint", "fingerprint", "files_fingerprint", "Watched", "Reloader"]

log = logging.getLogger("tollway.server.reload")

Fingerprint = tuple[tuple[str, int, int], ...]


def fingerprint(path: str | Path) -> Fingerprint:
    """(name, mtime_ns, size) of every file the rules are loaded from (``rule_files``)."""
    try:
        files = rule_files(path)  # the very files a reload reads: hidden ones are skipped
    except (RulesError, OSError):
        return ()
    return files_fingerprint(files)


def files_fingerprint(paths: Sequence[Path]) -> Fingerprint:
    """(name, mtime_ns, size) of each file; (-1, -1) for one that cannot be read."""
    out = []
    for f in paths:
        try:
            st = f.stat()  # follows symlinks: a swapped link target counts as a change
        except OSError:
            out.append((str(f), -1, -1))
            continue
        out.append((str(f), st.st_mtime_ns, st.st_size))
    return tuple(out)


@dataclass(slots=True)
class Watched:
    """Files reloaded with the rules: ``load()`` re-reads them, raising to keep what is in force."""

    name: str  # for the log: "tokens", "certificates"
    paths: tuple[Path, ...]
    load: Callable[[], Any]
    seen: Fingerprint = field(default=())

    def __post_init__(self) -> None:
        if not self.seen:
            self.seen = files_fingerprint(self.paths)

    def changed(self) -> bool:
        return files_fingerprint(self.paths) != self.seen
@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """One attempt to load the rules: when (unix seconds), why, whether the new rules are
    in force, the version in force after it, and what the compiler said.

    ``errors`` are the diagnostics of a ruleset that did not compile; ``message`` says why
    an attempt failed without any (the rules path unreadable, say); ``warnings`` are those
    of the ruleset in force after a successful attempt.
    """

    time: float
    why: str
    ok: bool
    version: str
    errors: tuple[Diagnostic, ...] = ()
    warnings: tuple[Diagnostic, ...] = ()
    message: str = ""


class ReloadStatus:
    """The outcome of the last attempt to load the rules (the start-up load first)."""

    def __init__(self, first: ReloadOutcome) -> None:
        self._last = first

    @property
    def last(self) -> ReloadOutcome:
        return self._last

    def record(self, outcome: ReloadOutcome) -> None:
        self._last = outcome  # one assignment: readers on other threads see old or new


class Reloader:
    """Watches ``path`` every ``interval`` seconds (0: only on request) and reloads the engine."""

    def __init__(
        self,
        engine: Engine,
        path: str | Path,
        metrics: Metrics,
        *,
        interval: float = 1.0,
        initial: Fingerprint | None = None,
        scan: Callable[[str | Path], Fingerprint] = fingerprint,
        watched: Sequence[Watched] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._engine = engine
        self._path = path
        self._metrics = metrics
        self._interval = interval
        self._scan = scan
        self._seen = scan(path) if initial is None else initial
        self._watched = tuple(watched)
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None
        self._pending: set[asyncio.Task[bool]] = set()
        self._clock = clock
        ruleset = engine.ruleset
        self.status = ReloadStatus(
            ReloadOutcome(clock(), "start", True, ruleset.version, warnings=ruleset.warnings)
        )

    def _failed(self, why: str, errors: tuple[Diagnostic, ...] = (), message: str = "") -> None:
        self._metrics.reload_result(False)
        self.status.record(ReloadOutcome(
            self._clock(), why, False, self._engine.ruleset.version, errors, message=message
        ))

    async def reload(self, why: str) -> bool:
        """Reload the rules and every watched file; returns whether the new rules are in force."""
        ok = await self.reload_rules(why)
        for w in self._watched:
            await self.reload_watched(w, why)
        return ok

    async def reload_watched(self, watched: Watched, why: str) -> bool:
        """Re-read one watched set of files; on failure what is in force stays."""
        async with self._lock:
            watched.seen = files_fingerprint(watched.paths)
            loop = asyncio.get_running_loop()
            try:
                await loop.run_in_executor(None, watched.load)
            except (ValueError, OSError) as exc:
                log.error("reload of %s (%s) failed, keeping those in force: %s", watched.name, why, exc)
                return False
            log.info("%s reloaded (%s)", watched.name, why)
            return True

    async def reload_rules(self, why: str) -> bool:
        """Compile and swap; returns whether the new rules are in force. One at a time."""
        async with self._lock:
            self._seen = self._scan(self._path)
            loop = asyncio.get_running_loop()
            try:  # compiling can take a while: keep it off the event loop
                ruleset = await loop.run_in_executor(None, self._engine.reload)
            except RulesError as exc:
                self._failed(why, tuple(exc.errors))
                log.error(
                    "reload (%s) failed, keeping ruleset %s: %d error(s)",
                    why, self._engine.ruleset.version, len(exc.errors),
                )
                for d in exc.errors:
                    log.error("%s", d.render())
                return False
            except Exception as exc:
                self._failed(why, message=str(exc) or type(exc).__name__)
                log.error(
                    "reload (%s) failed, keeping ruleset %s: %s",
                    why, self._engine.ruleset.version, exc, exc_info=not isinstance(exc, OSError),
                )
                return False
            self._metrics.reload_result(True)
            self._metrics.ruleset_loaded(ruleset)
            self.status.record(ReloadOutcome(
                self._clock(), why, True, ruleset.version, warnings=ruleset.warnings
            ))
            log.info(
                "rules reloaded (%s): version %s, %d rules", why, ruleset.version, len(ruleset.rules)
            )
            for w in ruleset.warnings:
                log.warning("%s", w.render())
            return True

    def request(self, why: str = "SIGHUP") -> None:
        """Schedule a reload from a signal handler or any code on the event loop."""
        task = asyncio.get_running_loop().create_task(self.reload(why))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def poll_once(self) -> bool | None:
        """Reload what changed since the last look; the rules' outcome, None when they did not change."""
        for w in self._watched:
            if w.changed():
                await self.reload_watched(w, f"{w.name} changed")
        if self._scan(self._path) == self._seen:
            return None
        return await self.reload_rules("rules changed")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                await self.poll_once()
            except Exception:  # never let the watcher die
                log.exception("rules watcher failed")

    def start(self) -> None:
        if self._interval > 0 and self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        tasks = [t for t in (self._task, *self._pending) if t is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._task = None
