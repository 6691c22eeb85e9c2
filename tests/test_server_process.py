"""``tollway serve`` as a real process: start-up, calls, SIGHUP reload, SIGTERM drain, exit codes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import urllib.request
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest
from server_harness import free_user, tollway_serve, write_rules

from tollway.server.serve import builtin_rules
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc


def test_serves_decide_over_a_real_channel_and_exits_0_on_sigterm(tmp_path: Path) -> None:
    with tollway_serve(write_rules(tmp_path), "--http-idle-timeout", "0.5") as served:
        host, port = served.http.rsplit(":", 1)
        silent = socket.create_connection((host, int(port)), timeout=10)
        with grpc.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.TollwayStub(channel)
            d = stub.Decide(pb.DecideRequest(user=free_user("u1"), model="m"), timeout=10)
            assert d.allowed and d.ruleset_version == served.version
        with urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10) as resp:
            assert b"tollway_decisions_total" in resp.read()
        with urllib.request.urlopen(f"http://{served.http}/readyz", timeout=10) as resp:
            assert resp.status == 200
        assert silent.recv(1) == b""  # closed by the server: it never sent a request
        silent.close()
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


def test_the_built_in_ruleset_is_the_example_file() -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"
    assert builtin_rules().read_bytes() == example.read_bytes()


def test_without_rules_it_serves_the_built_in_example_and_says_so() -> None:
    with tollway_serve(None) as served, grpc.insecure_channel(served.grpc) as channel:
        assert "serving the built-in example ruleset" in served.log()
        d = pb_grpc.TollwayStub(channel).Decide(
            pb.DecideRequest(user=free_user("u1"), model="openai/gpt-5"), timeout=10
        )
        assert (d.allowed, d.model) == (True, "openai/gpt-4.1-mini")  # examples/gateway.rules
        assert "free_hourly" in [q.name for q in d.quotas]


def test_address_in_use_is_one_clean_line_and_exit_1(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("TOLLWAY_") and not k.startswith("GRPC_")}
    with tollway_serve(write_rules(tmp_path)) as first:
        for fmt in ("text", "json"):
            result = subprocess.run(
                [sys.executable, "-m", "tollway", "serve", "--rules",
                 str(write_rules(tmp_path, "default allow\n", "quiet.rules")),
                 "--listen", first.grpc, "--http", "off",
                 "--log-format", fmt],
                capture_output=True, text=True, timeout=60, env=env,
                cwd=tmp_path,  # its default usage database is made before the port fails
            )
            assert result.returncode == 1, result.stderr
            lines = result.stderr.splitlines()
            assert len(lines) == 1, result.stderr  # no gRPC core line before it
            message = json.loads(lines[0])["message"] if fmt == "json" else lines[0]
            assert message.endswith(f"cannot listen on {first.grpc}: address already in use")
        first.proc.send_signal(signal.SIGTERM)
        assert first.proc.wait(timeout=30) == 0


def test_json_logs_and_no_grpc_lines_at_debug(tmp_path: Path) -> None:
    with tollway_serve(
        write_rules(tmp_path), "--log-format", "json", "--log-level", "debug"
    ) as served:
        with grpc.insecure_channel(served.grpc) as channel:
            pb_grpc.TollwayStub(channel).Decide(pb.DecideRequest(model="m"), timeout=10)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0
    records = [json.loads(line) for line in served.lines]  # every line is one JSON object
    assert {r["logger"].split(".")[0] for r in records} == {"tollway"}
    ready = next(r for r in records if r["message"].startswith("tollway serving"))
    assert ready["level"] == "info" and ready["grpc"] == served.grpc
    assert ready["rule_count"] == 5 and ready["time"].endswith("Z")
    assert records[-1]["message"] == "stopped"


@pytest.mark.parametrize("flag", ["TOLLWAY_RULES"])
def test_flags_read_the_environment(tmp_path: Path, flag: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env[flag] = str(write_rules(tmp_path, "default allow\nrule r {\n    enforce nope\n}\n"))
    result = subprocess.run(
        [sys.executable, "-m", "tollway", "serve", "--listen", "127.0.0.1:0", "--http", "off"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    assert result.returncode == 1 and "nope" in result.stderr


def test_usage_is_durable_in_a_sqlite_file(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'usage.db'}"
    rules = write_rules(tmp_path)
    with tollway_serve(rules, "--usage-db", db) as served:
        assert f"usage_db={db}" in served.log()
        with grpc.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.TollwayStub(channel)
            for i in range(5):
                stub.Report(pb.UsageReport(request_id=f"a{i}", user=pb.Entity(id="u"),
                                           model="m", cost_usd=0.5))
        served.proc.send_signal(signal.SIGTERM)  # the shutdown writes what is waiting
        assert served.proc.wait(timeout=30) == 0
    with tollway_serve(rules, "--usage-db", db) as again:  # a restart keeps every report
        url = f"http://{again.http}/v1/usage/users/u"
        with urllib.request.urlopen(url, timeout=10) as resp:
            data = json.loads(resp.read())
        assert (data["request_count"], data["total_cost"]) == (5, 2.5)
        with urllib.request.urlopen(f"http://{again.http}/v1/activity", timeout=10) as resp:
            lines = resp.read().decode().splitlines()
        assert [json.loads(line)["request_id"] for line in lines] == [f"a{i}" for i in range(5)][::-1]


def _tollway(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    return subprocess.run([sys.executable, "-m", "tollway", *argv], capture_output=True,
                          text=True, timeout=60, env=env)


def test_db_upgrade_and_a_database_newer_than_this_tollway(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "usage.db"
    db = f"sqlite:///{path}"
    first = _tollway("db", "upgrade", "--usage-db", db)
    assert (first.returncode, first.stdout) == (0, f"{db}: migrated to schema revision 0002\n")
    again = _tollway("db", "upgrade", "--usage-db", db)
    assert (again.returncode, again.stdout) == (0, f"{db}: already at schema revision 0002\n")
    with sqlite3.connect(path) as conn:
        conn.execute("UPDATE tollway_usage_version SET version_num = '0099'")
    newer = _tollway("db", "upgrade", "--usage-db", db)
    assert newer.returncode == 1 and "newer tollway" in newer.stderr
    serve = _tollway("serve", "--rules", str(write_rules(tmp_path)), "--listen", "127.0.0.1:0",
                     "--http", "off", "--usage-db", db)
    assert serve.returncode == 1, serve.stderr
    assert "'0099'" in serve.stderr and "newer tollway" in serve.stderr
    bad = _tollway("db", "upgrade", "--usage-db", "mysql://x")
    assert bad.returncode == 2 and "usage_db:" in bad.stderr
    zero = _tollway("serve", "--rules", str(write_rules(tmp_path)), "--listen", "127.0.0.1:0",
                    "--http", "off", "--usage-db", "memory", "--usage-retention", "0")
    assert zero.returncode == 1 and "usage_retention" in zero.stderr
