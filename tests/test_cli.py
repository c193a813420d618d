"""`qwen25vl run` and `qwen25vl chat` end to end on a tiny checkpoint written in the test: in-process through
qwen25vl.cli.main(argv), and once as a subprocess `python -m qwen25vl run ...`."""

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image

import qwen25vl
from qwen25vl.api import EMBEDDED_MODEL_DIR, NO_EMBEDDED_MODEL
from qwen25vl.cli import main

GREEDY = ["--temperature", "0", "--repetition-penalty", "1.0"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    from qwen25vl.testing.checkpoint import make_tiny_checkpoint

    # seed 2: greedy answers to these prompts do not hit EOS early (deterministic), so token counts are exact
    return str(make_tiny_checkpoint(tmp_path_factory.mktemp("cli"), seed=2, generation={"eos_token_id": []}))


@pytest.fixture(scope="module")
def media(tmp_path_factory):
    root = tmp_path_factory.mktemp("media")
    g = torch.Generator().manual_seed(0)
    image = root / "pic.png"
    Image.fromarray(torch.randint(0, 256, (64, 80, 3), generator=g, dtype=torch.uint8).numpy()).save(image)
    bad = root / "bad.png"
    bad.write_bytes(b"this is not a picture")
    video = root / "clip.mp4"
    import av
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=4)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        for i in range(8):
            frame = torch.full((64, 64, 3), 30 * i, dtype=torch.uint8).numpy()
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return {"image": str(image), "bad": str(bad), "video": str(video)}


def _run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_run_json_equals_api(folder, media, capsys):
    code, out, err = _run(capsys, "run", "--model", folder, "--prompt", "What is it?", "--image", media["image"],
                          "--max-new-tokens", "6", "--json", *GREEDY)
    assert code == 0, err
    result = json.loads(out)
    assert result["completion_tokens"] == 6 and result["finish_reason"] == "length"
    vlm = qwen25vl.load(folder)
    expected = vlm.chat("What is it?", images=[media["image"]], max_new_tokens=6, temperature=0, repetition_penalty=1.0)
    assert result["text"] == expected


def test_run_streams_plain_text_and_video(folder, media, capsys):
    code, out, err = _run(capsys, "run", "--model", folder, "-p", "hi", "--max-new-tokens", "5", *GREEDY)
    assert code == 0, err
    code_j, out_j, _ = _run(capsys, "run", "--model", folder, "-p", "hi", "--max-new-tokens", "5", "--json", *GREEDY)
    assert out == json.loads(out_j)["text"] + "\n"
    code, out, err = _run(capsys, "run", "--model", folder, "-p", "when?", "--video", media["video"], "--fps", "4",
                          "--max-new-tokens", "4", "--json", "--seed", "1", "--temperature", "0.8")
    assert code == 0, err
    assert json.loads(out)["completion_tokens"] == 4
    assert json.loads(out)["prompt_tokens"] > 20  # the video's tokens are in the prompt


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--image", "{missing}"], "does not exist"),
        (["--image", "{bad}"], "bad.png"),
        (["--model", "{nowhere}"], "does not exist"),
        (["--temperature", "-1"], "temperature"),
    ],
)
def test_user_mistakes_are_one_line_errors(folder, media, tmp_path, capsys, argv, message):
    names = {"missing": str(tmp_path / "missing.png"), "bad": media["bad"], "nowhere": str(tmp_path / "nowhere")}
    argv = [a.format(**names) for a in argv]
    model = [] if "--model" in argv else ["--model", folder]
    code, out, err = _run(capsys, "run", *model, "-p", "hi", "--max-new-tokens", "2", *argv)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert err.strip().count("\n") == 0 or err.strip().splitlines()[-1].startswith("qwen25vl: error:")


def test_no_model_given_uses_the_embedded_one_or_says_none_ships(capsys, monkeypatch, tmp_path):
    from qwen25vl.generation import paths

    assert paths.model_path(None) == EMBEDDED_MODEL_DIR  # this checkout ships the embedded model
    monkeypatch.setattr(paths, "EMBEDDED_MODEL_DIR", tmp_path / "absent")
    code, _, err = _run(capsys, "run", "-p", "hi")
    assert code == 2 and NO_EMBEDDED_MODEL in err


def test_chat_repl(folder, media, monkeypatch, capsys):
    lines = [
        "hello there",
        f"/image {media['image']}",
        "what is in the picture?",
        "/image /no/such/file.png",  # an error line, the session goes on
        "/reset",
        "hello there",
        "/quit",
        "never read",
    ]
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n".join(lines) + "\n"))
    code, out, err = _run(capsys, "chat", "--model", folder, "--max-new-tokens", "4", *GREEDY)
    assert code == 0, err
    answers = out.splitlines()
    assert len(answers) == 3
    assert answers[0] == answers[2]  # after /reset, the same first question gets the same answer
    assert "/no/such/file.png" in err and "does not exist" in err


def test_subprocess_python_m(folder):
    proc = subprocess.run(
        [sys.executable, "-m", "qwen25vl", "run", "--model", folder, "--prompt", "hi", "--max-new-tokens", "3",
         "--json", *GREEDY],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["completion_tokens"] == 3
    proc = subprocess.run([sys.executable, "-m", "qwen25vl", "run", "--model", "/no/such/folder", "-p", "x"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "/no/such/folder" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture
def keep_threads():
    """--threads sets torch's count for the process: give the next tests theirs back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_startup_line_names_model_device_dtype_threads_and_memory(folder, capsys, keep_threads):
    code, out, err = _run(capsys, "run", "--model", folder, "-p", "hi", "--max-new-tokens", "2", "--dtype",
                          "bfloat16", "--threads", "1", *GREEDY)
    assert code == 0, err
    line = next(l for l in err.splitlines() if l.startswith("qwen25vl: cli"))  # the folder's name
    assert "parameters) on cpu, bfloat16, 1 thread (as asked), weights" in line and line.endswith(" MB")
    assert torch.get_num_threads() == 1


def test_auto_threads_keep_a_tiny_model_on_one_thread(folder, capsys, keep_threads):
    code, _, err = _run(capsys, "run", "--model", folder, "-p", "hi", "--max-new-tokens", "1", *GREEDY)
    assert code == 0, err
    assert "float32, 1 thread (auto: tiny model)" in err


@pytest.mark.parametrize("fps", ["0", "-1", "nan", "inf"])
def test_bad_fps_is_refused_before_loading(folder, media, monkeypatch, capsys, fps):
    monkeypatch.setattr(qwen25vl.api, "load", lambda *a, **k: pytest.fail("loaded the model"))
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", folder, "-p", "when?", "--video", media["video"], "--fps", fps])
    err = capsys.readouterr().err
    assert exit_.value.code == 2 and "--fps" in err and "positive" in err and fps in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_cuda_is_one_line(folder, capsys):
    code, _, err = _run(capsys, "run", "--model", folder, "-p", "hi", "--device", "cuda")
    assert code == 2 and "Traceback" not in err
    assert "'cuda'" in err and "CUDA is not available" in err


def _stream_then_interrupt(real, calls):
    """A stand-in for the text stream: the first reply yields one piece, then Ctrl-C arrives; later ones run."""
    def events(gen, tokenizer):
        calls.append(1)
        stream = real(gen, tokenizer)
        if len(calls) == 1:
            yield next(stream)
            raise KeyboardInterrupt
        yield from stream
    return events


def test_chat_ctrl_c_stops_the_reply_and_the_session_goes_on(folder, monkeypatch, capsys):
    from qwen25vl.generation import generate

    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nhello there\n"))
    code, out, err = _run(capsys, "chat", "--model", folder, "--max-new-tokens", "4", *GREEDY)
    assert code == 0, err
    plain = out.splitlines()
    calls = []
    monkeypatch.setattr(generate, "_text_events", _stream_then_interrupt(generate._text_events, calls))
    monkeypatch.setattr(sys, "stdin", io.StringIO("hello there\nhello there\n"))
    code, out, err = _run(capsys, "chat", "--model", folder, "--max-new-tokens", "4", *GREEDY)
    assert code == 0 and "(reply stopped)" in err and "Traceback" not in err
    assert len(calls) == 2
    # the stopped turn left no trace in the history: the retry is answered as the first question was
    assert len(out.splitlines()) == 2 and out.splitlines()[1] == plain[0]


class _InterruptedStdin(io.StringIO):
    def readline(self, *args):
        raise KeyboardInterrupt

    def isatty(self):
        return False


def test_chat_ctrl_c_or_eof_at_the_prompt_exits_cleanly(folder, monkeypatch, capsys):
    monkeypatch.setattr(sys, "stdin", _InterruptedStdin())
    code, _, err = _run(capsys, "chat", "--model", folder, "--max-new-tokens", "2")
    assert code == 130 and "Traceback" not in err
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))  # Ctrl-D
    code, out, err = _run(capsys, "chat", "--model", folder, "--max-new-tokens", "2")
    assert code == 0 and out == ""


def test_every_model_command_has_the_runtime_flags():
    from qwen25vl.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, __import__("argparse")._SubParsersAction))
    for name in ("run", "chat", "serve"):
        flags = {s for a in sub.choices[name]._actions for s in a.option_strings}
        assert {"--device", "--dtype", "--threads"} <= flags, name


def test_zero_max_pixels_is_refused_not_ignored(folder, media, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["run", "--model", folder, "-p", "hi", "--image", media["image"], "--max-pixels", "0"])
    assert exit_.value.code == 2 and "--max-pixels" in capsys.readouterr().err
