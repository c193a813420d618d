"""Video time: both timestamp forms (seconds, mm:ss.ff / hh:mm:ss:ff), event spans from answers, temporal IoU."""

import pytest

from qwen25vl.errors import InputError
from qwen25vl.tasks import EventSpan, format_timestamp, parse_event_spans, parse_timestamp, temporal_iou
from qwen25vl.tasks.video_time import STYLES, video_grounding_prompt


@pytest.mark.parametrize("text, seconds", [
    ("64.0", 64.0), ("64", 64.0), ("7.5s", 7.5), ("12 seconds", 12.0), (3, 3.0),
    ("00:23.90", 23.9), ("01:35.60", 95.6), ("1:04", 64.0), ("75:00.5", 4500.5),  # mm:ss.ff (minutes may pass 59)
    ("01:02:03.48", 3723.48), ("00:01:04", 64.0),  # hh:mm:ss(.ff)
    ("00:01:04:12", 64 + 12 / 25), ("01:00:00:24", 3600 + 24 / 25),  # hh:mm:ss:ff at 25 fps
])
def test_parse_timestamp(text, seconds):
    assert parse_timestamp(text) == pytest.approx(seconds)


def test_frame_field_uses_the_frame_rate():
    assert parse_timestamp("00:00:01:15", frame_rate=30) == pytest.approx(1.5)
    with pytest.raises(InputError, match="00:00:01:30"):
        parse_timestamp("00:00:01:30", frame_rate=30)  # frame 30 does not exist at 30 fps


@pytest.mark.parametrize("bad", ["", "abc", "1:2:3:4:5", "01:75", "-3", "1::2", None, True, "nan"])
def test_bad_timestamps_are_user_errors(bad):
    with pytest.raises(InputError):
        parse_timestamp(bad)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize("seconds", [0.0, 9.96, 59.99, 64.48, 3723.4, 7199.96])
def test_format_parse_round_trip(style, seconds):
    text = format_timestamp(seconds, style)
    tol = {"seconds": 0.05, "hh:mm:ss:ff": 0.5 / 25}.get(style, 0.005)
    assert parse_timestamp(text) == pytest.approx(seconds, abs=tol + 1e-9)


def test_formats_look_like_the_model_writes_them():
    assert format_timestamp(64, "seconds") == "64.0"
    assert format_timestamp(95.6, "mm:ss.ff") == "01:35.60"
    assert format_timestamp(3723.48, "hh:mm:ss.ff") == "01:02:03.48"
    assert format_timestamp(64.48, "hh:mm:ss:ff") == "00:01:04:12"
    assert format_timestamp(1.999, "hh:mm:ss:ff") == "00:00:02:00"  # a frame rounded up carries into the second
    with pytest.raises(InputError, match="'frames'"):
        format_timestamp(1.0, "frames")


def test_plain_seconds_answer():
    assert parse_event_spans("The given query happens in 64.0 - 72.0 seconds.") == [EventSpan(64.0, 72.0)]
    assert parse_event_spans("It occurs from 1:04 to 1:12.") == [EventSpan(64.0, 72.0)]
    assert parse_event_spans("between 12.5s and 3.5s") == [EventSpan(3.5, 12.5)]  # reversed ends put in order


def test_dense_caption_json_answer():
    answer = ('```json\n[\n {"start_time": "00:23.90", "end_time": "01:35.60", "description": "A man cooks."},\n'
              ' {"start_time": "01:35.60", "end_time": "02:00.00", "description": "He eats."}\n]\n```')
    spans = parse_event_spans(answer)
    assert spans == [EventSpan(23.9, 95.6, "A man cooks."), EventSpan(95.6, 120.0, "He eats.")]
    assert spans[0].to_dict("mm:ss.ff") == {"start": "00:23.90", "end": "01:35.60", "description": "A man cooks."}


def test_other_json_shapes_hmsf_and_truncation():
    spans = parse_event_spans('{"events": [{"start": 1.5, "end": 3, "event": "jump"}, {"timestamp": [4, 6]}]}')
    assert spans == [EventSpan(1.5, 3.0, "jump"), EventSpan(4.0, 6.0)]
    hmsf = parse_event_spans('[{"start_time": "00:00:10:05", "end_time": "00:00:12:00"}]', frame_rate=10)
    assert hmsf == [EventSpan(10.5, 12.0)]
    cut = parse_event_spans('[{"start_time": "00:01.00", "end_time": "00:02.00"}, {"start_time": "00:0')
    assert cut == [EventSpan(1.0, 2.0)]


@pytest.mark.parametrize("garbage", ["", "I don't know.", "[1, 2, 3]", '{"start_time": "soon"}', "the year 2024",
                                     "[" * 3000])
def test_garbage_gives_no_spans(garbage):
    assert parse_event_spans(garbage) == []


def test_offset_for_a_cut_clip():
    assert parse_event_spans("happens in 2.0 - 4.0 seconds", offset=30) == [EventSpan(32.0, 34.0)]


def test_temporal_iou():
    assert temporal_iou((0, 10), (0, 10)) == 1
    assert temporal_iou(EventSpan(0, 10), EventSpan(5, 15)) == pytest.approx(5 / 15)
    assert temporal_iou((0, 1), (2, 3)) == 0
    assert temporal_iou((0, 10), (2, 4)) == pytest.approx(0.2)
    assert temporal_iou((5, 5), (5, 5)) == 0


def test_prompt():
    assert video_grounding_prompt("a dog jumps") == ("Give the query: 'a dog jumps', when does the described content "
                                                     "occur in the video?")
    with pytest.raises(InputError):
        video_grounding_prompt(" ")
