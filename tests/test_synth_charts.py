"""Charts engine: every chart kind and task is drawn; chart-to-table answers parse back to the table, and QA answers
agree with the table (recomputed here from the truth, not from the engine's code)."""

import re

import pytest

from qwen25vl.data.synth import write_dataset
from qwen25vl.data.synth.verify import load_split
from qwen25vl.tasks.tables import parse_markdown_table


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("charts")
    write_dataset("charts", root, train=10, seed=2, size=336, progress=False)
    return load_split(root)


def _column(table, name):
    header = table["header"]
    index = header.index(name if name in header else name.removesuffix(" value"))
    return {row[0]: float(row[index]) for row in table["rows"]}


def test_every_kind_and_task(data):
    assert {m["truth"]["chart"] for _, m in data} == {"bar", "line", "scatter", "pie", "heatmap"}
    assert {m["task"] for _, m in data} == {"value", "extreme", "compare", "table"}


def test_answers_agree_with_the_table(data):
    for record, meta in data:
        question, answer = record.messages[0]["content"][1]["text"], record.messages[-1]["content"]
        table = meta["truth"]["table"]
        if meta["task"] == "table":
            parsed = parse_markdown_table(answer)
            assert list(parsed.header) == table["header"] and [list(r) for r in parsed.body] == table["rows"]
            continue
        if meta["task"] == "value":
            what, row = re.fullmatch(r"What is the value of (.+) for (.+)\?", question).groups()
            assert float(answer) == _column(table, what)[row]
        elif meta["task"] == "extreme":
            word, what = re.fullmatch(r"Which \w+ has the (highest|lowest) (.+)\?", question).groups()
            values = _column(table, what)
            assert answer == (max if word == "highest" else min)(values, key=values.get)
        elif question.startswith("Is the"):
            what, a, b = re.fullmatch(r"Is the (.+) of (.+) higher than that of (.+)\?", question).groups()
            values = _column(table, what)
            assert answer == ("Yes" if values[a] > values[b] else "No")
        else:
            what, a, b = re.fullmatch(r"What is the difference in (.+) between (.+) and (.+)\?", question).groups()
            values = _column(table, what)
            assert float(answer) == pytest.approx(abs(values[a] - values[b]), abs=1e-9)
