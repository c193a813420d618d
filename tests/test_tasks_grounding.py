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
    with pytest.raises(InputError, match="string"):
        parse_grounding(None)


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
                                   '[[243, 291]]', '"243 291"', '["243.0, 291.0"]'])
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
