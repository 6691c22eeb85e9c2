"""The Python examples of the client documentation run, in order, against a live server.

Each page's ```python blocks run one after the other in one namespace (a later block may
use what an earlier one defined), from the repository root, with the documented address
``127.0.0.1:50051`` replaced by the test server's.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import ServerThread

from tollway.policy.engine import Engine

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTED = "127.0.0.1:50051"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


@pytest.fixture(scope="module")
def address() -> Iterator[str]:
    engine = Engine.from_path(ROOT / "examples" / "gateway.rules")
    server = ServerThread(engine)
    yield server.start()
    server.stop()
    engine.close()


def run_page(page: Path, address: str) -> str:
    blocks = python_blocks(page)
    assert blocks, f"{page} has no python examples"
    namespace: dict[str, object] = {"__name__": "__doc_example__"}
    out = io.StringIO()
    cwd = os.getcwd()
    os.chdir(ROOT)
    try:
        with contextlib.redirect_stdout(out):
            for i, block in enumerate(blocks, 1):
                code = compile(block.replace(DOCUMENTED, address), f"{page.name}[{i}]", "exec")
                exec(code, namespace)
    finally:
        os.chdir(cwd)
    return out.getvalue()


def test_client_page(address: str) -> None:
    printed = run_page(ROOT / "docs" / "client.md", address)
    assert "True ALLOWED openai/gpt-4.1-mini" in printed
    assert "False STORE_UNAVAILABLE policy service unavailable (UNAVAILABLE)" in printed
    assert "\n64\n" in printed


def test_readme(address: str) -> None:
    printed = run_page(ROOT / "README.md", address)
    assert "True ALLOWED" in printed
