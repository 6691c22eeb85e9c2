"""The Python examples of the docs run as written (from the repository root).

Blocks that talk to a running gateway (they name a ``base_url``) are run by the Envoy
end-to-end tests against a real Envoy instead; see ``tests/test_envoy_e2e.py``. The
pages about the sidecar's clients run all their blocks, in order, in one namespace (a
later block may use what an earlier one defined), against a live server: the documented
address ``127.0.0.1:50051`` is replaced by that server's.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerThread

from tollway.policy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = "127.0.0.1:50051"
_BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: str) -> list[str]:
    return _BLOCK.findall((ROOT / page).read_text())


def offline_blocks(page: str) -> list[str]:
    return [b for b in python_blocks(page) if "base_url" not in b]


@pytest.mark.parametrize("page", ["docs/gateways.md"])
def test_offline_examples_run(page: str, monkeypatch: pytest.MonkeyPatch) -> None:
    blocks = offline_blocks(page)
    assert blocks, f"{page} has no offline Python example"
    monkeypatch.chdir(ROOT)
    for i, block in enumerate(blocks):
        exec(compile(block, f"{page}[{i}]", "exec"), {"__name__": "__doc_example__"})


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    engine = Engine.from_path(ROOT / "examples" / "gateway.rules")
    server = ServerThread(engine)
    yield server.start()
    server.stop()
    engine.close()


def run_page(page: str, address: str) -> str:
    """Run every block of ``page`` against the server at ``address``; what they printed."""
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python examples"
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    out = io.StringIO()
    with contextlib.chdir(ROOT), contextlib.redirect_stdout(out):
        for i, block in enumerate(blocks, 1):
            code = compile(block.replace(DOCUMENTED, address), f"{page}[{i}]", "exec")
            exec(code, namespace)
    return out.getvalue()


def test_client_page(address: str) -> None:
    printed = run_page("docs/client.md", address)
    assert "True ALLOWED openai/gpt-4.1-mini" in printed
    assert "False STORE_UNAVAILABLE policy service unavailable (UNAVAILABLE)" in printed
    assert "\n64\n" in printed


def test_readme(address: str) -> None:
    printed = run_page("README.md", address)
    assert "True ALLOWED" in printed
