"""Terminal tables: fitted to any width without breaking a value that may not be cut."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st
from rich.cells import cell_len

from tollway.server.text_table import ELLIPSIS, Column, fit, plain, printable, render

columns_st = st.lists(
    st.builds(
        Column,
        header=st.text(min_size=1, max_size=12),
        priority=st.integers(0, 100),
        align=st.sampled_from(["left", "right"]),
        cut_to=st.one_of(st.none(), st.integers(1, 20)),
    ),
    min_size=1, max_size=7,
)


@given(columns_st, st.data(), st.integers(1, 160))
def test_lines_fit_and_uncuttable_values_stay_whole(
    columns: list[Column], data: st.DataObject, width: int
) -> None:
    rows = data.draw(st.lists(
        st.lists(st.text(max_size=40), min_size=len(columns), max_size=len(columns)),
        max_size=5,
    ))
    lines = render(columns, rows, width)
    assert len(lines) == len(rows) + 1
    assert all(cell_len(line) <= width for line in lines)
    layout = fit(columns, [[printable(c) for c in row] for row in rows], width)
    assert layout, "something is always shown"
    top = min(range(len(columns)), key=lambda i: (-columns[i].priority, i))
    assert top in [i for i, _ in layout]  # the most important column is never dropped
    shown = [i for i, _ in layout]
    assert shown == sorted(shown)  # columns keep their order
    if len(layout) > 1:
        for i, w in layout:
            if columns[i].cut_to is None:  # never cut: as wide as its widest value
                assert w >= max([cell_len(columns[i].header)]
                                + [cell_len(printable(r[i])) for r in rows])


def test_cut_values_end_with_an_ellipsis_and_columns_go_by_priority() -> None:
    columns = [Column("Id", 100, cut_to=6), Column("When", 50),
               Column("Model", 40, cut_to=5), Column("#", 10, "right")]
    rows = [["a-very-long-identifier", "2026-01-15 11:59:01Z", "openai/gpt-4.1", "7"]]
    wide = render(columns, rows, 200)
    assert wide[1].split() == rows[0][:1] + rows[0][1].split() + rows[0][2:]
    narrow = render(columns, rows, 40)  # everything, the cuttable ones cut
    assert narrow[1] == "a-very-" + ELLIPSIS + "  2026-01-15 11:59:01Z  open" + ELLIPSIS + "  7"
    narrower = render(columns, rows, 30)  # Model and # dropped, the time kept whole
    assert narrower == ["Id        When", "a-very-" + ELLIPSIS + "  2026-01-15 11:59:01Z"]
    tiny = render(columns, rows, 10)
    assert tiny == ["Id       #", "a-very" + ELLIPSIS + "  7"]


def test_control_characters_cannot_escape_their_cell() -> None:
    rows = [["evil\x1b[2J\nid\t"]]
    for lines in (render([Column("Id", 1)], rows, 80), plain([Column("Id", 1)], rows)):
        assert lines[1] == "evil\\x1b[2J\\nid\\t"
