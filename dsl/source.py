"""Reading rule files: the only I/O of the front end, with every way a file can be unfit.

Refusals happen before parsing and say what is wrong in plain words: a missing path, a
directory without ``.rules`` files, an unreadable file, a file over ``MAX_FILE_BYTES``,
bytes that are not UTF-8 text.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .diagnostics import Diagnostic, RulesError

__all__ = ["MAX_FILE_BYTES", "rule_files", "read_rule_file", "text_problem"]

# Big enough for any hand-written policy, small enough that a wrong path (a log file, a
# model checkpoint) is refused at once instead of being parsed for minutes.
MAX_FILE_BYTES = 4 * 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")


def _error(file: str, message: str, line: int = 0, column: int = 0) -> RulesError:
    return RulesError([Diagnostic(file, line, column, message)])


def rule_files(path: str | Path) -> list[Path]:
    """``path`` itself if it is a file, else every ``*.rules`` below it, sorted by path.

    Hidden files and directories (``.#x.rules`` editor locks, ``.git``) are skipped, so an
    open editor never breaks a reload.
    """
    root = Path(path)
    if root.is_dir():
        found = sorted(
            p
            for p in root.rglob("*.rules")
            if not any(part.startswith(".") for part in p.relative_to(root).parts)
            and (p.is_file() or (p.is_symlink() and not p.is_dir()))
        )
        if not found:
            raise _error(str(root), "no .rules files in this directory")
        return found
    if not root.exists() and not root.is_symlink():
        raise _error(str(root), "no such file")
    return [root]


def read_rule_file(path: Path) -> str:
    """The text of one rule file, or ``RulesError`` saying why it cannot be used."""
    file = str(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size > MAX_FILE_BYTES:
                raise _error(file, _too_large(size))
            data = f.read(MAX_FILE_BYTES + 1)
    except RulesError:
        raise
    except IsADirectoryError:
        raise _error(file, "is a directory, not a rule file") from None
    except FileNotFoundError:
        raise _error(file, "cannot read: no such file (or a broken link)") from None
    except PermissionError:
        raise _error(file, "cannot read: permission denied") from None
    except OSError as exc:
        raise _error(file, f"cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise _error(file, _too_large(len(data)))
    nul = data.find(b"\x00")
    if nul >= 0:  # binary: say so before complaining about its encoding
        line = data.count(b"\n", 0, nul) + 1
        column = nul - (data.rfind(b"\n", 0, nul) + 1) + 1
        raise _error(file, _nul_message(nul), line, column)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        bad = data[exc.start]
        raise _error(
            file,
            f"not a UTF-8 text file (invalid byte 0x{bad:02x} at offset {exc.start})",
            line,
            column,
        ) from None
    return text


def _too_large(size: int) -> str:
    limit = MAX_FILE_BYTES // (1024 * 1024)
    return f"file is too large ({size / (1024 * 1024):.1f} MiB; the limit is {limit} MiB)"


def _nul_message(offset: int) -> str:
    return f"not a text file (NUL byte at offset {offset}): is this a binary?"


def text_problem(text: str, file: str) -> Diagnostic | None:
    """Why ``text`` cannot be rule source at all (binary, oversized), or None."""
    if len(text) * 4 > MAX_FILE_BYTES:
        try:
            size = len(text.encode("utf-8"))
        except UnicodeEncodeError:
            size = len(text) * 4
        if size > MAX_FILE_BYTES:
            return Diagnostic(file, 0, 0, _too_large(size))
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        column = nul - (text.rfind("\n", 0, nul) + 1) + 1
        return Diagnostic(file, line, column, _nul_message(nul))
    surrogate = _SURROGATE.search(text)
    if surrogate:
        offset = surrogate.start()
        return Diagnostic(file, 0, 0, f"not UTF-8 text (lone surrogate at offset {offset})")
    return None
