"""QwenVL HTML: ordered blocks, tables (nested, spans), missing or broken attributes, truncation, exports."""

import json

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import Frame, parse_qwenvl_html
from qwen25vl.tasks.html_tree import parse_html

PAGE = """```html
<html><body>
<h1 data-bbox="309 96 658 127">Qwen2.5 Technical Report</h1>
 <p data-bbox="429 156 541 182"></p>
 <address class="author"><p>Qwen Team</p></address>
 <p data-bbox="268 198 589 224">See <a>https://huggingface.co/Qwen</a> and <b>more</b></p>
 <h2 data-bbox="438 291 533 317">Abstract</h2>
 <div class="image" data-bbox="108 1056 888 1300"><img data-bbox="108 1056 888 1300"/></div>
 <div class="formula.machine_printed" data-bbox="100 1310 400 1340">$$E = mc^2$$</div>
 <div class="chart" format="bar" data-bbox="10 10 20 20"></div>
 <ol data-bbox="50 1350 900 1420"><li data-bbox="50 1350 900 1380">first</li><li data-bbox="50 1385 900 1420">second</li></ol>
 <table data-bbox="40 1430 940 1600"><thead><tr><th>Model</th><th colspan="2">Score</th></tr></thead>
 <tbody><tr><td rowspan="2">7B</td><td>1</td><td>2</td></tr><tr><td>3</td><td>4</td></tr></tbody></table>
</body></html>
```"""


def test_blocks_in_reading_order_with_types_and_boxes():
    doc = parse_qwenvl_html(PAGE)
    kinds = [b.type for b in doc.blocks]
    assert kinds == ["heading", "separator", "address", "paragraph", "heading", "image", "formula", "chart",
                     "list_item", "list_item", "table"]
    h1, empty, address, para = doc.blocks[:4]
    assert (h1.level, h1.text, h1.bbox) == (1, "Qwen2.5 Technical Report", (309, 96, 658, 127))
    assert empty.text == "" and empty.bbox == (429, 156, 541, 182)  # an empty <p>: a separator, box kept
    assert address.text == "Qwen Team" and address.bbox is None  # no data-bbox: text kept, no box
    assert para.text == "See https://huggingface.co/Qwen and more"
    assert doc.blocks[7].attrs == {"class": "chart", "format": "bar"}
    assert [b.ordered for b in doc.blocks[8:10]] == [True, True]
    assert not doc.truncated


def test_table_rows_keep_spans_and_headers():
    table = parse_qwenvl_html(PAGE).blocks[-1]
    rows = [[(c.text, c.header, c.colspan, c.rowspan) for c in row] for row in table.rows]
    assert rows == [[("Model", True, 1, 1), ("Score", True, 2, 1)],
                    [("7B", False, 1, 2), ("1", False, 1, 1), ("2", False, 1, 1)],
                    [("3", False, 1, 1), ("4", False, 1, 1)]]
    assert "data-bbox" not in table.html and 'colspan="2"' in table.html


def test_nested_tables_stay_nested():
    text = ('<table data-bbox="0 0 100 100"><tr><td>outer</td><td><table><tr><td>in1</td><td>in2</td></tr>'
            '<tr><td>in3</td><td>in4</td></tr></table></td></tr><tr><td>last</td><td>row</td></tr></table>')
    (block,) = parse_qwenvl_html(text).blocks
    assert len(block.rows) == 2  # the inner rows are not the outer table's rows
    inner = block.rows[0][1].tables
    assert [[c.text for c in row] for row in inner[0]] == [["in1", "in2"], ["in3", "in4"]]
    md = parse_qwenvl_html(text).to_markdown()
    assert md.strip().startswith("<table>") and "in4" in md  # not flattenable into a pipe table: kept as HTML
    assert json.loads(json.dumps(block.to_dict()))["rows"][0][1]["tables"][0][1][1]["text"] == "in4"


def test_missing_and_broken_attributes_and_unclosed_tags():
    text = ('<body><p data-bbox="1 2 3">three numbers</p><p data-bbox="a b c d">letters</p>'
            '<h3 data-bbox="40 30 10 5">swapped<p data-bbox="0 0 5 5">unclosed p<p>next</body>')
    doc = parse_qwenvl_html(text)
    assert [(b.type, b.text, b.bbox) for b in doc.blocks] == [
        ("paragraph", "three numbers", None), ("paragraph", "letters", None),
        ("heading", "swapped unclosed p next", (10, 5, 40, 30))]


def test_list_items_without_close_tags_and_nested_lists():
    doc = parse_qwenvl_html('<ul><li data-bbox="0 0 1 1">a<li data-bbox="0 2 1 3">b<ul><li>b1</li></ul><li>c</ul>')
    assert [(b.type, b.text, b.ordered) for b in doc.blocks] == [
        ("list_item", "a", False), ("list_item", "b b1", False), ("list_item", "c", False)]


def test_truncated_answer_keeps_blocks_and_flags():
    cut = PAGE[: PAGE.index("<ol")] + '<p data-bbox="1 2 3 4">cut mid sen'
    doc = parse_qwenvl_html(cut)
    assert doc.truncated
    assert doc.blocks[-1].text == "cut mid sen" and doc.blocks[-1].bbox == (1, 2, 3, 4)
    assert doc.blocks[-1].truncated and not any(b.truncated for b in doc.blocks[:-1])
    assert doc.blocks[-1].to_dict()["truncated"] is True and "truncated" not in doc.blocks[0].to_dict()


@pytest.mark.parametrize("garbage", ["", "I can't read this image.", "<<<>>>", "```html\n```", "</p></div>",
                                     "<div>" * 3000, "<table><tr><td>" * 1000])
def test_garbage_gives_no_blocks_or_plain_text(garbage):
    doc = parse_qwenvl_html(garbage)
    assert all(b.bbox is None for b in doc.blocks) and all(b.text == "" for b in doc.blocks if b.type != "text")
    doc.to_markdown()
    assert doc.to_json()["blocks"] == [b.to_dict() for b in doc.blocks]


def test_markdown_export():
    md = parse_qwenvl_html(PAGE).to_markdown()
    assert md.startswith("# Qwen2.5 Technical Report\n\nQwen Team\n\nSee https://huggingface.co/Qwen and more\n\n"
                         "## Abstract\n\n![image]()\n\n$$E = mc^2$$")
    assert "1. first\n2. second" in md
    assert '<th colspan="2">Score</th>' in md  # spans: HTML table kept
    simple = parse_qwenvl_html("<table><tr><th>a</th><th>b|c</th></tr><tr><td>1</td></tr></table>").to_markdown()
    assert simple == "| a | b\\|c |\n|---|---|\n| 1 |   |\n"


def test_json_export_and_map_to_original():
    doc = parse_qwenvl_html(PAGE).to_original(Frame((1960, 3080), (980, 1540)))
    data = json.loads(json.dumps(doc.to_json()))
    assert data["frame"] == "original"
    assert data["blocks"][0] == {"type": "heading", "text": "Qwen2.5 Technical Report",
                                 "bbox": [618, 192, 1316, 254], "level": 1}
    assert data["blocks"][2]["bbox"] is None
    with pytest.raises(InputError, match="already"):
        doc.to_original(Frame((1, 1), (1, 1)))


def test_html_tree_ignores_stray_end_tags_and_closes_at_eof():
    root = parse_html("</div><div><p>a</span>b<table><tr><td>x")
    (div,) = root.find_all("div")
    assert div.text() == "ab x" and root.find_all("td")[0].text() == "x"


def test_non_string_is_a_user_error():
    with pytest.raises(InputError):
        parse_qwenvl_html(b"<p>")


# ---- images with captions, separators, cuts mid-tag ------------------------------------------------------------

CAPTIONED = """```html
<html><body>
<p data-bbox="60 40 500 90">Left column text.</p>
<div class="image caption" data-bbox="60 100 500 420"><img data-bbox="60 100 500 380" alt="a plot"/><p data-bbox="60 385 500 420">Figure 1: Loss curves.</p></div>
<p></p>
<p data-bbox="540 40 980 90">Right column text.</p>
</body></html>
```"""


def test_image_with_caption_is_one_block_with_the_divs_box():
    doc = parse_qwenvl_html(CAPTIONED)
    assert [b.type for b in doc.blocks] == ["paragraph", "image", "separator", "paragraph"]
    figure = doc.blocks[1]
    assert figure.bbox == (60, 100, 500, 420) and figure.text == "Figure 1: Loss curves."
    assert figure.caption == "Figure 1: Loss curves."
    image, caption = figure.parts
    assert (image.type, image.bbox, image.text) == ("image", (60, 100, 500, 380), "a plot")
    assert (caption.type, caption.bbox) == ("caption", (60, 385, 500, 420))
    data = json.loads(json.dumps(figure.to_dict()))
    assert data["bbox"] == [60, 100, 500, 420] and [p["type"] for p in data["parts"]] == ["image", "caption"]
    assert parse_qwenvl_html("<p>plain</p>").blocks[0].caption is None


def test_captioned_image_without_boxes_inside_and_without_a_div_box():
    no_inner = parse_qwenvl_html('<div class="image caption" data-bbox="1 2 30 40"><img/><p>Fig. 2</p></div>')
    (block,) = no_inner.blocks
    assert (block.type, block.bbox, block.caption, block.parts[1].bbox) == ("image", (1, 2, 30, 40), "Fig. 2", None)
    no_div = parse_qwenvl_html('<div class="image caption"><img data-bbox="10 10 50 40"/>'
                               '<p data-bbox="12 42 48 50">Fig. 3</p></div>')
    (block,) = no_div.blocks
    assert block.bbox == (10, 10, 50, 50)  # the union of the image's and the caption's boxes
    figure = parse_qwenvl_html('<figure data-bbox="0 0 9 9"><img src="a.png"/><figcaption>Cap</figcaption></figure>')
    assert [(b.type, b.caption, b.attrs.get("src")) for b in figure.blocks] == [("image", "Cap", "a.png")]
    plain = parse_qwenvl_html('<div class="image" data-bbox="0 0 9 9"><img data-bbox="0 0 9 9"/></div>')
    assert [(b.type, b.parts) for b in plain.blocks] == [("image", ())]  # no caption: a plain image block


def test_captioned_image_maps_its_parts_and_exports_the_caption():
    doc = parse_qwenvl_html(CAPTIONED).to_original(Frame((2000, 1000), (1000, 500)))
    figure = doc.blocks[1]
    assert figure.bbox == (120, 200, 1000, 840)
    assert [p.bbox for p in figure.parts] == [(120, 200, 1000, 760), (120, 770, 1000, 840)]
    md = doc.to_markdown()
    assert md == ("Left column text.\n\n![a plot]()\n\n*Figure 1: Loss curves.*\n\nRight column text.\n")


def test_empty_paragraphs_are_separators_in_reading_order():
    doc = parse_qwenvl_html('<body><p data-bbox="0 0 9 9">col 1</p><p></p><p data-bbox="20 0 29 9">col 2</p>'
                            '<p> </p><p data-bbox="0 20 9 29"></p><p data-bbox="0 30 9 39">end</p></body>')
    assert [(b.type, b.text, b.bbox) for b in doc.blocks] == [
        ("paragraph", "col 1", (0, 0, 9, 9)), ("separator", "", None), ("paragraph", "col 2", (20, 0, 29, 9)),
        ("separator", "", None), ("separator", "", (0, 20, 9, 29)), ("paragraph", "end", (0, 30, 9, 39))]
    assert doc.to_markdown() == "col 1\n\ncol 2\n\nend\n"
    assert [b.type for b in parse_qwenvl_html('<p data-bbox="0 0 9 9"><img src="x"/></p>').blocks] == ["paragraph"]


@pytest.mark.parametrize("tail", ['<p data-bbox="5 6', *('<p data-bbox="5 6 7 8">last wor' + cut for cut in (
    "<", "</", "</p", "<b", "<!-- a note", "<span cl", '<img alt="x'))])
def test_a_cut_mid_tag_never_leaks_markup(tail):
    head = '```html\n<html><body>\n<h1 data-bbox="1 1 9 9">Title</h1>\n'
    doc = parse_qwenvl_html(head + tail)
    assert doc.truncated
    assert all("<" not in b.text and ">" not in b.text for b in doc.blocks)
    assert doc.blocks[0].text == "Title" and not doc.blocks[0].truncated
    if len(doc.blocks) == 2:
        assert doc.blocks[1].text == "last wor" and doc.blocks[1].truncated
    else:  # cut inside the opening tag: no text was written, no block
        assert tail == '<p data-bbox="5 6' and len(doc.blocks) == 1


def test_a_cut_without_html_wrapper_is_flagged_and_less_than_is_kept_in_text():
    bare = parse_qwenvl_html('<p data-bbox="0 0 9 9">a</p><p data-bbox="0 10 9 19">b</')
    assert bare.truncated and [(b.text, b.truncated) for b in bare.blocks] == [("a", False), ("b", True)]
    math = parse_qwenvl_html('<p data-bbox="0 0 9 9">x &lt; y and 3 < 4</p>')
    assert not math.truncated and math.blocks[0].text == "x < y and 3 < 4"
    closed_then_cut = parse_qwenvl_html('<html><body><p data-bbox="0 0 9 9">done</p>')
    assert closed_then_cut.truncated and not closed_then_cut.blocks[0].truncated  # the cut fell after the block
    table = parse_qwenvl_html('<html><body><table data-bbox="0 0 9 9"><tr><td>1</td><td>2</')
    assert table.blocks[-1].truncated and [c.text for c in table.blocks[-1].rows[0]] == ["1", "2"]
