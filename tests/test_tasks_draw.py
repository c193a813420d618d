"""Pictures: boxes, points, labels and legends drawn where the coordinates say, checked pixel by pixel."""

from PIL import Image

from qwen25vl.tasks import (Action, Frame, Grounding, draw_actions, draw_groundings, draw_layout, parse_grounding,
                            parse_qwenvl_html)
from qwen25vl.tasks.draw import PALETTE, colour_map

GREY = (128, 128, 128)


def _close(a, b, tol=40):
    return all(abs(x - y) <= tol for x, y in zip(a, b))


def test_boxes_are_drawn_on_their_edges_in_their_label_colour():
    img = Image.new("RGB", (400, 300), GREY)
    items = [Grounding("cat", (50, 60, 150, 200)), Grounding("dog", (220, 40, 380, 260)),
             Grounding("cat", (20, 230, 90, 290))]
    out = draw_groundings(img, items, width=3, labels=False, legend=False)
    assert out.size == img.size
    cat, dog = PALETTE[0], PALETTE[1]
    px = out.load()
    for x, y in [(50, 130), (150, 130), (100, 60), (100, 200), (20, 260), (55, 290)]:  # edges of the two cat boxes
        assert px[x, y] == cat, (x, y, px[x, y])
    for x, y in [(220, 150), (380, 150), (300, 40), (300, 260)]:
        assert px[x, y] == dog, (x, y, px[x, y])
    for x, y in [(100, 130), (300, 150), (10, 10), (190, 100)]:  # insides and outside stay untouched
        assert px[x, y] == GREY
    assert img.getpixel((50, 130)) == GREY  # the input is not modified


def test_model_answer_to_picture_in_original_pixels():
    # the model saw a 200x150 image; the boxes are drawn on the 400x300 original at twice the coordinates
    result = parse_grounding('```json\n[{"bbox_2d": [25, 30, 75, 100], "label": "cup"}]\n```').to_original(
        Frame((400, 300), (200, 150)))
    out = draw_groundings(Image.new("RGB", (400, 300), GREY), result.items, width=2, labels=False, legend=False)
    assert out.getpixel((50, 150)) == PALETTE[0] and out.getpixel((150, 150)) == PALETTE[0]
    assert out.getpixel((25, 150)) == GREY  # where the box would be in the wrong frame


def test_points_labels_and_legend():
    img = Image.new("RGB", (300, 200), GREY)
    items = [Grounding("eye", point=(100, 100)), Grounding("nose", (150, 80, 250, 180))]
    out = draw_groundings(img, items, width=2)
    assert out.width > img.width and out.height >= img.height  # legend panel on the right
    assert out.getpixel((100, 100)) == PALETTE[0]  # filled dot
    assert out.getpixel((250, 150)) == PALETTE[1]  # right edge of the box
    panel = out.crop((img.width, 0, out.width, out.height))
    colours = {c for _, c in panel.getcolors(maxcolors=100000)}
    assert PALETTE[0] in colours and PALETTE[1] in colours  # a swatch per label
    label_tag = out.crop((150, 60, 200, 80))  # the filled label tag above the box's top-left corner
    assert any(_close(c, PALETTE[1], 0) for _, c in label_tag.getcolors(maxcolors=100000))


def test_colour_map_is_stable_per_label():
    assert colour_map(["b", "a", "b", None]) == {"b": PALETTE[0], "a": PALETTE[1], "?": PALETTE[2]}


def test_layout_overlay_colours_by_block_type():
    doc = parse_qwenvl_html('<html><body><h1 data-bbox="10 10 190 40">T</h1><p data-bbox="10 60 190 140">x</p>'
                            '<p>no box</p></body></html>')
    img = Image.new("RGB", (200, 160), GREY)
    out = draw_layout(img, doc.blocks, width=2)
    assert out.getpixel((10, 25)) == PALETTE[0]  # heading, left edge
    assert out.getpixel((100, 140)) == PALETTE[1]  # paragraph, bottom edge
    assert out.getpixel((100, 100)) == GREY


def test_actions_picture_marks_targets():
    img = Image.new("RGB", (200, 200), GREY)
    acts = [Action("mobile_use", "swipe", coordinate=(50, 50), coordinate2=(150, 50)), Action("mobile_use", "wait", time=1)]
    out = draw_actions(img, acts, legend=False)
    assert out.getpixel((100, 50)) == PALETTE[0]  # on the swipe line
    assert out.getpixel((100, 150)) == GREY
