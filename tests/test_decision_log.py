"""Decision logs: one JSON line per Decide, off the hot path, rotated, bounded, private."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import grpc
from google.protobuf import struct_pb2
from server_harness import tollway_serve, write_rules

from tollway import Engine
from tollway.policy.observer import Fanout
from tollway.server.decision_log import DecisionLog, FileSink
from tollway.server.metrics import Metrics
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

RULES = """
schema user { tier: string admin, region: string, email: string }
quota hourly limits requests to 2 per 1h for each user
rule free { when user.tier == "free" enforce hourly }
rule eu { when user.region == "eu" route "eu-model" }
rule trial shadow { when user.tier == "free" route "tiny" }
"""


class BlockedSink:
    """A sink whose writes wait until released: a stalled disk."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lines: list[str] = []

    def write(self, lines: list[str]) -> None:
        self.release.wait(10)
        self.lines += lines

    def close(self) -> None:
        pass


def _engine(log: DecisionLog, metrics: Metrics | None = None) -> Engine:
    metrics = metrics or Metrics()
    return Engine.from_text(RULES, store="memory", observer=Fanout(metrics, log))


def test_each_decide_is_one_json_line_with_the_audit_fields(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    log = DecisionLog(FileSink(path, max_bytes=1 << 20, keep=2), metadata_keys=frozenset({"region"}))
    log.start()
    engine = _engine(log)
    engine.upsert_entity("user", "u1", {"tier": "free"})
    user = {"id": "u1", "metadata": {"region": "eu", "email": "a@b.c", "tier": "pro"}}
    decisions = [engine.decide({"request_id": f"r{i}", "user": user, "group": "g1",
                                "model": "m"}) for i in range(3)]
    engine.explain({"user": user, "model": "m"})  # explain is not a decision: not logged
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 3
    records = [json.loads(line) for line in lines]
    first = records[0]
    assert first["decision_id"] == decisions[0].decision_id and first["request_id"] == "r0"
    assert (first["user"], first["group"], first["model"]) == ("u1", "g1", "m")
    assert first["served_model"] == "eu-model" and first["routed"] is True
    assert first["allowed"] is True and first["reason"] == "ALLOWED"
    assert first["matched_rules"] == ["free", "eu"]
    assert first["quotas"] == [{"name": "hourly", "metric": "requests", "scope": "user",
                                "used": 1.0, "limit": 2.0, "exceeded": False}]
    assert first["ruleset_version"] == decisions[0].ruleset_version
    assert first["shadow"]["matched_rules"] == ["trial"] and first["shadow"]["model"] == "tiny"
    assert first["ignored_metadata"] == ["user.tier"]
    # metadata: only the named key, as the rules saw it (email and tier are not logged)
    assert first["metadata"] == {"user": {"region": "eu"}, "group": {}}
    assert records[2]["reason"] == "QUOTA_EXCEEDED" and records[2]["allowed"] is False
    assert first["time"].endswith("Z")
    assert path.stat().st_mode & 0o077 == 0  # owner only


def test_no_metadata_is_logged_unless_asked_for(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(FileSink(path, max_bytes=1 << 20, keep=1))
    log.start()
    _engine(log).decide({"user": {"id": "u", "metadata": {"email": "a@b.c"}}, "model": "m"})
    log.close()
    record = json.loads(path.read_text())
    assert "metadata" not in record and "a@b.c" not in path.read_text()


def test_a_stalled_sink_drops_lines_and_counts_them_never_blocking(tmp_path: Path) -> None:
    sink = BlockedSink()
    metrics = Metrics()
    log = DecisionLog(sink, buffer=5, on_dropped=metrics.decision_log_line_dropped)
    log.start()
    engine = _engine(log, metrics)
    engine.decide({"model": "m"})  # the writer takes this one and stalls on it
    for _ in range(200):
        engine.decide({"model": "m"})
    done = threading.Event()
    threading.Thread(target=lambda: (engine.decide({"model": "m"}), done.set())).start()
    assert done.wait(5), "a decision waited for its log line"
    dropped = metrics.registry.get_sample_value("tollway_decision_log_dropped_total")
    assert dropped is not None
    assert 190 <= dropped <= 197  # 1 written + at most 5 buffered (+ the race of the first)
    sink.release.set()
    log.close()
    assert len(sink.lines) + dropped == 202
    assert "tollway_decision_log_dropped_total" in metrics.exposition().decode()


def test_files_rotate_by_size_and_only_keep_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    log = DecisionLog(FileSink(path, max_bytes=2_000, keep=2))
    log.start()
    engine = _engine(log)
    for i in range(60):
        engine.decide({"request_id": f"r{i}", "model": "m"})
    log.close()
    files = sorted(p.name for p in tmp_path.iterdir())
    assert files == ["d.jsonl", "d.jsonl.1", "d.jsonl.2"]
    for name in files:
        size = (tmp_path / name).stat().st_size
        assert 0 < size <= 2_000
        for line in (tmp_path / name).read_text().splitlines():
            json.loads(line)  # whole lines only
    newest = json.loads((tmp_path / "d.jsonl").read_text().splitlines()[-1])
    assert newest["request_id"] == "r59"
    older = json.loads((tmp_path / "d.jsonl.1").read_text().splitlines()[-1])
    assert int(older["request_id"][1:]) < int(
        json.loads((tmp_path / "d.jsonl").read_text().splitlines()[0])["request_id"][1:]
    )


def test_tollway_serve_writes_the_decision_log_and_flushes_on_sigterm(tmp_path: Path) -> None:
    path = tmp_path / "decisions.jsonl"
    with tollway_serve(write_rules(tmp_path, RULES), "--decision-log", str(path),
                       "--decision-log-metadata", "region,email") as served:
        with grpc.insecure_channel(served.grpc) as channel:
            stub = pb_grpc.TollwayStub(channel)
            meta = struct_pb2.Struct()
            meta.update({"region": "eu", "email": "x@y.z"})
            for i in range(5):
                stub.Decide(pb.DecideRequest(request_id=f"r{i}", model="m",
                                             user=pb.Entity(id="u", metadata=meta)), timeout=10)
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["request_id"] for r in records] == [f"r{i}" for i in range(5)]
    assert records[0]["metadata"]["user"] == {"email": "x@y.z", "region": "eu"}


def test_each_worker_writes_its_own_log_and_checks_the_same_tokens(
    tmp_path: Path, redis_url: str
) -> None:
    """``--workers 2``: two processes never rotate one file; both enforce ``--auth``."""
    from tollway.server.auth import new_token, token_block

    token = new_token()
    auth = tmp_path / "tokens.toml"
    auth.write_text(token_block("gw", ["decide"], token))
    path = tmp_path / "decisions.jsonl"
    with tollway_serve(write_rules(tmp_path, RULES), "--workers", "2", "--store", redis_url,
                       "--key-prefix", f"tollway-test:dlog-{tmp_path.name}:",
                       "--auth", str(auth), "--decision-log", str(path)) as served:
        served.wait_for_line("auth=on")
        for i in range(12):  # a connection each: the kernel spreads them over the workers
            with grpc.insecure_channel(served.grpc) as channel:
                stub = pb_grpc.TollwayStub(channel)
                stub.Decide(pb.DecideRequest(request_id=f"r{i}", model="m"),
                            metadata=(("authorization", f"Bearer {token}"),), timeout=10)
                try:
                    stub.Decide(pb.DecideRequest(model="m"), timeout=10)
                    raise AssertionError("a call without a token was served")
                except grpc.RpcError as err:
                    assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=30) == 0
    files = sorted(p.name for p in tmp_path.glob("decisions*"))
    assert files == ["decisions-w1.jsonl", "decisions-w2.jsonl"]
    ids = [json.loads(line)["request_id"]
           for name in files for line in (tmp_path / name).read_text().splitlines()]
    assert sorted(ids) == sorted(f"r{i}" for i in range(12))


def test_standard_output_gets_whole_lines(tmp_path: Path) -> None:
    """``-``: one write per line, so workers sharing a pipe never split one another's."""
    import os

    from tollway.server.decision_log import StreamSink

    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream, os.fdopen(read_end, "rb") as reader:
        log = DecisionLog(StreamSink(stream))
        log.start()
        engine = _engine(log)
        for i in range(20):
            engine.decide({"request_id": f"r{i}", "model": "m"})
        log.close()
        stream.close()
        lines = reader.read().decode().splitlines()
    assert [json.loads(line)["request_id"] for line in lines] == [f"r{i}" for i in range(20)]
