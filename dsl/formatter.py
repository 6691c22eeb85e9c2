"""``tollway fmt``: the canonical layout of a rule file.

Declarations keep their source order; four-space indents, one action or ``expect`` per
line, one space around operators, quota names and price patterns aligned within a run of
them, a blank line around every block. Comments are put back: a comment on its own line goes above the line
that followed it, a comment after code stays at the end of that line. The output parses
back to the same tree, and formatting it again changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from .ast import (
    Action,
    Allow,
    Balance,
    Check,
    Comment,
    Default,
    Deny,
    Enforce,
    Expect,
    InlineLimit,
    Price,
    Quota,
    Route,
    Rule,
    RuleFile,
    Schema,
    TestCase,
    TestStep,
)
from .render import expr_text, limit_text, scope_text, value_text, window_text
from .spelling import is_identifier, number_text, quote

__all__ = ["format_file"]

INDENT = "    "
_WIDTH = 100
_KIND_ORDER = {Default: 0, Schema: 1, Quota: 2, Balance: 3, Price: 4, Rule: 5, TestCase: 6}
_BARE_NAME_KINDS = ("reason", "quotas", "rules", "exceeded")
_NOT_BARE = ("request", "expect")


@dataclass(slots=True)
class _Line:
    indent: int
    text: str
    anchor: int | None = None  # the source line this output line stands for
    closer: bool = False


Decl = Default | Schema | Quota | Balance | Price | Rule | TestCase
_Aligned = TypeVar("_Aligned", Quota, Balance, Price)


def format_file(rf: RuleFile) -> str:
    """The canonical text of ``rf``, comments included, ending with one newline."""
    lines = _layout(rf)
    comments = sorted(rf.comments, key=lambda c: (c.line, c.column))
    out = _weave(lines, comments, rf.source.split("\n") if rf.source else [])
    text = "\n".join(out).rstrip("\n")
    return text + "\n" if text else ""


# -------------------------------------------------------------------- layout


def _decls(rf: RuleFile) -> list[Decl]:
    decls: list[Decl] = [
        *rf.schemas, *rf.quotas, *rf.balances, *rf.prices, *rf.rules, *rf.tests
    ]
    if rf.default is not None:
        decls.insert(0, rf.default)
    keyed = [(d.pos.line, _KIND_ORDER[type(d)], i, d) for i, d in enumerate(decls)]
    return [d for *_, d in sorted(keyed, key=lambda k: k[:3])]


def _anchor(line: int) -> int | None:
    return line if line > 0 else None


def _layout(rf: RuleFile) -> list[_Line]:
    decls = _decls(rf)
    lines: list[_Line] = []
    previous: tuple[type, bool] | None = None
    for i, decl in enumerate(decls):
        block = _decl_lines(decl, decls, i)
        kind = (type(decl), len(block) > 1)
        if previous is not None and (kind[1] or previous[1] or kind[0] is not previous[0]):
            lines.append(_Line(0, ""))
        lines.extend(block)
        previous = kind
    return lines


def _decl_lines(decl: Decl, decls: list[Decl], index: int) -> list[_Line]:
    anchor = _anchor(decl.pos.line)
    if isinstance(decl, Default):
        text = "default allow" if decl.effect == "allow" else f"default deny {quote(decl.message)}"
        return [_Line(0, text, anchor)]
    if isinstance(decl, Schema):
        return _schema_lines(decl)
    if isinstance(decl, Quota):
        width = _run_width(decls, index, Quota, lambda q: q.name)
        return [_Line(0, f"quota {decl.name.ljust(width)} limits {_limit_body(decl)}", anchor)]
    if isinstance(decl, Balance):
        width = _run_width(decls, index, Balance, lambda b: b.name)
        return [_Line(0, _balance_text(decl, width), anchor)]
    if isinstance(decl, Price):
        width = _run_width(decls, index, Price, lambda p: quote(p.pattern))
        return [_Line(0, _price_text(decl, width), anchor)]
    if isinstance(decl, Rule):
        return _rule_lines(decl)
    return _test_lines(decl)


def _balance_text(b: Balance, width: int) -> str:
    text = f"balance {b.name.ljust(width)} of {b.metric} {scope_text(b.scope)}"
    if b.warn_below is not None:
        text += f" warn below {number_text(b.warn_below)}"
    return text


def _price_text(p: Price, width: int) -> str:
    pattern = quote(p.pattern).ljust(width)
    text = f"price {pattern} input {number_text(p.input)} output {number_text(p.output)}"
    if p.cached_input is not None:
        text += f" cached_input {number_text(p.cached_input)}"
    return f"{text} per {p.per_text} tokens"


def _run_width(
    decls: list[Decl], index: int, kind: type[_Aligned], text: Callable[[_Aligned], str]
) -> int:
    """The longest ``text`` in the run of consecutive ``kind`` declarations around ``index``
    (quota names, quoted price patterns), which the run is aligned on."""
    start = index
    while start > 0 and isinstance(decls[start - 1], kind):
        start -= 1
    end = index
    while end + 1 < len(decls) and isinstance(decls[end + 1], kind):
        end += 1
    return max(len(text(d)) for d in decls[start : end + 1] if isinstance(d, kind))


def _limit_body(q: Quota) -> str:
    text = f"{q.metric} to {limit_text(q.limit)} per {window_text(q.window)} {scope_text(q.scope)}"
    return text + (" on_store_error deny" if q.on_store_error == "deny" else "")


def _schema_lines(schema: Schema) -> list[_Line]:
    anchor = _anchor(schema.pos.line)
    fields = [f"{f.name}: {f.type}" + (" admin" if f.admin else "") for f in schema.fields]
    head = f"schema {schema.entity}"
    one_line = f"{head} {{ {', '.join(fields)} }}" if fields else f"{head} {{}}"
    spread = any(f.pos.line != schema.pos.line for f in schema.fields)
    if not spread and len(one_line) <= _WIDTH:
        return [_Line(0, one_line, anchor)]
    lines = [_Line(0, f"{head} {{", anchor)]
    for f, text in zip(schema.fields, fields, strict=True):
        lines.append(_Line(1, text + ",", _anchor(f.pos.line)))
    lines.append(_Line(0, "}", closer=True))
    return lines


def _rule_lines(rule: Rule) -> list[_Line]:
    head = f"rule {rule.name}"
    if rule.priority:
        head += f" priority {rule.priority}"
    if rule.shadow:
        head += " shadow"
    lines = [_Line(0, head + " {", _anchor(rule.pos.line))]
    if rule.condition is not None:
        lines.append(
            _Line(1, f"when {expr_text(rule.condition)}", _anchor(rule.condition.pos.line))
        )
    for action in rule.actions:
        lines.append(_Line(1, _action_text(action), _anchor(action.pos.line)))
    lines.append(_Line(0, "}", closer=True))
    return lines


def _action_text(action: Action) -> str:
    if isinstance(action, Deny):
        return f"deny {quote(action.message)}"
    if isinstance(action, Allow):
        return "allow"
    if isinstance(action, Enforce):
        items = [
            " then ".join((name, *action.chain(i))) for i, name in enumerate(action.names)
        ]
        return "enforce " + ", ".join(items)
    if isinstance(action, InlineLimit):
        return f"limit {_limit_body(action.quota)}"
    if isinstance(action, Check):
        return "check " + ", ".join(quote(n) for n in action.names)
    if isinstance(action, Route):
        text = f"route {quote(action.model)}"
        return text if action.condition is None else f"{text} if {expr_text(action.condition)}"
    return f"annotate {quote(action.key)} = {quote(action.value)}"


def _test_lines(case: TestCase) -> list[_Line]:
    lines = [_Line(0, f"test {quote(case.name)} {{", _anchor(case.pos.line))]
    for step in case.steps:
        lines.append(_Line(1, _step_text(step), _anchor(step.pos.line)))
        for expect in step.expects:
            lines.append(_Line(1, _expect_text(expect), _anchor(expect.pos.line)))
    lines.append(_Line(0, "}", closer=True))
    return lines


def _step_text(step: TestStep) -> str:
    text = f"request {value_text(dict(step.request))}"
    return text if step.times == 1 else f"{text} times {number_text(step.times)}"


def _name(name: str) -> str:
    dotted = all(is_identifier(part) for part in name.split("."))
    return name if dotted and name not in _NOT_BARE else quote(name)


def _expect_text(expect: Expect) -> str:
    kind, args = expect.kind, expect.args
    if kind == "annotate" and len(args) == 2:
        return f"expect annotate {quote(args[0])} = {quote(args[1])}"
    shown = [_name(a) if kind in _BARE_NAME_KINDS else quote(a) for a in args]
    return " ".join(["expect", kind, ", ".join(shown)]).rstrip()


# ------------------------------------------------------------------ comments


def _blank(source: list[str], line: int) -> bool:
    """Whether 1-based ``line`` of the source is empty (False when there is no source)."""
    return 0 < line <= len(source) and not source[line - 1].strip()


def _weave(lines: list[_Line], comments: list[Comment], source: list[str]) -> list[str]:
    """Lay out ``lines`` with the comments put back where they belong."""
    own = [c for c in comments if not c.trailing]
    trailing: dict[int, list[str]] = {}
    for c in comments:
        if c.trailing:
            trailing.setdefault(_trailing_home(lines, c.line), []).append(c.text)
    anchors_after = _next_anchors(lines)
    out: list[str] = []
    k = 0
    for i, line in enumerate(lines):
        if line.anchor is not None:
            start = k
            while k < len(own) and own[k].line < line.anchor:
                k += 1
            block = own[start:k]
            if block:
                # keep the blank lines that set a comment apart from the code around it
                if out and out[-1] and _blank(source, block[0].line - 1):
                    out.append("")
                out.extend(_comment_block(block, line.indent))
                if _blank(source, block[-1].line + 1):
                    out.append("")
        elif line.closer:
            limit, start = anchors_after[i], k
            while k < len(own) and own[k].line < limit and own[k].depth > line.indent:
                k += 1
            out.extend(_comment_block(own[start:k], line.indent + 1))
        text = INDENT * line.indent + line.text if line.text else ""
        if i in trailing:
            text = (text + "  " if text else "") + "  ".join(trailing[i])
        out.append(text)
    if k < len(own) and out:
        out.append("")
    out.extend(_comment_block(own[k:], 0))
    if -1 in trailing:
        out.insert(0, "  ".join(trailing[-1]))
    return out


def _comment_block(comments: list[Comment], indent: int) -> list[str]:
    """Comment lines at ``indent``, keeping one blank line where the source had a gap."""
    out: list[str] = []
    for j, c in enumerate(comments):
        if j and c.line > comments[j - 1].line + 1:
            out.append("")
        out.append(INDENT * indent + c.text)
    return out


def _next_anchors(lines: list[_Line]) -> list[float]:
    """For each output line, the source line of the next anchored line after it."""
    result: list[float] = [float("inf")] * len(lines)
    upcoming: float = float("inf")
    for i in range(len(lines) - 1, -1, -1):
        result[i] = upcoming
        anchor = lines[i].anchor
        if anchor is not None:
            upcoming = anchor
    return result


def _trailing_home(lines: list[_Line], source_line: int) -> int:
    """The output line a comment that followed code on ``source_line`` belongs to."""
    exact = [i for i, line in enumerate(lines) if line.anchor == source_line]
    if exact:
        return exact[-1]
    after = next(
        (
            i
            for i, line in enumerate(lines)
            if line.anchor is not None and line.anchor > source_line
        ),
        len(lines),
    )
    i = after - 1
    while i >= 0 and not lines[i].text:
        i -= 1
    return i
