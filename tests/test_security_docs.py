"""The TLS + tokens recipe of docs/security.md runs as written, in order, against a server.

Its first block (certificates and tokens) runs under the docs test too; the others need
the server the second block starts on fixed addresses, so here that server is started on
free ports and the later blocks are run with its addresses in place of the documented ones.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from docs_blocks import ROOT, Block, blocks
from server_harness import tollway_serve

PAGE = ROOT / "docs" / "security.md"
DOC_GRPC, DOC_HTTP = "127.0.0.1:50051", "127.0.0.1:9464"


def _recipe() -> list[Block]:
    text = PAGE.read_text(encoding="utf-8")
    start = text.count("\n", 0, text.index("## Deploying with TLS and tokens")) + 1
    end = text.count("\n", 0, text.index("\n## ", text.index("## Deploying with TLS"))) + 1
    return [b for b in blocks(PAGE) if start < b.line < end and b.language in ("sh", "python")]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TOLLWAY_")}
    env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", "")
    return env


def _serve_flags(block: Block, directory: Path) -> list[str]:
    """The documented ``serve`` flags, less the addresses and rules the harness gives,
    with the recipe's files where the first block made them."""
    words = shlex.split(block.text.replace("\\\n", " "))
    flags = words[words.index("serve") + 1:]
    out: list[str] = []
    skip = False
    for word in flags:
        if skip:
            skip = False
            continue
        if word in ("--rules", "--listen", "--http"):
            skip = True
            continue
        out.append(str(directory / word) if (directory / word).exists() else word)
    return out


def test_the_tls_and_tokens_recipe_runs(tmp_path: Path) -> None:
    if not any(os.access(Path(p) / "openssl", os.X_OK) for p in os.environ["PATH"].split(":")):
        pytest.skip("the recipe makes its certificates with openssl, which is not installed")
    recipe = _recipe()
    assert [(b.language, sorted(b.markers)) for b in recipe] == [
        ("sh", []), ("sh", ["no-run"]), ("sh", ["no-run"]), ("python", ["no-run"])
    ]
    make, serve, scrape, decide = recipe
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", make.text], cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, env=_env())
    assert done.returncode == 0, done.stderr
    with tollway_serve(None, *_serve_flags(serve, tmp_path)) as served:
        assert "tls=on auth=on" in served.wait_for_line("tollway serving:")
        done = subprocess.run(
            ["bash", "-euo", "pipefail", "-c", scrape.text.replace(DOC_HTTP, served.http)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env(),
        )
        assert done.returncode == 0, done.stderr
        assert "tollway_auth_failures_total" in done.stdout
        done = subprocess.run(
            [sys.executable, "-c", decide.text.replace(DOC_GRPC, served.grpc)],
            cwd=tmp_path, capture_output=True, text=True, timeout=60, env=_env(),
        )
        assert done.returncode == 0, done.stderr
        # the server's own decision (its ruleset's version), not the client's fallback
        assert "allowed=True" in done.stdout and served.version in done.stdout
        log = served.log()
    for name in ("gateway.token", "prometheus.token"):
        assert (tmp_path / name).read_text().split()[-1] not in log  # tokens never logged
