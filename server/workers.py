"""``tollway serve --workers N``: N server processes on the same gRPC and HTTP ports.

One Python process serves one core. With ``--workers N`` (N > 1) the ``serve`` process
becomes a supervisor that serves nothing itself:

- it reserves the gRPC and HTTP ports with ``SO_REUSEPORT`` (a bound socket that never
  listens, the way grpc's multiprocessing example does: port 0 becomes one real port
  for every worker), then starts N workers, each a full ``tollway serve`` on the shared
  store that binds the same ports with ``SO_REUSEPORT``; the kernel spreads new
  connections over the workers;
- it gives the workers a private ``PROMETHEUS_MULTIPROC_DIR`` so that ``/metrics``,
  whichever worker answers it, sums every worker (prometheus_client's multiprocess mode);
- SIGHUP is passed on to every worker (each reloads its rules); SIGTERM and SIGINT are
  passed on as SIGTERM (each drains its in-flight calls), and the supervisor exits 0
  once every worker has exited 0;
- a worker that dies is logged and started again (after a pause that grows while it
  keeps dying young).

The memory store keeps counters per process, so N > 1 needs a shared store. Workers are
started with the ``spawn`` method: each imports tollway afresh, after the supervisor set
the metrics directory in the environment (prometheus_client reads it at import).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any

__all__ = ["MULTIPROC_ENV", "check_workers", "supervise", "reserve_port"]

log = logging.getLogger("tollway.server")

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# a worker that dies sooner than this after its start is "dying young": the pause
# before the next start doubles, up to _MAX_PAUSE
_YOUNG = 10.0
_FIRST_PAUSE = 0.2
_MAX_PAUSE = 10.0
_START_TIMEOUT = 120.0


def check_workers(workers: int, store: str, listen: str, usage_db: str = "off") -> str | None:
    """Why ``workers`` processes cannot serve this configuration, or None when they can."""
    if workers <= 1:
        return None
    if store == "memory":
        return (
            f"--workers {workers} needs a shared store (--store redis://…): the memory "
            "store keeps counters in each process"
        )
    if usage_db == "memory":
        return (
            f"--workers {workers} needs a shared usage database (sqlite:///PATH or "
            "postgresql://…): a memory one lives in each process"
        )
    if listen.startswith("unix:"):
        return f"--workers {workers} needs a TCP --listen address (HOST:PORT), not {listen}"
    return None


def _host_port(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def reserve_port(address: str) -> tuple[socket.socket, str]:
    """Bind ``HOST:PORT`` with ``SO_REUSEPORT`` without listening; return the socket and
    the address with the real port. Raises ``OSError`` (address in use, …)."""
    host, port = _host_port(address)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        raise OSError(f"cannot listen on {address}: {reason[:1].lower()}{reason[1:]}") from exc
    real = sock.getsockname()[1]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"{shown}:{real}"


@dataclass(slots=True)
class _Worker:
    index: int
    process: Any  # multiprocessing.context.SpawnProcess
    ready: Connection
    started: float
    pause: float = _FIRST_PAUSE  # before the next start, if this one dies young
    serving: dict[str, Any] | None = None


class _Supervisor:
    """Starts, watches, restarts and stops the workers (see the module docstring)."""

    def __init__(
        self,
        args: argparse.Namespace,
        target: Callable[[argparse.Namespace, int, Connection], None],
        metrics_dir: str,
    ) -> None:
        self._args = args
        self._target = target
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._workers: dict[int, _Worker] = {}
        self._due: dict[int, tuple[float, float]] = {}  # index -> (start at, pause)
        self._signals: list[int] = []

    # ------------------------------------------------------------------ workers

    def _start(self, index: int, pause: float = _FIRST_PAUSE) -> _Worker:
        receive, send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=self._target, args=(self._args, index, send), name=f"tollway-worker-{index}",
        )
        process.start()
        send.close()  # the worker holds the other copy; EOF here means it is gone
        worker = _Worker(index, process, receive, time.monotonic(), pause)
        self._workers[index] = worker
        return worker

    def _read_ready(self, worker: _Worker) -> None:
        try:
            worker.serving = worker.ready.recv()
        except (EOFError, OSError):
            worker.serving = None
        worker.ready.close()
        if worker.serving is not None:
            log.info("worker %d (pid %d) serving", worker.index, worker.process.pid,
                     extra={"worker": worker.index, "pid": worker.process.pid})

    def _reap(self, worker: _Worker, restart: bool) -> None:
        """A worker exited: forget its live gauges; schedule its restart."""
        from prometheus_client import multiprocess

        process = worker.process
        process.join()
        del self._workers[worker.index]
        with contextlib.suppress(OSError):
            multiprocess.mark_process_dead(process.pid, self._metrics_dir)
        if not restart:
            return
        young = time.monotonic() - worker.started < _YOUNG
        pause = min(worker.pause * 2, _MAX_PAUSE) if young else _FIRST_PAUSE
        wait_for = worker.pause if young else 0.0
        log.warning(
            "worker %d (pid %d) exited with %s; starting it again in %.1fs",
            worker.index, process.pid, _exit_text(process.exitcode), wait_for,
            extra={"worker": worker.index, "pid": process.pid, "exitcode": process.exitcode},
        )
        self._due[worker.index] = (time.monotonic() + wait_for, pause)

    # ------------------------------------------------------------------ signals

    def _on_signal(self, signum: int, frame: object) -> None:
        self._signals.append(signum)

    @contextlib.contextmanager
    def _signal_wakeup(self) -> Iterator[socket.socket]:
        """Signals wake ``wait`` through a socket (``signal.set_wakeup_fd``)."""
        receive, send = socket.socketpair()
        send.setblocking(False)
        receive.setblocking(False)
        old_fd = signal.set_wakeup_fd(send.fileno())
        handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
        old = {s: signal.signal(s, self._on_signal) for s in handled}
        try:
            yield receive
        finally:
            for s, handler in old.items():
                signal.signal(s, handler)
            signal.set_wakeup_fd(old_fd)
            receive.close()
            send.close()

    def _send(self, signum: int) -> None:
        for worker in list(self._workers.values()):
            if worker.process.is_alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(worker.process.pid, signum)

    # ------------------------------------------------------------------ run

    def run(self, announce: Callable[[dict[str, Any]], None]) -> int:
        count = self._args.workers
        with self._signal_wakeup() as wakeup:
            for index in range(1, count + 1):
                self._start(index)
            if not self._wait_started(wakeup):
                self._stop_all(signal.SIGTERM)
                return 1
            first = next(iter(self._workers.values())).serving or {}
            announce(first)
            self._watch(wakeup)
        return self._drain()

    def _wait_started(self, wakeup: socket.socket) -> bool:
        """Every worker serving: True; a worker that exits first, or a stop signal: False."""
        deadline = time.monotonic() + _START_TIMEOUT
        while any(w.serving is None for w in self._workers.values()):
            pending = {w.ready: w for w in self._workers.values() if w.serving is None}
            sentinels = {w.process.sentinel: w for w in self._workers.values()}
            ready = wait([*pending, *sentinels, wakeup], timeout=deadline - time.monotonic())
            if not ready:
                log.error("workers did not start within %gs", _START_TIMEOUT)
                return False
            for item in ready:
                if item in pending:
                    self._read_ready(pending[item])
            if self._take_signals(wakeup, starting=True):
                return False
            for item in ready:
                worker = sentinels.get(item)
                if worker is not None and worker.serving is None:
                    worker.process.join()
                    log.error("worker %d exited with %s before serving; not starting",
                              worker.index, _exit_text(worker.process.exitcode))
                    return False
        return True

    def _take_signals(self, wakeup: socket.socket, *, starting: bool = False) -> bool:
        """Act on signals received; True once a stop was asked for."""
        with contextlib.suppress(BlockingIOError):
            while wakeup.recv(512):
                pass
        stop = False
        while self._signals:
            signum = self._signals.pop(0)
            if signum == signal.SIGHUP and not starting:
                log.info("SIGHUP: reloading the rules of every worker")
                self._send(signal.SIGHUP)
            elif signum in (signal.SIGTERM, signal.SIGINT):
                stop = True
        return stop

    def _watch(self, wakeup: socket.socket) -> None:
        """Serve until SIGTERM/SIGINT, restarting workers that die."""
        while True:
            now = time.monotonic()
            for index, (at, pause) in list(self._due.items()):
                if at <= now:
                    del self._due[index]
                    self._start(index, pause)
            pending = {w.ready: w for w in self._workers.values() if w.serving is None
                       and not w.ready.closed}
            sentinels = {w.process.sentinel: w for w in self._workers.values()}
            timeout = min((at for at, _ in self._due.values()), default=now + 60) - now
            ready = wait([*pending, *sentinels, wakeup], timeout=max(0.0, timeout))
            for item in ready:
                if item in pending:
                    self._read_ready(pending[item])
            if self._take_signals(wakeup):
                return
            for item in ready:
                worker = sentinels.get(item)
                if worker is not None:
                    self._reap(worker, restart=True)

    def _drain(self) -> int:
        """SIGTERM to every worker, then wait for each; 0 when every one exited 0.

        A second SIGTERM or SIGINT to the supervisor stops it at once (default action);
        its workers then get SIGTERM from the kernel (a parent-death signal) and, being
        in their drain already, stop at once too.
        """
        for s in (signal.SIGTERM, signal.SIGINT):
            signal.signal(s, signal.SIG_DFL)
        self._due.clear()
        log.info("shutting down: draining %d workers (grace %gs)", len(self._workers),
                 self._args.grace)
        self._send(signal.SIGTERM)
        deadline = time.monotonic() + self._args.grace + 10.0
        codes: list[int | None] = []
        for worker in list(self._workers.values()):
            worker.process.join(max(0.0, deadline - time.monotonic()))
            if worker.process.exitcode is None:
                log.error("worker %d did not stop in time; killing it", worker.index)
                worker.process.kill()
                worker.process.join()
            codes.append(worker.process.exitcode)
            self._reap(worker, restart=False)
        failed = [c for c in codes if c != 0]
        if failed:
            log.error("stopped; %d worker(s) exited with an error", len(failed))
            return 1
        log.info("stopped")
        return 0

    def _stop_all(self, signum: int) -> None:
        self._send(signum)
        for worker in list(self._workers.values()):
            worker.process.join(10.0)
            if worker.process.exitcode is None:
                worker.process.kill()
                worker.process.join()
            self._reap(worker, restart=False)


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"code {code}"


def supervise(
    args: argparse.Namespace,
    target: Callable[[argparse.Namespace, int, Connection], None],
    announce: Callable[[dict[str, Any]], None],
) -> int:
    """Reserve the ports, run ``args.workers`` copies of ``target`` and supervise them.

    ``target(worker_args, index, ready)`` serves on the reserved addresses and sends
    ``ready`` one mapping (its ``grpc``/``http`` addresses, ruleset ``version``, …) once
    it serves. ``announce`` is called with the first worker's mapping once all serve.
    Returns the exit code. Raises ``OSError`` when a port cannot be reserved.
    """
    held: list[socket.socket] = []
    metrics_dir = tempfile.mkdtemp(prefix="tollway-metrics-")
    previous = os.environ.get(MULTIPROC_ENV)
    try:
        grpc_sock, listen = reserve_port(args.listen)
        held.append(grpc_sock)
        http = args.http
        if http and http.lower() != "off":
            http_sock, http = reserve_port(http)
            held.append(http_sock)
        worker_args = argparse.Namespace(**{**vars(args), "listen": listen, "http": http})
        os.environ[MULTIPROC_ENV] = metrics_dir  # inherited by the spawned workers
        return _Supervisor(worker_args, target, metrics_dir).run(announce)
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        for sock in held:
            sock.close()
        shutil.rmtree(metrics_dir, ignore_errors=True)


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when its parent dies (Linux), so that a
    killed supervisor never leaves workers serving on its ports."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM, 0, 0, 0)
