"""Each reader loads a small file written in its benchmark's layout; a malformed row becomes a Skipped, not an error."""

import base64
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.eval.task import Sample, Skipped, get_task


def _png(path: Path, size=(64, 48)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 30, 30)).save(path)
    return path


def _png_bytes(size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (0, 90, 0)).save(buf, format="PNG")
    return buf.getvalue()


def _read(task: str, data: Path):
    items = list(get_task(task).read(data))
    return [i for i in items if isinstance(i, Sample)], [i for i in items if isinstance(i, Skipped)]


def _write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa  # in the test extra: a missing install fails, it does not skip
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def test_docvqa_json_layout(tmp_path):
    _png(tmp_path / "documents" / "page1.png")
    data = {"dataset_name": "docvqa", "dataset_split": "val", "data": [
        {"questionId": 1, "question": "What is the date?", "image": "documents/page1.png", "answers": ["1 May"]},
        {"questionId": 2, "question": "Who signed?", "image": "documents/page1.png"},  # no answers: skipped
    ]}
    (tmp_path / "val_v1.0_withQT.json").write_text(json.dumps(data))
    samples, skipped = _read("docvqa", tmp_path)
    assert [s.id for s in samples] == ["1"]
    assert samples[0].target == ["1 May"] and samples[0].fields["question"] == "What is the date?"
    assert Path(samples[0].images[0]) == tmp_path / "documents" / "page1.png"
    assert len(skipped) == 1 and "answers" in skipped[0].reason and "val_v1.0_withQT.json:1" in skipped[0].where


def test_docvqa_parquet_mirror(tmp_path):
    image = {"bytes": _png_bytes(), "path": None}
    rows = [{"questionId": "q7", "question": "Total?", "answers": ["$5"], "image": image},
            {"questionId": "q8", "question": None, "answers": ["x"], "image": image}]
    _write_parquet(tmp_path / "data" / "validation-00000.parquet", rows)
    samples, skipped = _read("docvqa", tmp_path)
    assert [s.id for s in samples] == ["q7"] and isinstance(samples[0].images[0], bytes)
    assert "question" in skipped[0].reason


def test_infovqa_json_layout(tmp_path):
    _png(tmp_path / "infographicsVQA_val_v1.0_images" / "10.jpeg")
    rows = {"data": [{"questionId": 5, "question": "Share?", "image_local_name": "10.jpeg", "answers": ["12%"]}]}
    (tmp_path / "infographicsVQA_val_v1.0_withQT.json").write_text(json.dumps(rows))
    samples, skipped = _read("infovqa", tmp_path)
    assert Path(samples[0].images[0]).is_file() and samples[0].target == ["12%"] and not skipped


def test_chartqa_official_layout(tmp_path):
    _png(tmp_path / "test" / "png" / "c1.png")
    (tmp_path / "test" / "test_human.json").write_text(json.dumps(
        [{"imgname": "c1.png", "query": "Max value?", "label": "42"}, {"imgname": "c1.png", "label": "1"}]))
    (tmp_path / "test" / "test_augmented.json").write_text(json.dumps(
        [{"imgname": "c1.png", "query": "Min value?", "label": "3"}]))
    samples, skipped = _read("chartqa", tmp_path)
    assert [(s.id, s.meta["split"], s.target) for s in samples] == [
        ("test_augmented:0", "augmented", ["3"]), ("test_human:0", "human", ["42"])]
    assert Path(samples[0].images[0]).is_file()
    assert len(skipped) == 1 and "test_human.json:1" in skipped[0].where


def test_textvqa_layout(tmp_path):
    _png(tmp_path / "train_images" / "abc.jpg")
    answers = ["stop"] * 8 + ["stop sign"] * 2
    rows = {"dataset_name": "textvqa", "data": [
        {"question_id": 34602, "question": "What does the sign say?", "image_id": "abc", "answers": answers},
        {"question_id": 34603, "question": "What?", "image_id": "abc", "answers": []}]}
    (tmp_path / "TextVQA_0.5.1_val.json").write_text(json.dumps(rows))
    samples, skipped = _read("textvqa", tmp_path)
    assert samples[0].id == "34602" and len(samples[0].target) == 10
    assert Path(samples[0].images[0]) == tmp_path / "train_images" / "abc.jpg"
    assert len(skipped) == 1


def test_ocrbench_layout(tmp_path):
    _png(tmp_path / "OCRBench_Images" / "IIIT5K" / "1.png")
    rows = [{"dataset_name": "IIIT5K", "id": 0, "image_path": "IIIT5K/1.png", "question": "What is written?",
             "answers": "HELLO", "type": "Regular Text Recognition"}, "not an object"]
    (tmp_path / "OCRBench.json").write_text(json.dumps(rows))
    samples, skipped = _read("ocrbench", tmp_path)
    assert samples[0].target == {"answers": ["HELLO"], "type": "Regular Text Recognition"}
    assert Path(samples[0].images[0]).is_file() and "must be an object" in skipped[0].reason


def test_refcoco_jsonl_and_parquet_layouts(tmp_path):
    _png(tmp_path / "train2014" / "COCO_1.jpg")
    lines = [json.dumps({"image": "COCO_1.jpg", "sent": "left man", "bbox": [1, 2, 31, 42], "height": 48, "width": 64}),
             "{broken", json.dumps({"image": "COCO_1.jpg", "sent": "x", "bbox": [5, 5, 5, 9]})]
    (tmp_path / "refcoco_val.jsonl").write_text("\n".join(lines) + "\n")
    samples, skipped = _read("refcoco", tmp_path)
    assert samples[0].target == [1, 2, 31, 42] and samples[0].fields["query"] == "left man"
    assert samples[0].meta["split"] == "refcoco_val" and Path(samples[0].images[0]).is_file()
    assert [s.where for s in skipped] == ["refcoco_val.jsonl:2", "refcoco_val.jsonl:3"]
    assert "not valid JSON" in skipped[0].reason and "no area" in skipped[1].reason

    parquet = tmp_path / "pq"
    _write_parquet(parquet / "val.parquet", [{"question_id": "r1", "image": {"bytes": _png_bytes(), "path": None},
                                              "answer": ["the dog", "brown dog"], "bbox": [10.0, 5.0, 20.0, 10.0]}])
    samples, _ = _read("refcoco+", parquet)
    assert samples[0].target == [10, 5, 30, 15] and samples[0].fields["query"] == "the dog"  # COCO x, y, w, h


def test_countbench_layout(tmp_path):
    rows = [{"image": {"bytes": _png_bytes(), "path": None}, "question": "How many cats?", "number": 3},
            {"image": {"bytes": _png_bytes(), "path": None}, "question": None, "number": 2}]
    _write_parquet(tmp_path / "test.parquet", rows)
    samples, skipped = _read("countbench", tmp_path)
    assert samples[0].target == 3 and "question" in skipped[0].reason
    (tmp_path / "count.json").write_text(json.dumps([{"image": "x.png", "question": "How many?", "number": "many"}]))
    _, skipped = _read("countbench", tmp_path / "count.json")
    assert "integer" in skipped[0].reason


def test_screenspot_layouts(tmp_path):
    _png(tmp_path / "screenspot_imgs" / "m1.png")
    rows = [{"img_filename": "m1.png", "bbox": [10, 20, 30, 40], "instruction": "open settings", "data_type": "icon",
             "data_source": "ios"}, {"img_filename": "m1.png", "instruction": "no box"}]
    (tmp_path / "screenspot_mobile.json").write_text(json.dumps(rows))
    samples, skipped = _read("screenspot", tmp_path)
    assert samples[0].target == [10, 20, 40, 60]  # [x, y, w, h] -> corners
    assert samples[0].meta["data_type"] == "icon" and len(skipped) == 1

    pro = tmp_path / "pro"
    _png(pro / "images" / "vscode" / "s.png")
    (pro / "annotations").mkdir(parents=True)
    (pro / "annotations" / "vscode_macos.json").write_text(json.dumps(
        [{"img_filename": "vscode/s.png", "bbox": [10, 20, 30, 40], "instruction": "run", "id": "p1"}]))
    samples, _ = _read("screenspot-pro", pro)
    assert samples[0].target == [10, 20, 30, 40] and Path(samples[0].images[0]).is_file()


def test_mmmu_parquet_layout(tmp_path):
    rows = [{"id": "validation_Art_1", "question": "Which style? <image 1>", "options": "['Baroque', 'Gothic']",
             "answer": "B", "image_1": {"bytes": _png_bytes(), "path": None}, "image_2": None,
             "question_type": "multiple-choice"},
            {"id": "validation_Math_2", "question": "Compute x.", "options": "[]", "answer": "12",
             "image_1": {"bytes": _png_bytes(), "path": None}, "image_2": None, "question_type": "open"},
            {"id": "validation_Art_3", "question": "?", "options": "['a', 'b']", "answer": "F",
             "image_1": None, "image_2": None, "question_type": "multiple-choice"}]
    _write_parquet(tmp_path / "Art" / "validation-00000-of-00001.parquet", rows)
    samples, skipped = _read("mmmu", tmp_path)
    assert samples[0].target == "B" and samples[0].fields["options"] == "A. Baroque\nB. Gothic"
    assert samples[1].target == {"open": ["12"]} and len(samples[0].images) == 1
    assert "option letters" in skipped[0].reason


def test_mmbench_tsv_layout(tmp_path):
    image = base64.b64encode(_png_bytes((300, 300))).decode()
    header = "index\tquestion\thint\tA\tB\tC\tD\tanswer\tcategory\timage"
    lines = [header, f"7\tWhat color?\tLook closely\tred\tgreen\t\t\tB\tcolor\t{image}",
             f"8\tWhat?\tnan\tx\t\t\t\tA\tcolor\t{image}"]
    (tmp_path / "MMBench_DEV_EN.tsv").write_text("\n".join(lines) + "\n")
    samples, skipped = _read("mmbench", tmp_path)
    assert samples[0].id == "7" and samples[0].fields["question"] == "Look closely\nWhat color?"
    assert samples[0].fields["option_texts"] == ["red", "green"] and isinstance(samples[0].images[0], bytes)
    assert "fewer than two options" in skipped[0].reason


def _video(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")  # readers resolve paths only; decoding happens in the run
    return path


def test_charades_sta_txt_layout(tmp_path):
    _video(tmp_path / "Charades_v1_480" / "AO8RW.mp4")
    (tmp_path / "charades_sta_test.txt").write_text(
        "AO8RW 0.0 6.9##a person is putting a book on a shelf.\nbad line\nAO8RW 5 2##backwards\n")
    samples, skipped = _read("charades-sta", tmp_path)
    assert samples[0].target == [0.0, 6.9] and samples[0].videos[0] == tmp_path / "Charades_v1_480" / "AO8RW.mp4"
    assert samples[0].fields["query"] == "a person is putting a book on a shelf."
    assert len(skipped) == 2 and "empty" in skipped[1].reason


def test_videomme_parquet_layout(tmp_path):
    _video(tmp_path / "data" / "fFjv93ACGo8.mp4")
    rows = [{"videoID": "fFjv93ACGo8", "question_id": "001-1", "duration": "short", "question": "Who speaks?",
             "options": ["A. a man", "B. a woman", "C. a child", "D. nobody"], "answer": "B"},
            {"videoID": "fFjv93ACGo8", "question_id": "001-2", "question": "?", "options": ["A. x", "B. y"],
             "answer": "Q"}]
    _write_parquet(tmp_path / "videomme" / "test-00000-of-00001.parquet", rows)
    samples, skipped = _read("videomme", tmp_path)
    assert samples[0].fields["option_texts"] == ["a man", "a woman", "a child", "nobody"]
    assert samples[0].videos[0] == tmp_path / "data" / "fFjv93ACGo8.mp4" and len(skipped) == 1


def test_mvbench_layout(tmp_path):
    _video(tmp_path / "video" / "star" / "Charades_v1_480" / "6H78U.mp4")
    (tmp_path / "json").mkdir()
    (tmp_path / "json" / "action_sequence.json").write_text(json.dumps([
        {"video": "6H78U.mp4", "question": "What happened after?", "candidates": ["sat", "ran", "slept"],
         "answer": "ran"},
        {"video": "6H78U.mp4", "question": "?", "candidates": ["a", "b"], "answer": "c"}]))
    samples, skipped = _read("mvbench", tmp_path)
    assert samples[0].target == "B" and samples[0].fields["options"] == "(A) sat\n(B) ran\n(C) slept"
    assert samples[0].videos[0].name == "6H78U.mp4" and samples[0].videos[0].is_file()
    assert "not among the candidates" in skipped[0].reason


def test_lvbench_layout(tmp_path):
    _video(tmp_path / "videos" / "vid1.mp4")
    row = {"key": "vid1", "type": "cartoon", "qa": [
        {"uid": "u1", "question": "What is shown?\n(A) a cat\n(B) a dog\n(C) a car\n(D) a tree", "answer": "C"},
        {"uid": "u2", "question": "No options here", "answer": "A"}]}
    (tmp_path / "video_info.meta.jsonl").write_text(json.dumps(row) + "\n")
    samples, skipped = _read("lvbench", tmp_path)
    assert samples[0].fields["question"] == "What is shown?" and samples[0].target == "C"
    assert samples[0].fields["option_texts"] == ["a cat", "a dog", "a car", "a tree"]
    assert samples[0].videos[0] == tmp_path / "videos" / "vid1.mp4" and len(skipped) == 1


def test_synthetic_records_layout(tmp_path):
    _png(tmp_path / "images" / "g.png", (280, 140))
    good = {"messages": [
        {"role": "user", "content": [{"type": "image", "image": "images/g.png", "max_pixels": 40000},
                                     {"type": "text", "text": "Locate the red square."}]},
        {"role": "assistant", "content": '[{"bbox_2d": [10, 20, 50, 60], "label": "red square"}]'}]}
    no_box = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "no boxes"}]}
    lines = [json.dumps(good), json.dumps({"messages": [], "extra": 1}), json.dumps(no_box)]
    (tmp_path / "grounding.jsonl").write_text("\n".join(lines) + "\n")
    samples, skipped = _read("synth-grounding", tmp_path)
    assert samples[0].target == [[10, 20, 50, 60]] and samples[0].options == [{"max_pixels": 40000}]
    assert Path(samples[0].images[0]) == tmp_path / "images" / "g.png"
    assert samples[0].fields["question"] == "Locate the red square."
    assert [s.where for s in skipped] == ["grounding.jsonl:2", "grounding.jsonl:3"]


def test_missing_data_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="no DocVQA annotations"):
        list(get_task("docvqa").read(tmp_path))
    with pytest.raises(InputError, match="neither a file nor a folder"):
        list(get_task("chartqa").read(tmp_path / "nope"))
    with pytest.raises(InputError, match="unknown evaluation task 'docvq'"):
        get_task("docvq")
