"""The Python examples of the gateway docs run as written (from the repository root).

Blocks that talk to a running gateway (they name a ``base_url``) are run by the Envoy
end-to-end tests against a real Envoy instead; see ``tests/test_envoy_e2e.py``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
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
