"""Grounding: the tolerant parser on fixed model answers, coordinate frames, IoU helpers."""

import random

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import (Frame, Grounding, as_frame, box_iou, format_grounding, grounding_prompt, match_boxes,
                            parse_grounding, resized_size_for, to_resized)
from qwen25vl.tasks._json import extract_json_values

WELL_FORMED = '[{"bbox_2d": [10, 20, 110, 220], "label": "cat"}, {"bbox_2d": [200, 40, 260, 90], "label": "dog"}]'


def test_bare_and_fenced_answers_parse_the_same():
    fenced = f"Sure! Here they are:\n```json\n{WELL_FORMED}\n```\nLet me know if you need more."
    for text in (WELL_FORMED, fenced, f"```JSON\n{WELL_FORMED}```"):
        r = parse_grounding(text)
        assert [g.label for g in r.items] == ["cat", "dog"]
        assert r.boxes == [(10, 20, 110, 220), (200, 40, 260, 90)]
        assert not r.truncated and r.frame == "resized"


def test_truncated_answer_keeps_the_complete_prefix_and_says_so():
    cut = '```json\n[\n  {"bbox_2d": [1, 2, 3, 4], "label": "a"},\n  {"bbox_2d": [5, 6, 7, 8], "label": "b"},\n  {"bbox_2d": [9, 1'
    r = parse_grounding(cut)
    assert r.truncated
    assert [g.label for g in r.items] == ["a", "b"]
    assert "truncated" in r.summary()


def test_python_literals_single_object_and_extra_keys():
    r = parse_grounding("{'bbox_2d': [5, 6, 50, 60], 'label': 'cup', 'color': 'red', 'visible': true}")
    assert r.items == [Grounding(label="cup", bbox=(5, 6, 50, 60), extra={"color": "red", "visible": True})]


def test_points_swapped_corners_and_nested_objects_key():
    text = ('{"objects": [{"point_2d": [30, 40], "label": "eye"}, {"bbox_2d": [100, 90, 10, 20], "label": "face"},'
            ' {"bbox_2d": [1, 2, 3], "label": "broken"}]}')
    r = parse_grounding(text)
    assert r.points == [(30, 40)]
    assert r.boxes == [(10, 20, 100, 90)]  # corners put in order
    assert r.skipped == 1


@pytest.mark.parametrize("garbage", ["", "I cannot see any cats.", "```json\n```", "{{{{", "[1, 2, 3]",
                                     "[oops] {not json}", '{"bbox_2d": "none"}', "[" * 3000, '{"a": [' * 2000,
                                     "[" * 900 + "]" * 900])
def test_garbage_gives_an_empty_result_not_an_exception(garbage):
    r = parse_grounding(garbage)
    assert r.items == [] and r.count == 0
    assert r.summary().startswith("no boxes parsed")


def test_non_string_answer_is_a_user_error():
    with pytest.raises(InputError, match="^model answer must be a string, got NoneType$"):
        parse_grounding(None)
    with pytest.raises(InputError, match="^model answer must be a string, got bytes$"):
        parse_grounding(b"[]")


def test_plain_text_boxes_and_xml_points():
    plain = parse_grounding("12,34,56,78 red car\n100,110,150,160 tree")
    assert [(g.label, g.bbox) for g in plain.items] == [("red car", (12, 34, 56, 78)), ("tree", (100, 110, 150, 160))]
    xml = parse_grounding('<points x1="10" y1="20" x2="30.5" y2="40" alt="apples">apples</points>')
    assert xml.points == [(10, 20), (30.5, 40)] and {g.label for g in xml.items} == {"apples"}


def test_counting_answer_reads_the_stated_number():
    text = '```json\n[{"bbox_2d": [1,1,5,5], "label": "cake"}, {"bbox_2d": [6,6,9,9], "label": "cake"}]\n```\nThere are three cakes.'
    r = parse_grounding(text)
    assert r.count == 2 and r.stated_count == 3


def test_prompts_name_the_query_and_reject_bad_mode():
    assert grounding_prompt("cake", "detect") == ("Outline the position of each cake and output all the coordinates "
                                                  "in JSON format.")
    assert "bbox coordinates using JSON format" in grounding_prompt("top right brown cake", "refer")
    with pytest.raises(InputError, match="'circle'"):
        grounding_prompt("cake", "circle")
    with pytest.raises(InputError, match="empty"):
        grounding_prompt("  ")


def test_json_extraction_keeps_prose_outside_values():
    found = extract_json_values('Total: 4.\n```json\n[{"a": 1}]\n```\nDone [x].')
    assert found.values == [[{"a": 1}]] and "Total: 4." in found.prose and "Done [x]." in found.prose


# ---- coordinate frames -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(640, 480), (37, 1200), (4000, 3000), (101, 99), (50, 30)])
def test_round_trip_resized_original_under_one_pixel(size):
    # sizes that smart_resize shrinks (4000x3000 with a cap), grows (50x30 under the floor) and rounds
    frame = as_frame(original_size=size, min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 256)
    rw, rh = frame.resized_size
    assert rw % 28 == 0 and rh % 28 == 0
    rng = random.Random(0)
    for _ in range(50):
        x, y = rng.uniform(0, size[0]), rng.uniform(0, size[1])
        bx, by = frame.to_original(*frame.to_resized(x, y))
        assert abs(bx - x) < 1 and abs(by - y) < 1
        # model frame -> original -> model frame
        u, v = rng.uniform(0, rw), rng.uniform(0, rh)
        assert max(abs(a - b) for a, b in zip(frame.to_resized(*frame.to_original(u, v)), (u, v))) < 1e-6


def test_integer_training_labels_round_trip_within_one_pixel_when_upscaled():
    frame = as_frame(original_size=(50, 30), min_pixels=28 * 28 * 16, max_pixels=28 * 28 * 256)
    assert frame.resized_size[0] > 50  # the model sees it larger: rounding there costs < 1 original px
    box = (3.3, 4.6, 41.2, 28.9)
    label = frame.box_to_resized(box, integer=True)
    assert all(isinstance(v, int) for v in label)
    assert max(abs(a - b) for a, b in zip(frame.box_to_original(label), box)) < 1


def test_integer_labels_are_clamped_inside_the_resized_image():
    frame = Frame((100, 100), (56, 56))
    assert frame.box_to_resized((-5, -5, 150, 100), integer=True) == (0, 0, 55, 55)


def test_frame_matches_the_processor_resize_info_on_a_real_image():
    import qwen25vl.processing.image as image_mod
    from PIL import Image

    img = Image.new("RGB", (333, 517), (10, 200, 30))
    processed = image_mod.process_image(img, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    ours = as_frame(original_size=img.size, min_pixels=28 * 28 * 4, max_pixels=28 * 28 * 64)
    assert ours.resized_size == tuple(processed.resize.resized_size)
    _, gh, gw = processed.grid_thw
    assert ours.resized_size == (gw * 14, gh * 14)  # what the cookbooks use: grid * 14
    from_info = as_frame(processed.resize)
    for p in [(0, 0), (17.5, 400.25), (ours.resized_size[0], ours.resized_size[1])]:
        a, b = from_info.to_original(*p), processed.resize.to_original(*p)
        assert abs(a[0] - b[0]) < 1e-9 and abs(a[1] - b[1]) < 1e-9


def test_grounding_result_maps_to_original_and_back_to_training_labels():
    frame = Frame((1000, 500), (500, 250))
    r = parse_grounding('[{"bbox_2d": [10, 20, 110, 220], "label": "cat"}, {"point_2d": [50, 60], "label": "eye"}]')
    orig = r.to_original(frame)
    assert orig.frame == "original" and orig.boxes == [(20, 40, 220, 440)] and orig.points == [(100, 120)]
    with pytest.raises(InputError, match="already"):
        orig.to_original(frame)
    back = to_resized(orig.items, frame)
    assert back[0].bbox == (10, 20, 110, 220) and back[1].point == (50, 60)
    assert parse_grounding(format_grounding(back)).items == r.items


def test_bad_sizes_are_user_errors():
    with pytest.raises(InputError, match="original_size"):
        Frame((0, 10), (28, 28))
    with pytest.raises(InputError, match="ResizeInfo or original_size"):
        as_frame()
    assert resized_size_for((280, 140), min_pixels=56 * 56, max_pixels=28 * 28 * 1000) == (280, 140)


# ---- IoU ---------------------------------------------------------------------------------------------------------

def test_box_iou_and_matching():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 1, 1), (2, 2, 3, 3)) == 0
    assert box_iou((0, 0, 0, 0), (0, 0, 0, 0)) == 0
    pred = [(0, 0, 10, 10), (50, 50, 60, 60), (100, 100, 110, 110)]
    truth = [(51, 51, 61, 61), (1, 0, 11, 10)]
    pairs = match_boxes(pred, truth, threshold=0.5)
    assert sorted((i, j) for i, j, _ in pairs) == [(0, 1), (1, 0)]


def test_results_map_with_the_processor_resize_info_directly():
    import qwen25vl.processing.image as image_mod
    info = image_mod.ResizeInfo(original_size=(1000, 500), resized_size=(500, 250))
    r = parse_grounding('[{"bbox_2d": [10, 20, 110, 220], "label": "cat"}]').to_original(info)
    assert r.boxes == [(20, 40, 220, 440)] and r.frame_map == Frame((1000, 500), (500, 250))


@pytest.mark.parametrize("point", ['["243, 291"]', '"243,291"', '"(243, 291)"', '[243, 291]', '["243", "291"]',
                                   '[[243, 291]]', '[[[243, 291]]]', '"243 291"', '["243.0, 291.0"]'])
def test_points_written_as_one_string_or_nested(point):
    r = parse_grounding(f'```json\n[{{"point_2d": {point}, "label": "dot"}}]\n```')
    assert r.points == [(243, 291)] and r.items[0].label == "dot" and r.skipped == 0


@pytest.mark.parametrize("box", ['["10, 20, 30, 40"]', '["10, 20", "30, 40"]', '"(10, 20), (30, 40)"',
                                 '[[10, 20], [30, 40]]', '[10.0, 20, "30", 40]'])
def test_boxes_written_as_strings_or_corner_pairs(box):
    assert parse_grounding(f'[{{"bbox_2d": {box}}}]').boxes == [(10, 20, 30, 40)]


@pytest.mark.parametrize("bad", ['["243"]', '"243, 291, 5"', '[true, 291]', '[{"x": 1}, 2]', '[[[[1, 2]]]]',
                                 '[1e999, 2]', '[NaN, 2]', f'[{10 ** 400}, 2]', '[null, 2]', '""'])
def test_unusable_points_are_skipped_not_guessed(bad):
    r = parse_grounding(f'[{{"point_2d": {bad}, "label": "dot"}}, {{"point_2d": [1, 2], "label": "ok"}}]')
    assert r.points == [(1, 2)] and r.skipped == 1


# ---- edges a one-line slip would change (mutation-proofing) -------------------------------------------------------

@pytest.mark.parametrize("mode, prompt", [
    ("detect", "Outline the position of each red car and output all the coordinates in JSON format."),
    ("refer", "Locate the red car, output its bbox coordinates using JSON format."),
    ("point", "Point to the red car, output its point coordinates in JSON format."),
    ("count", "Count the number of red car in the image. Outline the position of each red car and output all the "
              "coordinates in JSON format, then state the total number."),
])
def test_every_prompt_word_for_word(mode, prompt):
    assert grounding_prompt("  red car \n", mode) == prompt
    assert grounding_prompt("red car") == grounding_prompt("red car", "detect")


def test_bad_mode_message_lists_the_modes():
    with pytest.raises(InputError, match=r"^grounding mode must be one of detect, refer, point, count, got 'x'$"):
        grounding_prompt("cake", "x")
    with pytest.raises(InputError, match="^grounding query is empty$"):
        grounding_prompt("\t")


@pytest.mark.parametrize("key", ["bbox_2d", "bbox", "box_2d", "box"])
def test_every_box_key(key):
    r = parse_grounding(f'[{{"{key}": [1, 2, 3, 4], "label": "a"}}]')
    assert r.boxes == [(1, 2, 3, 4)] and r.items[0].extra == {}


@pytest.mark.parametrize("key", ["point_2d", "point"])
def test_every_point_key(key):
    r = parse_grounding(f'[{{"{key}": [5, 6], "label": "a"}}]')
    assert r.points == [(5, 6)] and r.items[0].extra == {}


@pytest.mark.parametrize("key", ["label", "name", "text", "description"])
def test_every_label_key(key):
    (g,) = parse_grounding(f'[{{"bbox_2d": [1, 2, 3, 4], "{key}": "cat", "color": "red"}}]').items
    assert g.label == "cat" and g.extra == {"color": "red"}


def test_label_key_priority_numbers_and_non_scalar_labels():
    (g,) = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "description": "d", "label": "l", "name": "n"}]').items
    assert g.label == "l" and g.extra == {"description": "d", "name": "n"}  # "label" wins; the others are extra
    (g,) = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "label": 7}]').items
    assert g.label == "7"
    (g,) = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "label": ["x"], "name": "n"}]').items
    assert g.label == "n" and g.extra == {"label": ["x"]}  # a list is no label: the next key is
    (g,) = parse_grounding('[{"bbox_2d": [1, 2, 3, 4]}]').items
    assert g.label is None and g.extra == {}


def test_box_and_point_in_one_object_and_corner_order_per_axis():
    (g,) = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "point_2d": [2, 3], "label": "a"}]').items
    assert g.bbox == (1, 2, 3, 4) and g.point == (2, 3)
    assert parse_grounding('[{"bbox_2d": [30, 2, 10, 40]}]').boxes == [(10, 2, 30, 40)]  # only x swapped
    assert parse_grounding('[{"bbox_2d": [1, 40, 30, 2]}]').boxes == [(1, 2, 30, 40)]  # only y swapped
    assert parse_grounding('[{"point_2d": [9, 1]}]').points == [(9, 1)]  # a point is never reordered


def test_items_keep_the_answers_order_through_nesting():
    text = '[[{"point_2d": [1, 1], "label": "a"}, {"point_2d": [2, 2], "label": "b"}], {"objects": [' \
           '{"point_2d": [3, 3], "label": "c"}]}, {"point_2d": [4, 4], "label": "d"}]'
    assert [g.label for g in parse_grounding(text).items] == ["a", "b", "c", "d"]
    one_key = parse_grounding('{"bbox_2d": [1, 2, 3, 4]}')  # a lone object whose one key is a box is an item
    assert one_key.boxes == [(1, 2, 3, 4)]
    two_keys = parse_grounding('{"a": [{"point_2d": [1, 1]}], "b": [{"point_2d": [2, 2]}]}')
    assert two_keys.items == [] and two_keys.skipped == 1  # not a one-key wrapper: one unusable object


def test_to_dict_rounds_to_two_decimals_and_puts_extra_keys_first():
    g = Grounding(label="a", bbox=(1.23456, 2.0, 3.005, 4.9999), point=(0.125, 7.777), extra={"score": 0.9})
    d = g.to_dict()
    assert d == {"score": 0.9, "bbox_2d": [1.23, 2.0, 3.0, 5.0], "point_2d": [0.12, 7.78], "label": "a"}
    assert list(d) == ["score", "bbox_2d", "point_2d", "label"]
    assert Grounding().to_dict() == {} and Grounding(label="").to_dict() == {"label": ""}


def test_result_properties_summary_and_json():
    text = ('[{"bbox_2d": [1, 2, 3, 4], "label": "dog"}, {"point_2d": [5, 6]}, {"a": 1, "b": 2}, '
            '{"bbox_2d": [7, 8, 9, 10], "label": "cat"}, {"nope": 1}]')
    r = parse_grounding(text)
    assert r.raw == text and r.skipped == 2
    assert r.boxes == [(1, 2, 3, 4), (7, 8, 9, 10)] and r.points == [(5, 6)] and r.count == 3
    assert r.summary() == "3 found: ?, cat, dog"
    assert r.to_json() == {"frame": "resized", "count": 3, "truncated": False, "skipped": 2, "stated_count": None,
                           "items": [{"bbox_2d": [1, 2, 3, 4], "label": "dog"}, {"point_2d": [5, 6]},
                                     {"bbox_2d": [7, 8, 9, 10], "label": "cat"}]}
    cut = parse_grounding('[{"bbox_2d": [1, 2, 3, 4], "label": "dog"}, {"bbox_2d": [5, ')
    assert cut.summary() == "1 found: dog (answer truncated: later entries lost)"
    assert parse_grounding('[{"bbox_2d": [5, ').summary() == "no boxes parsed (the answer was cut off)"
    assert parse_grounding("none").summary() == "no boxes parsed (the answer holds no bbox_2d / point_2d entries)"


def test_to_original_maps_boxes_and_points_by_axis_and_keeps_the_rest():
    frame = Frame((300, 800), (100, 200))  # x * 3, y * 4
    r = parse_grounding('[{"bbox_2d": [1, 2, 5, 7], "point_2d": [10, 20], "label": "a", "k": 1}, '
                        '{"point_2d": [1, 1]}, {"bbox_2d": [0, 0, 1, 1]}]Total: 3')
    orig = r.to_original(frame)
    assert orig.items[0] == Grounding(label="a", bbox=(3, 8, 15, 28), point=(30, 80), extra={"k": 1})
    assert orig.items[1].bbox is None and orig.items[1].point == (3, 4)
    assert orig.items[2].point is None and orig.items[2].bbox == (0, 0, 3, 4)
    assert (orig.raw, orig.stated_count, orig.skipped, orig.frame_map) == (r.raw, 3, 0, frame)
    assert r.frame == "resized" and r.items[0].bbox == (1, 2, 5, 7)  # the parsed result is left as it was


def test_to_resized_rounds_and_clamps_points_per_axis():
    frame = Frame((300, 800), (100, 200))
    items = [Grounding(point=(1.6 * 3, 2.4 * 4)), Grounding(point=(-9, -9)), Grounding(point=(400, 900)),
             Grounding(point=(297, 796)), Grounding(bbox=(3, 8, 15, 28), label="b")]
    out = to_resized(items, frame)
    assert [g.point for g in out[:4]] == [(2, 2), (0, 0), (99, 199), (99, 199)]
    assert out[4] == Grounding(label="b", bbox=(1, 2, 5, 7)) and all(type(v) is int for v in out[4].bbox)
    exact = to_resized(items, frame, integer=False)
    assert exact[0].point == pytest.approx((1.6, 2.4)) and exact[2].point == pytest.approx((400 / 3, 225))
    assert exact[4].bbox == pytest.approx((1, 2, 5, 7)) and to_resized([Grounding(label="x")], frame)[0].point is None


def test_format_grounding_is_the_training_format():
    items = [Grounding(label="猫", bbox=(1, 2, 3, 4)), {"point_2d": [5, 6]}]
    body = "\n".join(['[', '    {', '        "bbox_2d": [', *(f'            {v},' for v in (1, 2, 3)), '            4',
                      '        ],', '        "label": "猫"', '    },', '    {', '        "point_2d": [', '            5,',
                      '            6', '        ]', '    }', ']'])  # indent=4, unicode kept
    assert format_grounding(items, fence=False) == body
    assert format_grounding(items) == f"```json\n{body}\n```"


def test_plain_text_boxes_edges():
    r = parse_grounding("  -1.5 , 2,3.25,4   a big dog  \r\n5,6,7,8\nnot, a, box, 1 x")
    assert [(g.label, g.bbox) for g in r.items] == [("a big dog", (-1.5, 2, 3.25, 4)), (None, (5, 6, 7, 8))]
    assert parse_grounding("1,2,3 three numbers").items == []
    assert parse_grounding('[{"bbox_2d": [1, 2, 3, 4]}]\n5,6,7,8 extra').boxes == [(1, 2, 3, 4)]  # JSON wins


def test_xml_points_edges():
    single = parse_grounding('<points x="10.5" y="20" alt="cup">a cup</points>')
    assert [(g.label, g.point) for g in single.items] == [("cup", (10.5, 20))]
    inner = parse_grounding('<points x1="1" y1="2" x2="3" y2="4">two dots</points>')
    assert [(g.label, g.point) for g in inner.items] == [("two dots", (1, 2)), ("two dots", (3, 4))]
    gap = parse_grounding('<points x1="1" y1="2" x3="5" y3="6" alt="a"></points>')
    assert gap.points == [(1, 2)]  # the numbering stops at the first missing x
    bad = parse_grounding('<points x1="1" y1="oops" x2="3" y2="4" alt="a">')
    assert bad.points == [(3, 4)]  # an unreadable pair is skipped, the cut-off tag still read
    nolabel = parse_grounding('<points x1="1" y1="2"></points>')
    assert nolabel.items[0].label is None
    many = "".join(f' x{i}="{i}" y{i}="{i}"' for i in range(1, 101))
    assert len(parse_grounding(f"<points{many}>p</points>").points) == 99  # one tag reads x1..x99 at most
    both = parse_grounding('<points x1="1" y1="2">a</points> <points x1="3" y1="4">b</points>')
    assert [g.label for g in both.items] == ["a", "b"]


@pytest.mark.parametrize("text, count", [
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] There are 12 apples.", 12),
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] I count five, no, seven.", 7),  # the last number stated
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] zero", 0),
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] There are Twelve.", 12),
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] there is one", 1),
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] Nothing else.", None),
    ("[{\"bbox_2d\": [1, 2, 3, 4]}] someone", None),  # a number word inside a word is not a number
    ('[{"point_2d": [1, 2]}] total 2 <points x1="3" y1="4">9 dots</points>', 2),  # XML text is not prose
    ('[{"point_2d": [1, 2]}] total 2 <points x1="3"\ny1="4">\n9 dots</points>', 2),  # across lines too
    ('[{"point_2d": [1, 2]}] total 2 <points x1="3" y1="4">9 do', 2),  # a cut-off tag too
    ('[{"point_2d": [1, 2]}] total 2<points x1="3" y1="4">9</points>', 2),  # the tag is replaced by a word break
    ("There are 3 apples.", None),  # no JSON values: no count is read from prose alone
])
def test_stated_count(text, count):
    assert parse_grounding(text).stated_count == count
