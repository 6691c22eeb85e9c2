"""``tollway serve`` as a real process: start-up, calls, SIGHUP reload, SIGTERM drain, exit codes."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import free_user, write_rules

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

READY = re.compile(r"tollway serving: grpc=(?P<grpc>\S+) http=(?P<http>\S+) .*version=(?P<version>\S+)")


@dataclass
class Served:
    proc: subprocess.Popen[str]
    grpc: str
    http: str
    version: str
    lines: list[str] = field(default_factory=list)

    def log(self) -> str:
        return "\n".join(self.lines)

    def wait_for_line(self, pattern: str, timeout: float = 20) -> str:
        """Block until the server logs a line containing ``pattern``."""
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            for line in self.lines[seen:]:
                if pattern in line:
                    return line
            seen = len(self.lines)
            time.sleep(0.02)
        raise AssertionError(f"no log line with {pattern!r}:\n{self.log()}")


def _pump(proc: subprocess.Popen[str], lines: list[str], ready: threading.Event) -> None:
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(line.rstrip("\n"))
        if READY.search(line):
            ready.set()
    ready.set()  # process ended


@contextmanager
def tollway_serve(rules: Path, *extra: str, listen: str = "127.0.0.1:0") -> Iterator[Served]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "tollway", "serve", "--rules", str(rules), "--listen", listen,
         "--http", "127.0.0.1:0", "--reload-interval", "0", "--grace", "10", *extra],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
    )
    lines: list[str] = []
    ready = threading.Event()
    threading.Thread(target=_pump, args=(proc, lines, ready), daemon=True).start()
    try:
        ready.wait(timeout=30)
        match = next((m for line in lines if (m := READY.search(line))), None)
        if match is None:
            raise AssertionError("tollway serve did not start:\n" + "\n".join(lines))
        yield Served(proc, match["grpc"], match["http"], match["version"], lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_serves_decide_over_a_real_channel_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with tollway_serve(write_rules(tmp_path)) as served:
        with grpc.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.TollwayStub(channel)
            d = stub.Decide(pb.DecideRequest(user=free_user("u1"), model="m"), timeout=10)
            assert d.allowed and d.ruleset_version == served.version
        with urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10) as resp:
            assert b"tollway_decisions_total" in resp.read()
        with urllib.request.urlopen(f"http://{served.http}/readyz", timeout=10) as resp:
            assert resp.status == 200
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0, served.log()
        served.wait_for_line("stopped")


def test_sigterm_drains_calls_in_flight(tmp_path: Path) -> None:
    """Calls already accepted finish with OK; calls arriving during the drain are UNAVAILABLE."""
    with tollway_serve(write_rules(tmp_path)) as served:
        channel = grpc.insecure_channel(served.grpc)
        stub = pb_grpc.TollwayStub(channel)
        stub.Decide(pb.DecideRequest(model="warm-up"), timeout=10)
        futures: list[Future[Any]] = []
        for i in range(400):
            futures.append(stub.Decide.future(
                pb.DecideRequest(request_id=f"r{i}", user=free_user(f"user-{i}"), model="m"),
                timeout=30,
            ))
            if i == 200:
                served.proc.send_signal(signal.SIGTERM)
        codes = []
        for f in futures:
            try:
                f.result()
                codes.append(grpc.StatusCode.OK)
            except grpc.RpcError as err:
                codes.append(err.code())
        channel.close()
        assert served.proc.wait(timeout=30) == 0, served.log()
        assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, codes
        # a call cut short by the shutdown would end CANCELLED or INTERNAL: none may
        assert codes.count(grpc.StatusCode.OK) > 0
        served.wait_for_line("draining in-flight calls")


def test_sighup_reloads_and_a_broken_file_is_kept_out(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    with tollway_serve(path) as served, grpc.insecure_channel(served.grpc) as channel:
        stub = pb_grpc.TollwayStub(channel)
        path.write_text('default deny "closed"\n')
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("rules reloaded")
        d = stub.Decide(pb.DecideRequest(model="m"), timeout=10)
        assert d.reason == pb.DEFAULT_DENY and d.ruleset_version != served.version

        path.write_text("default allow\nrule r { enforce missing_quota }\n")
        served.proc.send_signal(signal.SIGHUP)
        served.wait_for_line("failed, keeping ruleset")
        served.wait_for_line(f"{path}:2:")
        assert stub.Decide(pb.DecideRequest(model="m"), timeout=10).reason == pb.DEFAULT_DENY
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0


def test_watches_the_rules_file(tmp_path: Path) -> None:
    path = write_rules(tmp_path)
    with tollway_serve(path, "--reload-interval", "0.05") as served:
        path.write_text('default deny "closed"\n')
        served.wait_for_line("rules reloaded")
        served.proc.send_signal(signal.SIGINT)
        assert served.proc.wait(timeout=30) == 0


def test_unix_socket(tmp_path: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="tw") as short:
        listen = f"unix:{short}/tollway.sock"
        with tollway_serve(write_rules(tmp_path), listen=listen) as served:
            assert served.grpc == listen
            with grpc.insecure_channel(listen) as channel:
                d = pb_grpc.TollwayStub(channel).Decide(pb.DecideRequest(model="m"), timeout=10)
                assert d.allowed
            served.proc.send_signal(signal.SIGTERM)
            assert served.proc.wait(timeout=30) == 0


def test_bad_rules_exit_1_with_diagnostics(tmp_path: Path) -> None:
    path = write_rules(tmp_path, "default allow\nrule r {\n    enforce nope\n}\n")
    result = subprocess.run(
        [sys.executable, "-m", "tollway", "serve", "--rules", str(path),
         "--listen", "127.0.0.1:0", "--http", "off"],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert f"{path}:3:" in result.stderr and "nope" in result.stderr
    assert "not starting" in result.stderr


def test_missing_rules_flag_is_a_usage_error(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    result = subprocess.run(
        [sys.executable, "-m", "tollway", "serve", "--listen", "127.0.0.1:0"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 2 and "--rules" in result.stderr


def test_address_in_use_exits_1(tmp_path: Path) -> None:
    with tollway_serve(write_rules(tmp_path)) as first:
        result = subprocess.run(
            [sys.executable, "-m", "tollway", "serve", "--rules", str(write_rules(tmp_path)),
             "--listen", first.grpc, "--http", "off"],
            capture_output=True, text=True, timeout=60,
        )
        assert result.returncode == 1, result.stderr
        assert "cannot listen" in result.stderr
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 0


@pytest.mark.parametrize("flag", ["TOLLWAY_RULES"])
def test_flags_read_the_environment(tmp_path: Path, flag: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env[flag] = str(write_rules(tmp_path, "default allow\nrule r {\n    enforce nope\n}\n"))
    result = subprocess.run(
        [sys.executable, "-m", "tollway", "serve", "--listen", "127.0.0.1:0", "--http", "off"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 1 and "nope" in result.stderr
