"""Charts drawn with matplotlib (bar, line, scatter, pie, heatmap) from a table, with the table's values written on
the chart. Tasks: value lookup, extremes, comparisons (yes/no and differences) and chart-to-table (a markdown table
that `tasks.tables.parse_markdown_table` reads back)."""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image

from qwen25vl.data.synth.common import Example, image_part, single_turn
from qwen25vl.data.synth.draw import frame_size
from qwen25vl.tasks.documents import Cell
from qwen25vl.tasks.markdown import table_to_markdown

DEFAULTS = {"size": 448}
KINDS = ("bar", "line", "scatter", "pie", "heatmap")
TASKS = ("value", "extreme", "compare", "table")
TABLE_PROMPT = "Convert the chart to a markdown table."
_TOPICS = {
    "City": ["Paris", "Tokyo", "Lima", "Oslo", "Cairo", "Delhi", "Rome", "Seoul"],
    "Fruit": ["Apple", "Banana", "Cherry", "Grape", "Lemon", "Mango", "Peach", "Plum"],
    "Month": ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug"],
    "Year": ["2017", "2018", "2019", "2020", "2021", "2022", "2023", "2024"],
    "Team": ["Red", "Blue", "Green", "Gold", "Black", "White", "Orange", "Silver"],
}
_MEASURES = ["Sales", "Revenue", "Visitors", "Score", "Orders", "Profit", "Users", "Rainfall"]
_PALETTES = [["#1f77b4", "#ff7f0e", "#2ca02c"], ["#4c72b0", "#dd8452", "#55a868"], ["#e24a33", "#348abd", "#988ed5"],
             ["#264653", "#e76f51", "#2a9d8f"]]


@dataclass
class Table:
    """Rows named by `index` (title `index_name`), one column per measure; values as integers in units of
    10**-decimals, so every printed number and difference is exact."""

    index_name: str
    index: list[str]
    columns: list[str]
    units: list[list[int]]  # units[row][column]
    decimals: int = 0

    def text(self, units: int) -> str:
        return f"{units / 10:.1f}" if self.decimals else str(units)

    def cell(self, row: int, column: int) -> str:
        return self.text(self.units[row][column])

    def markdown(self) -> str:
        rows = [[self.index_name] + self.columns] + [[name] + [self.cell(r, c) for c in range(len(self.columns))]
                                                     for r, name in enumerate(self.index)]
        return table_to_markdown([[Cell(v) for v in row] for row in rows])

    def to_json(self) -> dict:
        return {"header": [self.index_name] + self.columns,
                "rows": [[name] + [self.cell(r, c) for c in range(len(self.columns))] for r, name in
                         enumerate(self.index)]}


def _distinct(rng: random.Random, n: int, lo: int, hi: int) -> list[int]:
    return rng.sample(range(lo, hi), n)


def make_table(rng: random.Random, kind: str) -> Table:
    """The data behind a chart of `kind`; every column's values are distinct (extremes are unique)."""
    if kind == "scatter":
        names = [chr(65 + i) for i in range(rng.randint(4, 7))]
        cols = [_distinct(rng, len(names), 0, 100) for _ in range(2)]
        return Table("Point", names, ["x", "y"], [list(r) for r in zip(*cols)])
    topic = rng.choice(sorted(_TOPICS))
    rows = rng.randint(3, 6)
    names = _TOPICS[topic][:rows] if topic in ("Month", "Year") else rng.sample(_TOPICS[topic], rows)
    if kind == "pie":
        cuts = sorted(rng.sample(range(1, 100), rows - 1))
        shares = [b - a for a, b in zip([0] + cuts, cuts + [100])]
        while len(set(shares)) < rows or min(shares) < 3:
            cuts = sorted(rng.sample(range(1, 100), rows - 1))
            shares = [b - a for a, b in zip([0] + cuts, cuts + [100])]
        return Table(topic, names, ["Share (%)"], [[s] for s in shares])
    n_cols = rng.randint(3, 5) if kind == "heatmap" else rng.choice((1, 1, 2, 3))
    columns = rng.sample(_MEASURES, n_cols) if kind != "heatmap" else [f"Q{i + 1}" for i in range(n_cols)]
    decimals = int(kind != "heatmap" and rng.random() < 0.3)
    top = 100 if kind == "heatmap" else rng.choice((50, 100, 500, 1000)) * (10 if decimals else 1)
    cols = [_distinct(rng, rows, 1, top) for _ in columns]
    return Table(topic, names, columns, [list(r) for r in zip(*cols)], decimals)


def _values(table: Table, c: int) -> list[float]:
    return [row[c] / (10 ** table.decimals) for row in table.units]


def _plot(ax, rng: random.Random, kind: str, table: Table, colours: list[str]) -> None:
    n = len(table.index)
    if kind == "bar":
        width = 0.8 / len(table.columns)
        for c, name in enumerate(table.columns):
            xs = np.arange(n) + (c - (len(table.columns) - 1) / 2) * width
            bars = ax.bar(xs, _values(table, c), width, label=name, color=colours[c % len(colours)])
            ax.bar_label(bars, labels=[table.cell(r, c) for r in range(n)], fontsize=7)
        ax.set_xticks(range(n), table.index)
    elif kind == "line":
        for c, name in enumerate(table.columns):
            ys = _values(table, c)
            ax.plot(range(n), ys, marker="o", label=name, color=colours[c % len(colours)])
            for r, y in enumerate(ys):
                ax.annotate(table.cell(r, c), (r, y), textcoords="offset points", xytext=(0, 5), ha="center",
                            fontsize=7)
        ax.set_xticks(range(n), table.index)
    elif kind == "scatter":
        xs, ys = _values(table, 0), _values(table, 1)
        ax.scatter(xs, ys, color=colours[0])
        for r, name in enumerate(table.index):
            ax.annotate(f"{name} ({table.cell(r, 0)}, {table.cell(r, 1)})", (xs[r], ys[r]), fontsize=7,
                        textcoords="offset points", xytext=(4, 4))
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    elif kind == "pie":
        ax.pie(_values(table, 0), labels=table.index, autopct=lambda p: f"{round(p)}%", textprops={"fontsize": 8})
    else:
        grid = np.array(table.units, dtype=float)
        ax.imshow(grid, cmap=rng.choice(("viridis", "Blues", "magma", "cividis")), aspect="auto")
        for r in range(n):
            for c in range(len(table.columns)):
                ax.text(c, r, table.cell(r, c), ha="center", va="center", fontsize=8, color="white",
                        bbox={"facecolor": "black", "alpha": 0.5, "pad": 1, "linewidth": 0})
        ax.set_xticks(range(len(table.columns)), table.columns)
        ax.set_yticks(range(n), table.index)
    if kind in ("bar", "line", "scatter"):
        ax.margins(x=0.12 if kind != "bar" else 0.05, y=0.15)  # room for the value labels at the edges
    if kind in ("bar", "line") and len(table.columns) > 1:
        ax.legend(fontsize=7)


def render(rng: random.Random, kind: str, table: Table, size: tuple[int, int]) -> Image.Image:
    """The chart as an RGB image of exactly `size` (width, height)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    width, height = size
    figure = Figure(figsize=(width / 100, height / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_subplot()
    _plot(ax, rng, kind, table, rng.choice(_PALETTES))
    measure = table.columns[0] if len(table.columns) == 1 else "values"
    ax.set_title(f"{measure} by {table.index_name.lower()}", fontsize=9)
    ax.tick_params(labelsize=7)
    figure.tight_layout(pad=0.4)
    canvas.draw()
    pixels = np.asarray(canvas.buffer_rgba())[..., :3]
    if pixels.shape[:2] != (height, width):
        raise RuntimeError(f"matplotlib drew {pixels.shape[1]}x{pixels.shape[0]}, asked for {width}x{height}")
    return Image.fromarray(pixels.copy())


def _label(table: Table, c: int) -> str:
    return table.columns[c] if table.columns[c] not in ("x", "y") else f"{table.columns[c]} value"


def question(rng: random.Random, task: str, table: Table) -> tuple[str, str]:
    """(question, answer) of one task on a table."""
    if task == "table":
        return TABLE_PROMPT, table.markdown()
    c = rng.randrange(len(table.columns))
    what, rows = _label(table, c), range(len(table.index))
    if task == "value":
        r = rng.choice(rows)
        return f"What is the value of {what} for {table.index[r]}?", table.cell(r, c)
    if task == "extreme":
        pick = max if rng.random() < 0.5 else min
        r = pick(rows, key=lambda i: table.units[i][c])
        word = "highest" if pick is max else "lowest"
        return f"Which {table.index_name.lower()} has the {word} {what}?", table.index[r]
    a, b = rng.sample(list(rows), 2)
    ua, ub = table.units[a][c], table.units[b][c]
    if rng.random() < 0.5:
        return f"Is the {what} of {table.index[a]} higher than that of {table.index[b]}?", "Yes" if ua > ub else "No"
    return f"What is the difference in {what} between {table.index[a]} and {table.index[b]}?", table.text(abs(ua - ub))


def make_sample(rng: random.Random, media, options: dict) -> list[Example]:
    kind, task = KINDS[media.index % len(KINDS)], TASKS[media.index % len(TASKS)]
    size = frame_size(rng, options["size"], min_ratio=0.75)
    table = make_table(rng, kind)
    path = media.image(render(rng, kind, table, size))
    prompt, answer = question(rng, task, table)
    truth = {"chart": kind, "table": table.to_json(), "answer": answer, "size": list(size)}
    return [Example(single_turn(image_part(path, size), prompt, answer), task, truth)]
