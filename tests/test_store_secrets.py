"""The Redis password stays out of sight, and a wrong one never makes tollway fail open.

Against a private redis-server that requires a password, with ``tollway serve`` as a process.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc
import pytest
from conftest import RedisServer
from grpc_health.v1 import health_pb2, health_pb2_grpc
from server_harness import Served, tollway_serve, write_rules

from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

PASSWORD = "s3cret-Pa55word-for-tests"


def _require_password(server: RedisServer, password: str, current: str | None = None) -> None:
    client = server.client(password=current)
    client.config_set("requirepass", password)
    client.close()


def _readyz(served: Served) -> tuple[int, dict[str, object]]:
    try:
        with urllib.request.urlopen(f"http://{served.http}/readyz", timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _health(channel: grpc.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    return int(stub.Check(health_pb2.HealthCheckRequest(service="tollway.v1.Tollway"),
                          timeout=10).status)


def test_a_wrong_password_is_not_ready_never_fails_open_and_recovers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    _require_password(redis_server, "the-real-one")
    with tollway_serve(write_rules(tmp_path), "--store", redis_server.url,
                       env={"TOLLWAY_STORE_PASSWORD": PASSWORD}) as served:
        line = served.wait_for_line("NOT READY")
        assert "counter store refused the credentials" in line and "UNAVAILABLE" in line
        with grpc.insecure_channel(served.grpc) as channel:
            assert _health(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
            stub = pb_grpc.TollwayStub(channel)
            with pytest.raises(grpc.RpcError) as err:
                stub.Decide(pb.DecideRequest(user=pb.Entity(id="u"), model="m"), timeout=10)
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert err.value.details().startswith("counter store unreachable;")
            status, body = _readyz(served)
            assert status == 503 and body["reason"] == "counter store refused the credentials"
            # the operator fixes Redis (or the secret): tollway notices by itself
            _require_password(redis_server, PASSWORD, current="the-real-one")
            served.wait_for_line("ready again", timeout=30)
            assert _health(channel) == health_pb2.HealthCheckResponse.SERVING
            d = stub.Decide(pb.DecideRequest(user=pb.Entity(id="u"), model="m"), timeout=10)
            assert d.allowed and _readyz(served)[0] == 200
        assert PASSWORD not in served.log()


def test_a_password_file_keeps_the_password_out_of_ps_and_the_log(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    _require_password(redis_server, PASSWORD)
    secret = tmp_path / "redis-password"
    secret.write_text(PASSWORD + "\n")
    with tollway_serve(write_rules(tmp_path), "--store", redis_server.url,
                       "--store-password-file", str(secret)) as served:
        with grpc.insecure_channel(served.grpc) as channel:
            d = pb_grpc.TollwayStub(channel).Decide(
                pb.DecideRequest(user=pb.Entity(id="u"), model="m"), timeout=10
            )
            assert d.allowed
        assert _readyz(served)[0] == 200
        cmdline = Path(f"/proc/{served.proc.pid}/cmdline").read_bytes()
        assert PASSWORD.encode() not in cmdline
        assert PASSWORD not in served.log()


def test_the_password_is_given_once_and_only_for_redis(tmp_path: Path) -> None:
    from tollway import Engine
    from tollway.policy.stores import StoreOptions
    from tollway.server.cli import parse_args
    from tollway.server.startup import Refused, store_password

    secret = tmp_path / "pw"
    secret.write_text("from-file\n")
    redis_url = ["--store", "redis://127.0.0.1:1/0"]
    file_flag = ["--store-password-file", str(secret)]
    assert store_password(parse_args(["serve", *redis_url, *file_flag], {})) == "from-file"
    env = {"TOLLWAY_STORE_PASSWORD": "from-env"}
    assert store_password(parse_args(["serve", *redis_url], env)) == "from-env"
    for argv, environ, message in (
        ([*redis_url, *file_flag], env, "give one"),
        ([], env, "for a Redis store"),
    ):
        with pytest.raises(Refused, match=message):
            store_password(parse_args(["serve", *argv], environ))
    with pytest.raises(ValueError, match="give it once") as err:
        Engine.from_text("default allow", store="redis://:inurl@127.0.0.1:1/0",
                         store_options=StoreOptions(password="from-file"))
    assert "from-file" not in repr(StoreOptions(password="from-file"))
    assert "inurl" not in str(err.value)
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SystemExit):  # a usage error, naming the file, never its content
        parse_args(["serve", "--store-password-file", str(empty)], {})


def test_an_unreachable_store_is_named_only_in_the_log(tmp_path: Path) -> None:
    """/readyz and Decision.message say what is wrong, never where Redis is."""
    port = 1  # nothing listens there
    rules = write_rules(tmp_path, "quota q limits requests to 5 per 1h for each user\n"
                                  "rule r { enforce q }\n")
    with tollway_serve(rules, "--store", f"redis://127.0.0.1:{port}/0") as served:
        status, body = _readyz(served)
        assert status == 503 and body["reason"] == "counter store unreachable"
        with grpc.insecure_channel(served.grpc) as channel:
            d = pb_grpc.TollwayStub(channel).Decide(
                pb.DecideRequest(user=pb.Entity(id="u"), model="m"), timeout=10
            )
        assert d.allowed and d.message == "counter store unreachable; quotas not enforced"
        deadline = time.monotonic() + 10
        while "127.0.0.1:1" not in served.log() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "counter store unreachable" in served.log() and "127.0.0.1:1" in served.log()
