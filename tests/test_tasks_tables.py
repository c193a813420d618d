"""Markdown tables in answers: empty cells, alignment rows, ragged rows, fences, prose, truncation."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import parse_markdown_table, parse_markdown_tables

ANSWER = """Here is the table in markdown format:

```markdown
| Model | Size | MMMU | DocVQA |
|:------|:----:|-----:|--------|
| Qwen2.5-VL-3B | 3B | 53.1 | 93.9 |
| Qwen2.5-VL-7B | 7B |  | 95.7 |
| Qwen2.5-VL-72B | 72B | 70.2 | 96.4 |
```

The 72B model scores highest."""


def test_header_alignment_and_empty_cells():
    table = parse_markdown_table(ANSWER)
    assert table.has_header and table.header == ("Model", "Size", "MMMU", "DocVQA")
    assert table.align == ("left", "center", "right", None)
    assert table.body == (("Qwen2.5-VL-3B", "3B", "53.1", "93.9"), ("Qwen2.5-VL-7B", "7B", "", "95.7"),
                          ("Qwen2.5-VL-72B", "72B", "70.2", "96.4"))
    assert not table.ragged and not table.truncated and table.width == 4
    assert table.records()[1] == {"Model": "Qwen2.5-VL-7B", "Size": "7B", "MMMU": "", "DocVQA": "95.7"}


def test_bare_table_without_outer_pipes_and_leading_empty_cells():
    table = parse_markdown_table("Name | Qty\n--- | ---\nbolt | 10\nnut | 2")
    assert table.rows == (("Name", "Qty"), ("bolt", "10"), ("nut", "2")) and not table.ragged
    one_pipe = parse_markdown_table("Name | Qty\n--- | ---\n | 3\nnut |")  # as in GFM, outer pipes are optional
    assert one_pipe.rows == (("Name", "Qty"), ("3", ""), ("nut", "")) and one_pipe.ragged
    piped = parse_markdown_table("| | a | |\n|---|---|---|\n| x || z |")
    assert piped.rows == (("", "a", ""), ("x", "", "z"))


def test_ragged_rows_are_padded_and_flagged():
    table = parse_markdown_table("| a | b | c |\n|---|---|---|\n| 1 |\n| 1 | 2 | 3 | 4 |\n| 5 | 6 | 7 |")
    assert table.ragged and table.width == 4
    assert table.rows == (("a", "b", "c", ""), ("1", "", "", ""), ("1", "2", "3", "4"), ("5", "6", "7", ""))
    assert table.align == (None, None, None, None)
    assert table.records()[1] == {"a": "1", "b": "2", "c": "3", "column 4": "4"}
    short_align = parse_markdown_table("| a | b |\n|---|\n| 1 | 2 |")
    assert short_align.ragged and short_align.align == (None, None) and short_align.body == (("1", "2"),)


def test_alignment_rows_are_skipped_wherever_they_are():
    table = parse_markdown_table("|---|---|\n| 1 | 2 |\n| 3 | 4 |")
    assert not table.has_header and table.header is None and table.rows == (("1", "2"), ("3", "4"))
    with pytest.raises(InputError, match="no header"):
        table.records()
    twice = parse_markdown_table("| h1 | h2 |\n|---|---|\n| 1 | 2 |\n|:-:|:-:|\n| 3 | 4 |")
    assert twice.rows == (("h1", "h2"), ("1", "2"), ("3", "4")) and twice.align == (None, None)


def test_escaped_pipes_and_markup_in_cells():
    table = parse_markdown_table("| expr | html |\n|---|---|\n| a \\| b | <b>x</b> |\n| `c` | x<br>y |")
    assert table.body == (("a | b", "<b>x</b>"), ("`c`", "x<br>y"))


def test_several_tables_and_prose_lines_with_a_pipe():
    text = ("Table 1:\n| a | b |\n|---|---|\n| 1 | 2 |\n\nThe ratio is x | y in the text.\n\n"
            "```\n| c |\n| 3 |\n```\nand | more")
    tables = parse_markdown_tables(text)
    assert [t.rows for t in tables] == [(("a", "b"), ("1", "2")), (("c",), ("3",))]
    assert tables[1].header is None  # two piped lines, no alignment row: a table without a header
    assert parse_markdown_tables("just a | pipe") == [] and parse_markdown_table("no table") is None


def test_truncated_tables():
    cut_row = parse_markdown_table("| a | b |\n|---|---|\n| 1 | 2 |\n| 3 | 4\n\n")
    assert cut_row.truncated and cut_row.body[-1] == ("3", "4")
    sloppy = parse_markdown_tables("| a | b |\n|---|---|\n| 1 | 2\n\nThen:\n| c |\n|---|\n| 3 |")
    assert [t.truncated for t in sloppy] == [False, False]  # a missing pipe before more text is no cut
    fenced = parse_markdown_table("```\n| a | b |\n|---|---|\n| 1 | 2\n```\n")
    assert not fenced.truncated
    cut_fence = parse_markdown_table("```markdown\n| a | b |\n|---|---|\n| 1 | 2 |")
    assert cut_fence.truncated
    closed = parse_markdown_table("```markdown\n| a | b |\n|---|---|\n| 1 | 2 |\n```\nmore prose")
    assert not closed.truncated
    assert closed.to_json() == {"header": ["a", "b"], "rows": [["1", "2"]], "align": [None, None], "ragged": False,
                                "truncated": False}


@pytest.mark.parametrize("garbage", ["", "|", "||||", "| |\n| |", "|---|\n|---|", "-|-\n-|-"])
def test_garbage_never_raises(garbage):
    for table in parse_markdown_tables(garbage):
        assert all(len(r) == table.width for r in table.rows)


def test_needs_a_string():
    with pytest.raises(InputError, match="string"):
        parse_markdown_tables(None)
