"""The offline ops commands: check, test, explain, fmt — output and exit codes (0 ok, 1 errors, 2 usage)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from server_harness import ServerThread

from tollway.policy.engine import Engine
from tollway.server.cli import main
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "gateway.rules"

GOOD = """\
quota hourly limits requests to 2 per 1h for each user

rule free {
    when user.tier == "free"
    enforce hourly
    route "mini" if request.model == "big"
}

test "free users are routed" {
    request { user: {id: "u1", metadata: {tier: "free"}}, model: "big" }
    expect allow
    expect route "mini"
}
"""


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write(tmp_path: Path, text: str, name: str = "r.rules") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------- check


def test_check_ok_prints_a_summary(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "check", str(EXAMPLE))
    assert code == 0, err
    assert "ok:" in out and "13 rules" in out and "5 prices" in out


def test_check_errors_exit_1_with_location_and_caret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        "quota free_hourly limits requests to 1 per 1h for each user\nrule a { enforce free_hourli }\n",
    )
    code, _, err = run(capsys, "check", str(path))
    assert code == 1
    assert f"{path}:2:18: error:" in err
    assert "did you mean 'free_hourly'" in err
    assert "\n    rule a { enforce free_hourli }\n" in err
    assert "\n                     ^" in err


def test_check_strict_fails_on_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'rule a { when request.model == "x" and request.model == "y" deny "never" }\n')
    code, out, err = run(capsys, "check", str(path))
    assert code == 0 and "warning:" in err and ": ok: " in out and "1 warning " in out
    code, out, _ = run(capsys, "check", "--strict", str(path))
    assert code == 1
    assert out == f"{path}: failed with --strict: 1 warning; 1 rule, 0 quotas, 0 prices, 0 tests\n"


def test_check_without_a_path_is_a_usage_error(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOLLWAY_RULES", raising=False)
    code, _, err = run(capsys, "check")
    assert code == 2 and "PATH" in err


# ---------------------------------------------------------------------- test


def test_test_passes_the_example(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "test", "-v", str(EXAMPLE))
    assert code == 0
    assert out.strip().endswith("13 passed, 0 failed")
    assert out.count("PASS ") == 13


def test_failing_test_shows_expected_and_got(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(
        tmp_path,
        GOOD.replace('expect route "mini"', 'expect route "huge"')
        + """
test "third request is refused" {
    request { user: {id: "u2", metadata: {tier: "free"}}, model: "m" } times 3
    expect reason QUOTA_EXCEEDED
    expect exceeded hourly
}
""",
    )
    code, out, _ = run(capsys, "test", str(path))
    assert code == 1
    assert "FAIL free users are routed" in out
    assert 'expected: route "huge"' in out and 'got:      route "mini"' in out
    assert "third request is refused" not in out  # it passed
    assert out.strip().endswith("1 passed, 1 failed")


def test_test_on_a_file_that_does_not_compile_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = write(tmp_path, "rule {", "broken.rules")
    code, out, err = run(capsys, "test", str(broken), str(write(tmp_path, GOOD)))
    assert code == 1 and "error:" in err
    assert out.splitlines() == [
        f"{broken}: does not compile (1 error): its tests did not run",
        "1 passed, 0 failed, 1 not compiled",
    ]


# ------------------------------------------------------------------- explain


def test_explain_shows_decision_and_trace(capsys: pytest.CaptureFixture[str]) -> None:
    request = json.dumps(
        {"user": {"id": "u1", "metadata": {"tier": "free"}}, "model": "openai/gpt-5"}
    )
    code, out, err = run(capsys, "explain", str(EXAMPLE), "--request", request)
    assert code == 0, err
    assert "decision: ALLOW (ALLOWED)" in out
    assert "model:    openai/gpt-4.1-mini  (routed)" in out
    assert "MATCH rule free_tier" in out
    assert 'held: user.tier == "free"' in out


def test_explain_json_and_request_from_a_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    req = tmp_path / "req.json"
    req.write_text(json.dumps(
        {"user": {"id": "s", "metadata": {"status": "suspended"}}, "model": "m"}))
    code, out, _ = run(capsys, "explain", str(EXAMPLE), "--request", f"@{req}", "--json")
    assert code == 0
    data = json.loads(out)
    assert data["decision"]["reason"] == "DENIED_BY_RULE"
    assert data["decision"]["message"] == "account suspended"
    assert data["total_rules"] == "13" and any(t["matched"] for t in data["trace"])


def test_explain_reads_the_request_from_stdin(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"user": {"id": "u1"}, "model": "m"}'))
    code, out, _ = run(capsys, "explain", str(EXAMPLE), "--request", "@-")
    assert code == 0 and "decision: ALLOW (ALLOWED)" in out


def _without_run_specifics(data: dict) -> dict:
    """An explanation's JSON minus what differs between two runs (id, clock)."""
    decision = data["decision"]
    decision.pop("decision_id")
    for q in decision["quotas"]:
        q.pop("resets_at", None)
        q.pop("retry_after", None)
    return data


def test_explain_json_is_the_grpc_apis_json_mapping(capsys: pytest.CaptureFixture[str]) -> None:
    """One JSON shape: what the CLI prints is what Explain answers over gRPC, in the proto3
    JSON mapping (proto field names, RFC 3339 times, durations as "Ns", int64 as strings)."""
    request = {"user": {"id": "u1", "metadata": {"tier": "free"}}, "model": "openai/gpt-5",
               "estimate": {"output_tokens": 500}}
    code, out, err = run(capsys, "explain", str(EXAMPLE), "--request", json.dumps(request),
                         "--json")
    assert code == 0, err
    printed = json.loads(out)
    parsed = json_format.Parse(out, pb.Explanation())  # it is the mapping: it parses back
    quota = printed["decision"]["quotas"][0]
    assert quota["retry_after"].endswith("s") and quota["resets_at"].endswith("Z")
    assert {"matched_rules", "ruleset_version", "decision_id"} <= printed["decision"].keys()
    engine = Engine.from_path(EXAMPLE, store="memory")
    server = ServerThread(engine)
    try:
        with grpc.insecure_channel(server.start()) as channel:
            reply = pb_grpc.TollwayStub(channel).Explain(
                json_format.ParseDict(request, pb.DecideRequest()), timeout=10
            )
    finally:
        server.stop()
        engine.close()
    over_grpc = json_format.MessageToDict(
        reply, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert _without_run_specifics(printed) == _without_run_specifics(over_grpc)
    assert parsed.decision.model == reply.decision.model == "openai/gpt-4.1-mini"


@pytest.mark.parametrize(
    ("request_", "expected"),
    [
        ("{not json", "--request"),
        ('{"user": {"id": ""}}', "user.id"),
        ("@/no/such/file", "--request"),
    ],
)
def test_explain_bad_requests_are_usage_errors(
    capsys: pytest.CaptureFixture[str], request_: str, expected: str
) -> None:
    code, _, err = run(capsys, "explain", str(EXAMPLE), "--request", request_)
    assert code == 2 and expected in err


# ----------------------------------------------------------------------- fmt


def test_fmt_check_and_rewrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = write(tmp_path, 'rule   a{when user.tier=="x"   deny "no"}  # keep me\n')
    before = messy.read_text()
    code, out, _ = run(capsys, "fmt", "--check", str(tmp_path))
    assert code == 1 and "not formatted" in out
    assert messy.read_text() == before  # --check changes nothing
    code, out, _ = run(capsys, "fmt", str(tmp_path))
    assert code == 0 and "formatted" in out
    formatted = messy.read_text()
    assert "# keep me" in formatted and formatted != before
    assert run(capsys, "fmt", "--check", str(messy))[0] == 0  # idempotent
    assert run(capsys, "check", str(messy))[0] == 0


def test_fmt_leaves_a_broken_file_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = write(tmp_path, 'rule a { deny "unterminated }\n')
    before = broken.read_bytes()
    code, _, err = run(capsys, "fmt", str(broken))
    assert code == 1 and "error:" in err
    assert broken.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["r.rules"]  # no temp file left behind


def test_fmt_stdin_to_stdout(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('rule   a{when user.tier=="x"   deny "no"}\n'))
    code, out, _ = run(capsys, "fmt", "-")
    assert code == 0
    assert out == 'rule a {\n    when user.tier == "x"\n    deny "no"\n}\n'
    monkeypatch.setattr("sys.stdin", io.StringIO(out))
    assert run(capsys, "fmt", "--check", "-")[:2] == (0, "")
    monkeypatch.setattr("sys.stdin", io.StringIO("rule {"))
    code, out, err = run(capsys, "fmt", "-")
    assert (code, out) == (1, "") and err.startswith("<stdin>:1:6: error:")


def test_fmt_diff_changes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    messy = write(tmp_path, 'rule   a{when user.tier=="x"   deny "no"}\n')
    before = messy.read_text()
    code, out, _ = run(capsys, "fmt", "--diff", str(messy))
    assert code == 0 and messy.read_text() == before
    assert out.startswith(f"--- {messy} (current)\n+++ {messy} (formatted)\n@@ ")
    assert '-rule   a{when user.tier=="x"   deny "no"}\n' in out
    assert '+    when user.tier == "x"\n' in out
    code, out2, _ = run(capsys, "fmt", "--diff", "--check", str(messy))
    assert (code, out2) == (1, out)
    run(capsys, "fmt", str(messy))
    assert run(capsys, "fmt", "--diff", "--check", str(messy))[:2] == (0, "")


def test_the_console_script_runs(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tollway", "check", str(write(tmp_path, GOOD))],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    bad = subprocess.run(
        [sys.executable, "-m", "tollway", "frobnicate"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2
