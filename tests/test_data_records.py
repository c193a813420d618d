import json

import pytest

from qwen25vl.cli import main
from qwen25vl.data.convert import convert_file, from_llava, from_swift
from qwen25vl.data.records import iter_records, parse_record, read_records, write_records
from qwen25vl.errors import InputError

GOOD = {"messages": [
    {"role": "user", "content": [{"type": "image", "image": "a.png", "max_pixels": 50176},
                                 {"type": "video", "video": ["f0.png", "f1.png"], "fps": 0.5},
                                 {"type": "text", "text": "what?"}]},
    {"role": "assistant", "content": "a cat"}]}


def test_records_round_trip(tmp_path):
    pref = {"messages": [{"role": "user", "content": "hi"}], "chosen": [{"role": "assistant", "content": "yes"}],
            "rejected": [{"role": "assistant", "content": "no"}]}
    path = tmp_path / "d.jsonl"
    write_records(path, [GOOD, parse_record(pref)])
    back = list(read_records(path))
    assert [r.to_json() for r in back] == [GOOD, pref]
    assert back[0].root == tmp_path and back[1].where == "d.jsonl:2"


def test_preference_answer_forms_are_normalised():
    record = parse_record({"messages": [{"role": "user", "content": "q"}], "chosen": "good",
                           "rejected": {"role": "assistant", "content": "bad"}})
    assert record.chosen == [{"role": "assistant", "content": "good"}]
    assert record.rejected == [{"role": "assistant", "content": "bad"}]


@pytest.mark.parametrize("mutate, field", [
    (lambda r: r["messages"][0]["content"][0].update(max_pixel=5), "max_pixel"),
    (lambda r: r["messages"][0]["content"][0].update(min_pixels=-3), "content[0].min_pixels"),
    (lambda r: r["messages"][0]["content"][0].update(min_pixels=10**9), "exceeds max_pixels"),
    (lambda r: r["messages"][0]["content"][1].update(fps=0), "content[1].fps"),
    (lambda r: r["messages"][0]["content"][0].update(image=3), "content[0].image"),
    (lambda r: r["messages"][1].update(role="bot"), "messages[1].role"),
    (lambda r: r["messages"][1].update(content="  "), "empty answer"),
    (lambda r: r["messages"].pop(), "no assistant answer"),
    (lambda r: r.update(chosen="x"), "both chosen and rejected"),
    (lambda r: r.update(extra=1), "unknown field"),
    (lambda r: r["messages"][0]["content"].append({"type": "audio"}), "content[3].type"),
])
def test_bad_records_name_line_and_field(tmp_path, mutate, field):
    bad = json.loads(json.dumps(GOOD))
    mutate(bad)
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InputError, match="d.jsonl:2") as err:
        list(read_records(path))
    assert field in str(err.value)


def test_iter_records_yields_errors_and_goes_on(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text(json.dumps(GOOD) + "\n{not json\n\n" + json.dumps(GOOD) + "\n")
    items = list(iter_records(path))
    assert [type(i).__name__ for i in items] == ["Record", "InputError", "Record"]
    assert "d.jsonl:2" in str(items[1]) and items[2].where == "d.jsonl:4"


def test_llava_tags_become_parts_in_place():
    obj = {"image": ["a.jpg", "b.jpg"], "conversations": [
        {"from": "system", "value": "be brief"},
        {"from": "human", "value": "<image>\nleft, <image> right?"},
        {"from": "gpt", "value": "both cats"}]}
    out = from_llava(obj, item_options={"image": {"max_pixels": 1000}})
    assert out["messages"][0] == {"role": "system", "content": "be brief"}
    assert out["messages"][1]["content"] == [
        {"type": "image", "image": "a.jpg", "max_pixels": 1000}, {"type": "text", "text": "\nleft, "},
        {"type": "image", "image": "b.jpg", "max_pixels": 1000}, {"type": "text", "text": " right?"}]
    assert out["messages"][2] == {"role": "assistant", "content": "both cats"}


def test_llava_without_tags_puts_media_first_and_counts_are_checked():
    out = from_llava({"video": "v.mp4", "conversations": [{"from": "human", "value": "what?"},
                                                          {"from": "gpt", "value": "a dog"}]})
    assert out["messages"][0]["content"] == [{"type": "video", "video": "v.mp4"}, {"type": "text", "text": "what?"}]
    with pytest.raises(InputError, match="1 <image> tag.*2 image"):
        from_llava({"image": ["a", "b"], "conversations": [{"from": "human", "value": "<image>x"},
                                                           {"from": "gpt", "value": "y"}]}, "r7")


def test_swift_layout_and_preference():
    obj = {"messages": [{"role": "user", "content": "<image>describe"}, {"role": "assistant", "content": "red"}],
           "images": [{"path": "x.png"}], "rejected_response": "blue"}
    out = from_swift(obj)
    assert out["messages"] == [{"role": "user", "content": [{"type": "image", "image": "x.png"},
                                                            {"type": "text", "text": "describe"}]}]
    assert out["chosen"] == [{"role": "assistant", "content": "red"}]
    assert out["rejected"] == [{"role": "assistant", "content": "blue"}]
    parse_record(out)  # our validation accepts it


def test_convert_file_json_list_and_cli(tmp_path):
    src = tmp_path / "llava.json"
    items = [{"image": "a.png", "conversations": [{"from": "human", "value": "<image>q"},
                                                 {"from": "gpt", "value": "a"}]},
             {"image": "a.png", "conversations": [{"from": "human", "value": "no tag"}]}]  # no answer: bad
    src.write_text(json.dumps(items))
    written, skipped = convert_file(src, tmp_path / "o.jsonl", "llava", skip_bad=True)
    assert written == 1 and len(skipped) == 1 and "llava.json[1]" in skipped[0]
    assert main(["data", "convert", "--from", "llava", str(src), str(tmp_path / "c.jsonl"), "--skip-bad",
                 "--max-pixels", "9000"]) == 0
    record = next(read_records(tmp_path / "c.jsonl"))
    assert record.messages[0]["content"][0] == {"type": "image", "image": "a.png", "max_pixels": 9000}
    assert main(["data", "convert", "--from", "llava", str(src), str(tmp_path / "d.jsonl")]) == 2


def test_swift_jsonl_through_cli_and_video_tags(tmp_path):
    src = tmp_path / "swift.jsonl"
    src.write_text(json.dumps({"messages": [{"role": "user", "content": "<video>when?"},
                                            {"role": "assistant", "content": "at 3 s"}],
                               "videos": ["v.mp4"]}) + "\n")
    assert main(["data", "convert", "--from", "swift", str(src), str(tmp_path / "o.jsonl"), "--fps", "1"]) == 0
    record = next(read_records(tmp_path / "o.jsonl"))
    assert record.messages[0]["content"][0] == {"type": "video", "video": "v.mp4", "fps": 1.0}
    assert record.chosen is None


def test_tool_call_answers_and_video_window_validation():
    call = {"messages": [{"role": "user", "content": "weather?"},
                         {"role": "assistant", "content": None, "tool_calls": [{"function": {"name": "w"}}]}]}
    assert parse_record(call).messages[1]["tool_calls"]
    bad = json.loads(json.dumps(GOOD))
    bad["messages"][0]["content"][1]["video_start"] = -1
    with pytest.raises(InputError, match="video_start"):
        parse_record(bad, where="x:3")
    bad = json.loads(json.dumps(GOOD))
    bad["messages"][1]["content"] = [{"type": "image", "image": "a.png"}]
    with pytest.raises(InputError, match="assistant message cannot hold a image"):
        parse_record(bad)
