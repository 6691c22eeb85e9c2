"""Every example in README.md, docs/*.md and examples/*.md that can run, runs.

What a block must do is said by its info string (docs/development.md has the table):
``rules`` blocks are checked and format-checked, ``python`` and ``sh`` blocks are run,
those marked ``server`` against a ``tollway serve`` that this module starts.
"""

from __future__ import annotations

import ast
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from docs_blocks import DOCS, MARKERS, ROOT, Block, blocks
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2  # noqa: F401  (registers grpc.health.v1 for payloads)
from server_harness import Served, eventually, free_user, tollway_serve

from tollway.server.cli import main
from tollway.v1 import tollway_pb2 as pb
from tollway.v1 import tollway_pb2_grpc as pb_grpc

ALL = [b for path in DOCS for b in blocks(path)]
# Tools the docs show that tollway does not need, and the stand-in that runs a block
# where the tool is not installed: grpcurl_standin.py speaks the part of grpcurl the
# docs use, learning every message from the server's reflection like grpcurl does.
STANDINS = {"grpcurl": Path(__file__).with_name("grpcurl_standin.py")}
# The addresses the docs use, replaced by the test server's real ones.
DOC_GRPC, DOC_HTTP = "127.0.0.1:50051", "127.0.0.1:9464"


def _ids(selected: list[Block]) -> list[str]:
    return [b.name for b in selected]


def _select(language: str) -> list[Block]:
    return [b for b in ALL if b.language == language and b.runs]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


# ------------------------------------------------------------------ every block


def test_every_block_says_its_language_and_markers_are_known() -> None:
    for b in ALL:
        assert b.language, f"{b.name}: a fenced block names its language (```rules, ```text, …)"
        known = MARKERS.get(b.language, frozenset())
        assert b.markers <= known, f"{b.name}: unknown marker {sorted(b.markers - known)}"
    assert len(_select("rules")) >= 5 and len(_select("python")) >= 3


# ---------------------------------------------------------------------- rules


@pytest.mark.parametrize("block", _select("rules"), ids=_ids(_select("rules")))
def test_rules_blocks_check_and_are_formatted(
    block: Block, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "block.rules"
    path.write_text(block.text, encoding="utf-8")
    code = main(["check", str(path)])
    out, err = capsys.readouterr()
    if "error" in block.markers:
        assert code == 1 and ": error: " in err, f"{block.name} shows no error:\n{out}{err}"
        return
    assert code == 0, f"{block.name} does not compile:\n{err}"
    if "warning" in block.markers:
        assert ": warning: " in err, f"{block.name} is marked warning but warns of nothing"
    else:
        assert err == "", f"{block.name} warns (mark it ```rules warning if it means to):\n{err}"
    code = main(["fmt", "--diff", "--check", str(path)])
    out, err = capsys.readouterr()
    assert code == 0, f"{block.name} is not in the canonical layout (tollway fmt):\n{out}{err}"


# ---------------------------------------------------------------- the server


@pytest.fixture(scope="module")
def served() -> Iterator[Served]:
    """``tollway serve`` on the built-in example ruleset, memory store, with usage recorded
    for user ``u1`` in group ``acme`` (what the usage examples ask for)."""
    with tollway_serve(None) as server, grpc.insecure_channel(server.grpc) as channel:
        stub = pb_grpc.TollwayStub(channel)
        d = stub.Decide(pb.DecideRequest(
            request_id="seed-1", user=free_user("u1"), group=pb.Entity(id="acme"),
            model="openai/gpt-5"), timeout=10)
        stub.Report(pb.UsageReport(
            request_id="seed-1", decision_id=d.decision_id, user=pb.Entity(id="u1"),
            group=pb.Entity(id="acme"), model=d.model, input_tokens=100, output_tokens=50,
            cost_usd=0.002), timeout=10)

        def recorded() -> int:  # usage is written a moment after the report
            return int(stub.GetUsage(pb.GetUsageRequest(user_id="u1"), timeout=10)
                       .usage.total_tokens)

        assert eventually(recorded, 150) == 150
        yield server


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    """A working directory with a copy of examples/, so relative paths in the docs work
    and nothing in the checkout changes."""
    shutil.copytree(ROOT / "examples", tmp_path / "examples")
    return tmp_path


def _addresses(text: str, server: Served | None) -> str:
    if server is None:
        return text
    return text.replace(DOC_GRPC, server.grpc).replace(DOC_HTTP, server.http)


def _server_for(block: Block, request: pytest.FixtureRequest) -> Served | None:
    return request.getfixturevalue("served") if "server" in block.markers else None


# --------------------------------------------------------------------- python


def _silent_expressions(source: str) -> list[int]:
    """Lines of top-level expressions whose value a script throws away (not calls)."""
    tree = ast.parse(source)
    return [
        node.lineno for node in tree.body
        if isinstance(node, ast.Expr)
        and not isinstance(node.value, ast.Call | ast.Await | ast.Constant)
    ]


@pytest.mark.parametrize("block", _select("python"), ids=_ids(_select("python")))
def test_python_blocks_run(
    block: Block, scratch: Path, request: pytest.FixtureRequest
) -> None:
    silent = _silent_expressions(block.text)
    assert not silent, (
        f"{block.name}: line(s) {silent} compute a value and print nothing when run; "
        "print it or assert on it"
    )
    server = _server_for(block, request)
    script = scratch / "example.py"
    script.write_text(_addresses(block.text, server), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, str(script)], cwd=scratch, capture_output=True, text=True,
        timeout=120, env=_clean_env(),
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}{done.stderr}"


# ------------------------------------------------------------------------- sh


def _commands(text: str) -> list[list[str]]:
    """The block's commands as words (continuation lines joined, comments dropped)."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(words)
    return out


def _check_grpc_payloads(words: list[str], block: Block) -> None:
    """A grpcurl call's ``-d`` JSON must be a valid request of the method it names."""
    if "-d" not in words:
        return
    payload = words[words.index("-d") + 1]
    method_path = words[-1]
    service, _, method = method_path.rpartition("/")
    found = descriptor_pool.Default().FindMethodByName(f"{service}.{method}")
    message = message_factory.GetMessageClass(found.input_type)()
    try:
        json_format.Parse(payload, message)
    except json_format.ParseError as exc:
        pytest.fail(f"{block.name}: the payload for {method_path} is not a valid request: {exc}")


@pytest.mark.parametrize("block", _select("sh"), ids=_ids(_select("sh")))
def test_sh_blocks_run(block: Block, scratch: Path, request: pytest.FixtureRequest) -> None:
    env = _clean_env()
    standins = scratch / "standins"
    for words in _commands(block.text):
        tool = words[0]
        if tool == "grpcurl":
            _check_grpc_payloads(words, block)
        if shutil.which(tool, path=env["PATH"]) is None:
            if tool not in STANDINS:
                pytest.fail(f"{block.name}: {tool} is not installed (mark the block no-run "
                            "if it cannot run in a test)")
            standins.mkdir(exist_ok=True)
            wrapper = standins / tool
            wrapper.write_text(f'#!/bin/sh\nexec "{sys.executable}" "{STANDINS[tool]}" "$@"\n')
            wrapper.chmod(0o755)
    if standins.is_dir():
        env["PATH"] = f"{standins}{os.pathsep}{env['PATH']}"
    server = _server_for(block, request)
    if server is not None:
        env["TOLLWAY_SERVER"] = server.grpc
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", _addresses(block.text, server)], cwd=scratch,
        capture_output=True, text=True, timeout=120, env=env, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 0, f"{block.name} failed:\n{done.stdout}{done.stderr}"
