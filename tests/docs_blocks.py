"""The fenced code blocks of the project's Markdown, and what each one promises.

A block's info string is its language, then markers: ```` ```rules warning ````,
```` ```python server ````, ```` ```sh no-run ````. docs/development.md describes the
markers; ``tests/test_docs.py`` runs the blocks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Block", "blocks", "DOCS", "RUN_LANGUAGES", "MARKERS", "ROOT"]

ROOT = Path(__file__).resolve().parent.parent
DOCS = (ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")),
        *sorted((ROOT / "examples").glob("*.md")))

RUN_LANGUAGES = frozenset({"rules", "python", "sh"})
MARKERS = {
    "rules": frozenset({"warning", "error", "no-run"}),
    "python": frozenset({"server", "no-run"}),
    "sh": frozenset({"server", "no-run"}),
}

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>```+|~~~+)(?P<info>.*)$")


@dataclass(frozen=True)
class Block:
    """One fenced block: where it is, its language and markers, and its text."""

    file: Path
    line: int  # of the opening fence, 1-based
    language: str
    markers: frozenset[str]
    text: str

    @property
    def name(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}"

    @property
    def runs(self) -> bool:
        return self.language in RUN_LANGUAGES and "no-run" not in self.markers


def blocks(path: Path) -> list[Block]:
    """Every fenced block of ``path``; an indented fence (in a list item) counts too, and
    the block's lines lose that indentation."""
    found: list[Block] = []
    lines = path.read_text(encoding="utf-8").split("\n")
    i = 0
    while i < len(lines):
        opening = _FENCE.match(lines[i])
        if opening is None:
            i += 1
            continue
        indent, fence = opening["indent"], opening["fence"]
        words = opening["info"].split()
        body: list[str] = []
        j = i + 1
        while j < len(lines) and lines[j].strip() != fence:
            text = lines[j]
            body.append(text[len(indent):] if text.startswith(indent) else text.lstrip())
            j += 1
        found.append(Block(
            path, i + 1, words[0] if words else "", frozenset(words[1:]),
            "\n".join(body) + "\n",
        ))
        i = j + 1
    return found
