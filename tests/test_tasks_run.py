"""The task wrappers and the CLI.

The wrappers are tested with a stand-in model whose `.chat()` returns a fixed answer (what is under test is the
message they build, the parsing and the mapping back to the caller's pixels); the CLI runs end to end once on a real
tiny random checkpoint, where only the plumbing can be checked (a random model answers garbage).
"""

import json

import pytest
from PIL import Image, ImageDraw

from qwen25vl.tasks import act, find_in_video, ground, parse_document
from qwen25vl.tasks.draw import PALETTE


class FakeVLM:
    """Anything with `.chat(messages, **sampling) -> str` is a model to the task wrappers."""

    def __init__(self, answer: str):
        self.answer = answer
        self.calls = []

    def chat(self, messages, **sampling):
        self.calls.append((messages, sampling))
        return self.answer


def _photo(size=(900, 600)):
    img = Image.new("RGB", size, (90, 90, 90))
    ImageDraw.Draw(img).ellipse([100, 100, 300, 300], fill=(250, 250, 0))
    return img


def _resized_size(vlm):
    """The size the processor gives the image part the wrapper built (the frame the model answers in)."""
    from qwen25vl.processing.image import process_image

    (messages, _) = vlm.calls[-1]
    part = next(p for m in messages if isinstance(m["content"], list) for p in m["content"] if p["type"] == "image")
    return process_image(part["image"], min_pixels=part["min_pixels"], max_pixels=part["max_pixels"]).resize


def test_ground_maps_the_answer_to_the_original_image():
    vlm = FakeVLM('```json\n[{"bbox_2d": [56, 56, 168, 168], "label": "sun"}]\n```')
    result = ground(vlm, _photo(), "sun", max_pixels=28 * 28 * 100)
    info = _resized_size(vlm)
    assert info.resized_size != info.original_size  # the model saw a smaller image
    (messages, sampling) = vlm.calls[0]
    # the official grounding cookbook's order: the query, then the image
    assert messages[0]["content"][0]["text"].startswith("Outline the position of each sun")
    assert messages[0]["content"][1]["type"] == "image"
    assert sampling["max_new_tokens"] > 0
    sx = info.original_size[0] / info.resized_size[0]
    sy = info.original_size[1] / info.resized_size[1]
    assert result.frame == "original" and result.frame_map.resized_size == tuple(info.resized_size)
    assert result.boxes[0] == pytest.approx((56 * sx, 56 * sy, 168 * sx, 168 * sy))


def test_ground_with_garbage_answer_reports_nothing_found():
    result = ground(FakeVLM("I see a yellow circle."), _photo(), "sun", mode="refer")
    assert result.items == [] and result.summary().startswith("no boxes parsed")


def test_parse_document_sends_the_cookbook_prompts_and_maps_boxes():
    vlm = FakeVLM('```html\n<html><body><h1 data-bbox="28 28 280 56">Title</h1></body></html>\n```')
    doc = parse_document(vlm, _photo((560, 840)), max_pixels=28 * 28 * 150)
    (messages, _) = vlm.calls[0]
    assert messages[0]["role"] == "system" and "QwenVL Document Parser HTML" in messages[0]["content"]
    assert messages[1]["content"][1]["text"] == "QwenVL HTML"
    info = _resized_size(vlm)
    s = info.original_size[0] / info.resized_size[0]
    assert doc.blocks[0].bbox == pytest.approx((28 * s, 28 * s, 280 * s, 56 * s), rel=0.02)


def test_act_scales_to_the_screen_and_declares_the_resized_size():
    vlm = FakeVLM('<tool_call>\n{"name": "computer_use", "arguments": {"action": "left_click", '
                  '"coordinate": [100, 50]}}\n</tool_call>')
    screenshot = _photo((1280, 800))
    step = act(vlm, screenshot, "click the sun", max_pixels=28 * 28 * 300, screen_size=(2560, 1600))
    info = _resized_size(vlm)
    (messages, _) = vlm.calls[0]
    w, h = info.resized_size
    assert f"The screen's resolution is {w}x{h}." in messages[0]["content"]
    assert messages[1]["content"][0]["text"] == "The user query: click the sun"
    (a,) = step.actions
    assert a.frame == "screen" and a.coordinate == (round(100 * 2560 / w), round(50 * 1600 / h))


def test_find_in_video_builds_a_video_part_and_adds_the_cut_offset():
    vlm = FakeVLM("The given query happens in 4.0 - 6.5 seconds.")
    answer = find_in_video(vlm, "clip.mp4", "a dog jumps", fps=1.0, start=10.0)
    (messages, _) = vlm.calls[0]
    part = messages[0]["content"][0]
    assert part == {"type": "video", "video": "clip.mp4", "fps": 1.0, "video_start": 10.0}
    assert [(s.start, s.end) for s in answer.spans] == [(14.0, 16.5)]
    assert find_in_video(FakeVLM("no idea"), "clip.mp4", "x").summary() == "no time span parsed from the answer"


# ---- CLI ---------------------------------------------------------------------------------------------------------

@pytest.fixture
def fake_load(monkeypatch):
    import qwen25vl

    holder = {}

    def load(args):  # the task CLI's loader, after its flags are parsed: no folder or weights needed
        holder["path"] = args.model
        holder["runtime"] = (args.device, args.dtype, args.threads)
        return holder["vlm"]

    monkeypatch.setattr("qwen25vl.tasks.cli._load", load)
    return holder


def test_cli_ground_draws_and_prints_json(tmp_path, fake_load, capsys):
    from qwen25vl.cli import main

    src = tmp_path / "in.png"
    Image.new("RGB", (280, 280), (128, 128, 128)).save(src)  # 280x280 is kept as is by the default limits
    fake_load["vlm"] = FakeVLM('[{"bbox_2d": [20, 30, 200, 250], "label": "thing"}]')
    out = tmp_path / "annotated.png"
    assert main(["ground", str(src), "thing", "--out", str(out), "--json", "--model", "m"]) == 0
    assert fake_load["path"] == "m"
    data = json.loads(capsys.readouterr().out)
    assert data["items"] == [{"bbox_2d": [20, 30, 200, 250], "label": "thing"}] and data["frame"] == "original"
    drawn = Image.open(out).convert("RGB")
    assert drawn.getpixel((20, 140)) == PALETTE[0] and drawn.getpixel((110, 250)) == PALETTE[0]


def test_cli_parse_doc_formats(tmp_path, fake_load, capsys):
    from qwen25vl.cli import main

    src = tmp_path / "page.png"
    Image.new("RGB", (280, 280), "white").save(src)
    fake_load["vlm"] = FakeVLM('<html><body><h2 data-bbox="1 2 3 4">Hi</h2><p data-bbox="5 6 7 8">there</p></body></html>')
    assert main(["parse-doc", str(src)]) == 0
    assert capsys.readouterr().out == "## Hi\n\nthere\n"
    assert main(["parse-doc", str(src), "--format", "json"]) == 0
    assert [b["type"] for b in json.loads(capsys.readouterr().out)["blocks"]] == ["heading", "paragraph"]
    assert main(["parse-doc", str(src), "--format", "html"]) == 0
    assert capsys.readouterr().out.startswith("<html><body><h2 data-bbox")


def test_cli_act_reports_a_bad_action_as_one_line(tmp_path, fake_load, capsys):
    from qwen25vl.cli import main

    src = tmp_path / "screen.png"
    Image.new("RGB", (280, 280), "white").save(src)
    fake_load["vlm"] = FakeVLM('<tool_call>{"name": "mobile_use", "arguments": {"action": "fly"}}</tool_call>')
    assert main(["act", str(src), "do it", "--kind", "mobile"]) == 2
    assert "unknown action 'fly'" in capsys.readouterr().err


class StreamingVLM(FakeVLM):
    """Streams its answer in `pieces` when asked to, as the real VLM.chat(stream=True) does."""

    def __init__(self, pieces):
        super().__init__("".join(pieces))
        self.pieces = pieces

    def chat(self, messages, stream=False, **sampling):
        super().chat(messages, stream=stream, **sampling)
        return iter(self.pieces) if stream else self.answer


def _image_file(tmp_path, name="in.png"):
    src = tmp_path / name
    Image.new("RGB", (280, 280), (128, 128, 128)).save(src)
    return src


@pytest.mark.parametrize("command", [["ground", "IMG", "thing"], ["parse-doc", "IMG"], ["act", "IMG", "click it"]])
@pytest.mark.parametrize("out, message", [
    ("missing/a.png", "folder '{tmp}/missing' does not exist"), ("a.xyz", "'.xyz' is not an image format"),
    ("noext", "'no extension' is not an image format"), (".", "is a folder; give a file name")])
def test_cli_out_is_checked_before_the_model_loads(tmp_path, fake_load, capsys, command, out, message):
    from qwen25vl.cli import main

    src = _image_file(tmp_path)
    target = out if out == "." else str(tmp_path / out)
    argv = [str(src) if a == "IMG" else a for a in command] + ["--out", target]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("qwen25vl: error: --out") and message.format(tmp=tmp_path) in err
    assert "Traceback" not in err and "path" not in fake_load  # nothing was loaded or generated


def test_cli_picture_that_cannot_be_written_keeps_the_printed_result(tmp_path, fake_load, capsys, monkeypatch):
    from qwen25vl.cli import main

    def full_disk(self, *a, **k):
        raise OSError(28, "No space left on device")

    fake_load["vlm"] = FakeVLM('[{"bbox_2d": [20, 30, 200, 250], "label": "thing"}]')
    src = str(_image_file(tmp_path))
    monkeypatch.setattr(Image.Image, "save", full_disk)
    assert main(["ground", src, "thing", "--out", str(tmp_path / "o.png"), "--json"]) == 2
    captured = capsys.readouterr()
    assert json.loads(captured.out)["items"][0]["label"] == "thing"  # the answer was printed first
    assert "could not write the picture" in captured.err and "No space left" in captured.err


def test_cli_shows_generation_on_stderr(tmp_path, fake_load, capsys, monkeypatch):
    import io

    from qwen25vl.cli import main

    src = str(_image_file(tmp_path))
    pieces = ['[{"bbox_2d": ', "[1, 2, 3, 4], ", '"label": "a"}]', " and more"]
    fake_load["vlm"] = vlm = StreamingVLM(pieces)
    assert main(["ground", src, "a", "--stream", "--json"]) == 0
    captured = capsys.readouterr()
    assert vlm.calls[-1][1]["stream"] is True  # the wrapper asked for a stream
    assert captured.err.startswith("".join(pieces) + "\n")  # the answer's text, as it came
    assert "generated 4 tokens in " in captured.err and json.loads(captured.out)["count"] == 1

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    terminal = Terminal()
    monkeypatch.setattr("sys.stderr", terminal)
    assert main(["ground", src, "a"]) == 0
    shown = terminal.getvalue()
    assert shown.startswith("\rgenerating: 1 tokens") and "\r\x1b[Kgenerated 4 tokens" in shown
    assert "bbox_2d" not in shown  # without --stream a terminal sees the count, not the text


def test_cli_bad_screen_size_is_one_line(tmp_path, fake_load, capsys):
    from qwen25vl.cli import main

    assert main(["act", str(_image_file(tmp_path)), "go", "--screen-size", "wide"]) == 2
    assert "--screen-size must be WIDTHxHEIGHT such as 2560x1600, got 'wide'" in capsys.readouterr().err
    assert "path" not in fake_load


def test_cli_end_to_end_on_a_tiny_random_model(tmp_path, capsys):
    import qwen25vl.testing.checkpoint as checkpoint
    from qwen25vl.cli import main

    model = checkpoint.make_tiny_checkpoint(tmp_path / "model")
    src = tmp_path / "in.png"
    _photo((120, 90)).save(src)
    common = ["--model", str(model), "--max-new-tokens", "8", "--max-pixels", str(28 * 28 * 4)]
    assert main(["ground", str(src), "sun", "--out", str(tmp_path / "a.png"), *common]) == 0
    out = capsys.readouterr().out
    assert out.startswith("no boxes parsed") or " found: " in out  # random weights: any answer, parsed cleanly
    assert Image.open(tmp_path / "a.png").size[1] == 90
    code = main(["act", str(src), "open settings", "--kind", "mobile", "--json", *common])
    captured = capsys.readouterr()
    if code == 0:  # no tool call, or a valid one: the JSON lists the actions
        assert isinstance(json.loads(captured.out)["actions"], list)
    else:  # a <tool_call> with a bad action: one readable line, no traceback
        last = captured.err.strip().splitlines()[-1]
        assert code == 2 and last.startswith("qwen25vl: error:") and "Traceback" not in captured.err
    assert main(["parse-doc", str(src), "--format", "json", *common]) == 0
    assert isinstance(json.loads(capsys.readouterr().out)["blocks"], list)


def _bright_clip(path):
    import av
    import numpy as np

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width = stream.height = 64
        stream.pix_fmt = "yuv420p"
        for i in range(12):  # 3 s, getting brighter
            frame = av.VideoFrame.from_ndarray(np.full((64, 64, 3), i * 20, np.uint8), format="rgb24")
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


@pytest.mark.parametrize("answer", ["The given query happens in 0.5 - 1.75 seconds.",
                                    '```json\n[{"start_time": "00:00.50", "end_time": "00:01.75", '
                                    '"description": "it gets bright"}]\n```'])
def test_cli_video_find_adds_the_start_offset_to_the_spans(tmp_path, capsys, monkeypatch, answer):
    """The real tiny model decodes and reads the real clip; its (random) answer is replaced by a known one, so the
    spans are known: the cut's start must be added to them, as numbers."""
    import qwen25vl.api as api
    import qwen25vl.testing.checkpoint as checkpoint
    from qwen25vl.cli import main
    from qwen25vl.tasks import parse_timestamp

    sent = []
    real_chat = api.VLM.chat

    def chat(self, messages, stream=False, **sampling):
        out = real_chat(self, messages, stream=stream, **sampling)
        if stream:
            out = "".join(out)  # the model really ran on the video
        sent.append(messages[0]["content"][0])
        return answer

    monkeypatch.setattr(api.VLM, "chat", chat)
    path = _bright_clip(tmp_path / "clip.mp4")
    model = checkpoint.make_tiny_checkpoint(tmp_path / "model")
    args = ["video-find", str(path), "it gets bright", "--model", str(model), "--max-new-tokens", "4", "--json"]

    assert main(args) == 0
    uncut = json.loads(capsys.readouterr().out)["spans"]
    assert [(s["start"], s["end"]) for s in uncut] == [(0.5, 1.75)]  # no cut: the model's own times
    assert main(args + ["--start", "1", "--end", "3"]) == 0
    (span,) = json.loads(capsys.readouterr().out)["spans"]
    assert isinstance(span["start"], float) and span["start"] == pytest.approx(1.5)
    assert span["end"] == pytest.approx(2.75)
    assert main(args + ["--start", "1.25", "--style", "mm:ss.ff"]) == 0
    (span,) = json.loads(capsys.readouterr().out)["spans"]
    assert parse_timestamp(span["start"]) == pytest.approx(1.75) and parse_timestamp(span["end"]) == pytest.approx(3.0)
    assert [p.get("video_start") for p in sent] == [None, 1.0, 1.25]  # the model was shown the cut clip


def test_cli_video_find_rejects_a_bad_fps_while_parsing(fake_load, capsys):
    from qwen25vl.cli import main

    for fps in ("0", "-2", "nan"):
        with pytest.raises(SystemExit) as exit_:
            main(["video-find", "clip.mp4", "x", "--fps", fps])
        assert exit_.value.code == 2 and "positive number of frames per second" in capsys.readouterr().err
    assert "path" not in fake_load


def test_task_commands_take_the_runtime_flags(fake_load, tmp_path, capsys):
    from qwen25vl.cli import main

    fake_load["vlm"] = FakeVLM('[{"bbox_2d": [1, 2, 30, 40], "label": "a"}]')
    image = tmp_path / "in.png"
    _photo((84, 56)).save(image)
    assert main(["ground", str(image), "a", "--dtype", "bfloat16", "--threads", "1", "--device", "cpu"]) == 0
    assert fake_load["runtime"] == ("cpu", "bfloat16", 1)


@pytest.mark.parametrize("argv, message", [
    (["--start", "-1"], "--start must be >= 0 seconds, got -1.0"),
    (["--start", "3", "--end", "2"], "--end (2.0) must be after --start (3.0)")])
def test_cli_video_find_rejects_bad_times_before_loading(fake_load, capsys, argv, message):
    from qwen25vl.cli import main

    assert main(["video-find", "clip.mp4", "x", *argv]) == 2
    assert message in capsys.readouterr().err and "path" not in fake_load


def test_act_history_goes_back_to_the_model_frame():
    answer = '<tool_call>{"name": "mobile_use", "arguments": {"action": "click", "coordinate": [100, 200]}}</tool_call>'
    vlm = FakeVLM(answer)
    shot = _photo((560, 1120))
    first = act(vlm, shot, "open it", kind="mobile", max_pixels=28 * 28 * 200, screen_size=(1120, 2240))
    act(vlm, shot, "open it", kind="mobile", max_pixels=28 * 28 * 200, screen_size=(1120, 2240),
        history=first.actions)
    text = vlm.calls[1][0][1]["content"][0]["text"]
    assert 'Step 1: {"name": "mobile_use", "arguments": {"action": "click", "coordinate": [100, 200]}};' in text
    assert first.actions[0].coordinate != (100, 200)  # the returned action itself is in screen pixels


class ProcessorOnlyVLM(FakeVLM):
    """A stand-in whose chat() runs the real processor on the messages (so the test sees the grid the model gets)."""

    def __init__(self, answer, processor, **limits):
        super().__init__(answer)
        self.processor = processor
        self.limits = limits
        self.grids = []

    def chat(self, messages, **sampling):
        batch = self.processor(messages, add_generation_prompt=True, **self.limits)
        self.grids.append(tuple(int(v) for v in batch["image_grid_thw"][0]))
        return super().chat(messages, **sampling)


@pytest.mark.parametrize("size", [(1000, 700), (45, 300), (333, 333)])
def test_wrapper_frame_equals_the_real_processors_grid(tmp_path, size):
    import qwen25vl.processing.processor as proc_mod
    from qwen25vl.testing.tokenizer import write_tiny_tokenizer

    processor = proc_mod.Processor.from_pretrained(write_tiny_tokenizer(tmp_path))
    # call-level limits that differ from the wrapper's: the per-part limits the wrapper writes must win
    vlm = ProcessorOnlyVLM('[{"point_2d": [28, 56]}]', processor, min_pixels=28 * 28 * 300, max_pixels=28 * 28 * 400)
    result = ground(vlm, Image.new("RGB", size, "white"), "dot", mode="point", min_pixels=28 * 28 * 4,
                    max_pixels=28 * 28 * 64)
    _, gh, gw = vlm.grids[0]
    assert result.frame_map.resized_size == (gw * 14, gh * 14)
    assert result.points[0] == pytest.approx((28 * size[0] / (gw * 14), 56 * size[1] / (gh * 14)))
