"""``tollway serve --workers N``: real processes on shared ports, one Redis, one /metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from server_harness import Served, tollway_serve

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
quota hundred limits requests to 100 per 1h for each user
rule counted { when user.plan == "counted" enforce hundred }
rule everyone { annotate "rules" = "first" }
"""
WORKER = re.compile(r"worker (\d+) \(pid (\d+)\) serving")


def _serve_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}


def _refused(*flags: str) -> subprocess.CompletedProcess[str]:
    with tempfile.TemporaryDirectory() as scratch:  # where a default usage database goes
        return subprocess.run(
            [sys.executable, "-m", "tollway", "serve", "--http", "off", *flags],
            capture_output=True, text=True, timeout=60, env=_serve_env(), cwd=scratch,
        )


def test_memory_store_with_several_workers_is_refused_in_one_line() -> None:
    done = _refused("--workers", "2", "--listen", "127.0.0.1:0")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tollway serve: --workers 2 needs a shared store (--store redis://…): the memory "
        "store keeps counters in each process"
    ]


def test_a_memory_usage_database_with_several_workers_is_refused(tmp_path: Path) -> None:
    done = _refused("--workers", "2", "--store", "redis://127.0.0.1:1/0",
                    "--listen", "127.0.0.1:0", "--usage-db", "memory")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "tollway serve: --workers 2 needs a shared usage database (sqlite:///PATH or "
        "postgresql://…): a memory one lives in each process"
    ]


def test_a_unix_socket_with_several_workers_is_refused(tmp_path: Path) -> None:
    done = _refused("--workers", "3", "--store", "redis://127.0.0.1:1/0",
                    "--listen", f"unix:{tmp_path / 's.sock'}")
    assert done.returncode == 2
    assert "needs a TCP --listen address" in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_broken_rules_are_reported_once_and_no_worker_starts(tmp_path: Path) -> None:
    rules = tmp_path / "broken.rules"
    rules.write_text("rule r { enforce nowhere }\n")
    done = _refused("--workers", "2", "--store", "redis://127.0.0.1:1/0", "--rules", str(rules),
                    "--listen", "127.0.0.1:0")
    assert done.returncode == 1
    assert done.stderr.count("unknown quota") == 1, done.stderr
    assert "worker" not in done.stderr


def test_a_port_in_use_is_one_line(tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _refused("--workers", "2", "--store", "redis://127.0.0.1:1/0",
                        "--listen", f"127.0.0.1:{port}")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "example ruleset" not in line]
    assert lines == [f"tollway serve: cannot listen on 127.0.0.1:{port}: address already in use"]


def test_workers_reads_its_environment_variable() -> None:
    env = {**_serve_env(), "TOLLWAY_WORKERS": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "tollway", "serve"], capture_output=True, text=True,
        timeout=60, env=env,
    )
    assert done.returncode == 2
    assert "TOLLWAY_WORKERS" in done.stderr


# ------------------------------------------------------------------ a live pool


def _pids(served: Served) -> dict[int, int]:
    """Worker index -> pid of the latest 'serving' line of each worker."""
    out: dict[int, int] = {}
    for line in list(served.lines):
        if m := WORKER.search(line):
            out[int(m[1])] = int(m[2])
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


def _decide(address: str, request: pb.DecideRequest) -> pb.Decision:
    """One Decide over a connection of its own: the kernel picks the worker."""
    with grpc.insecure_channel(address) as channel:
        return pb_grpc.TollwayStub(channel).Decide(request, timeout=30)


def _scrape(served: Served) -> dict[str, float]:
    """The decisions counted and the ruleset versions exported, from one /metrics."""
    with urllib.request.urlopen(f"http://{served.http}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "tollway_decisions_total":
                out["decisions"] = out.get("decisions", 0.0) + s.value
            elif s.name == "tollway_ruleset_info":
                out["version=" + s.labels["version"]] = s.value
    return out


def _request(i: int, plan: str = "other", user: str = "u") -> pb.DecideRequest:
    entity = pb.Entity(id=user)
    entity.metadata.update({"plan": plan})
    return pb.DecideRequest(request_id=f"r{i}", user=entity, model="m")


@pytest.fixture(scope="module")
def pool(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[tuple[Served, Path]]:
    rules = tmp_path_factory.mktemp("workers") / "pool.rules"
    rules.write_text(RULES)
    prefix = f"tollway-test:workers-{os.getpid()}:"
    with tollway_serve(rules, "--workers", "2", "--store", redis_url,
                       "--key-prefix", prefix) as served:
        deadline = time.monotonic() + 30
        while len(_pids(served)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        yield served, rules


def test_each_worker_is_its_own_process_and_metrics_sum_them(
    pool: tuple[Served, Path],
) -> None:
    served, _ = pool
    pids = _pids(served)
    assert sorted(pids) == [1, 2]
    assert len(set(pids.values())) == 2 and served.proc.pid not in pids.values()
    assert all(_alive(pid) for pid in pids.values())
    before = _scrape(served).get("decisions", 0.0)
    with ThreadPoolExecutor(8) as threads:
        decisions = list(threads.map(lambda i: _decide(served.grpc, _request(i)), range(40)))
    assert all(d.allowed for d in decisions)
    # 40 connections spread by the kernel: a scrape of one worker alone would count its share
    for _ in range(6):
        assert _scrape(served)["decisions"] == before + 40


def test_a_quota_is_exact_across_workers(pool: tuple[Served, Path]) -> None:
    served, _ = pool
    with ThreadPoolExecutor(32) as threads:
        decisions = list(threads.map(
            lambda i: _decide(served.grpc, _request(i, "counted", "hot")), range(300)
        ))
    assert sum(d.allowed for d in decisions) == 100
    assert {d.reason for d in decisions if not d.allowed} == {pb.QUOTA_EXCEEDED}


def test_sighup_reloads_every_worker(pool: tuple[Served, Path]) -> None:
    served, rules = pool
    old = _decide(served.grpc, _request(0)).ruleset_version
    rules.write_text(RULES.replace('"first"', '"second"'))
    reloaded = len([line for line in served.lines if "rules reloaded" in line])
    served.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 30
    while len([line for line in served.lines if "rules reloaded" in line]) < reloaded + 2:
        assert time.monotonic() < deadline, served.log()
        time.sleep(0.05)
    answers = [_decide(served.grpc, _request(i)) for i in range(16)]
    assert {d.annotations["rules"] for d in answers} == {"second"}
    new = answers[0].ruleset_version
    assert new != old
    versions = {k for k in _scrape(served) if k.startswith("version=")}
    assert versions == {f"version={new}"}


def test_a_dead_worker_is_logged_and_started_again(pool: tuple[Served, Path]) -> None:
    served, _ = pool
    pids = _pids(served)
    counted = _scrape(served)["decisions"]
    os.kill(pids[1], signal.SIGKILL)
    served.wait_for_line(f"worker 1 (pid {pids[1]}) exited with SIGKILL; starting it again")
    deadline = time.monotonic() + 30
    while _pids(served)[1] == pids[1]:
        assert time.monotonic() < deadline, served.log()
        time.sleep(0.05)
    assert _alive(_pids(served)[1]) and _pids(served)[2] == pids[2]
    for i in range(10):
        assert _decide(served.grpc, _request(i)).allowed
    # what the dead worker counted is still counted
    assert _scrape(served)["decisions"] == counted + 10


def test_sigterm_drains_every_worker_and_exits_0(pool: tuple[Served, Path]) -> None:
    served, _ = pool
    pids = list(_pids(served).values())
    served.proc.send_signal(signal.SIGTERM)
    assert served.proc.wait(timeout=30) == 0
    assert not any(_alive(pid) for pid in pids)
    assert served.log().count("shutting down: draining in-flight calls") >= 2
