"""Video: qwen-vl-utils' sampling formulas, pixel values against a reference pipeline built here, sparse decoding.

qwen-vl-utils and transformers' video processor cannot be imported here (no torchvision), so the reference is
written in this file from their published formulas (SPEC 4, REFERENCE 4.3 / 4.5).
"""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing import video_reader
from qwen25vl.processing.image import ImageProcessorConfig
from qwen25vl.processing.video import process_video, sample_frames, smart_nframes

import av


def _frame(i, w, h):
    # each frame distinct (a moving block and a brightness ramp) so wrong indices show up in the pixels
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = (i * 9) % 256
    a[..., 1] = np.arange(w)[None, :] * 255 // max(w - 1, 1)
    a[..., 2] = np.arange(h)[:, None] * 255 // max(h - 1, 1)
    x = (i * 4) % max(w - 8, 1)
    a[h // 4: h // 4 + 8, x: x + 8] = 255
    return a


def _encode(path, n, fps, w=64, h=48, gop=12):
    with av.open(str(path), "w") as c:
        s = c.add_stream("libx264", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.options = {"preset": "ultrafast", "g": str(gop)}
        for i in range(n):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame(i, w, h), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    return path


def _decode_all(path):
    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _reference_sampling(total, video_fps, fps=2.0, min_frames=4, max_frames=None, start=None, end=None):
    """qwen-vl-utils (decord / torchcodec readers), written out literally."""
    first, last = 0, total - 1
    if start is not None or end is not None:
        dur = total / video_fps
        first = math.ceil(max(0.0, min(start, dur)) * video_fps) if start is not None else 0
        last = min(math.floor(max(0.0, min(end, dur)) * video_fps), total - 1) if end is not None else total - 1
        total = last - first + 1
    min_f = math.ceil(min_frames / 2) * 2
    max_f = math.floor((max_frames if max_frames is not None else min(768, total)) / 2) * 2
    n = total / video_fps * fps
    n = min(min(max(n, min_f), max_f), total)
    n = math.floor(n / 2) * 2
    if not (2 <= n <= total):
        raise ValueError(n)
    idx = torch.linspace(first, last, n).round().long().tolist()
    return idx, n / max(total, 1e-6) * video_fps


@pytest.mark.parametrize("video_fps", [1, 2, 4, 30])
@pytest.mark.parametrize("seconds", [1, 2, 3, 7, 10, 61, 600, 3600, 7200])
def test_sampling_matches_reference_formula(seconds, video_fps):
    total = seconds * video_fps
    try:
        want = _reference_sampling(total, video_fps)
    except ValueError:
        with pytest.raises(InputError, match="need at least 2"):
            sample_frames(total, video_fps)
        return
    idx, sfps = sample_frames(total, video_fps)
    assert idx == want[0] and sfps == want[1]
    assert len(idx) % 2 == 0 and idx[0] == 0 and idx[-1] == total - 1


def test_sampling_hand_checked():
    idx, sfps = sample_frames(1800, 30)  # 60 s at 30 fps
    assert len(idx) == 120 and sfps == 2.0 and 2 / sfps == 1.0 and idx[:3] == [0, 15, 30] and idx[-1] == 1799
    idx, sfps = sample_frames(216_000, 30)  # 2 h at 30 fps: the 768 cap
    assert len(idx) == 768 and sfps == pytest.approx(768 / 216_000 * 30) and 2 / sfps == pytest.approx(18.75)
    idx, sfps = sample_frames(3, 1)  # 3 s at 1 fps: floor2(min(768, 3)) = 2 frames
    assert idx == [0, 2] and sfps == pytest.approx(2 / 3)
    idx, sfps = sample_frames(40, 4, start=2.0, end=6.0)  # frames 8..24 (17): 8.5 -> 8 frames
    assert idx == [8, 10, 13, 15, 17, 19, 22, 24] and sfps == pytest.approx(8 / 17 * 4)
    assert _reference_sampling(40, 4, start=2.0, end=6.0) == (idx, sfps)
    assert smart_nframes(100, 25, fps=1.0, min_frames=10) == 10
    assert smart_nframes(1000, 25, fps=2.0, max_frames=15) == 14
    with pytest.raises(InputError, match="empty time range"):
        sample_frames(40, 4, start=5.0, end=5.1)


def _reference_pixels(frames, rh, rw, config=ImageProcessorConfig()):
    """qwen-vl-utils + transformers 4.x, step by step: resize, rescale, normalise, REFERENCE 4.3 flattening."""
    x = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2).contiguous().float()  # (T, C, H, W)
    if x.shape[-2:] != (rh, rw):
        x = F.interpolate(x, size=(rh, rw), mode="bicubic", align_corners=False, antialias=True)
        x = x.clamp(0, 255).round().to(torch.uint8).float()  # torchvision's uint8 round trip, then .float()
    v = (x.numpy().astype(np.float64) * config.rescale_factor).astype(np.float32)
    mean = np.array(config.image_mean, np.float32)[None, :, None, None]
    std = np.array(config.image_std, np.float32)[None, :, None, None]
    v = (v - mean) / std
    if v.shape[0] % 2:
        v = np.concatenate([v, v[-1:]])
    gt, gh, gw = v.shape[0] // 2, rh // 14, rw // 14
    v = v.reshape(gt, 2, 3, gh // 2, 2, 14, gw // 2, 2, 14).transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return v.reshape(gt * gh * gw, 1176), (gt, gh, gw)


@pytest.mark.parametrize("video_fps,n,kw", [
    (4, 12, {}),  # upscaled to the video min_pixels (392 x 280)
    (30, 45, {"max_pixels": 1600}),  # downscaled below the source size
    (2, 7, {"min_pixels": 1, "max_pixels": 64 * 48}),  # 64x48 -> 56x28, an odd frame count
])
def test_pixels_match_reference_pipeline(tmp_path, video_fps, n, kw):
    path = _encode(tmp_path / "v.mp4", n, video_fps)
    got = process_video(str(path), **kw)
    want_idx, want_fps = _reference_sampling(n, video_fps)
    assert got.frame_indices == want_idx and got.sampled_fps == want_fps
    assert got.second_per_grid_t == pytest.approx(2 / want_fps)
    frames = [_decode_all(path)[i] for i in want_idx]
    rw, rh = got.resize.resized_size
    want, grid = _reference_pixels(frames, rh, rw)
    assert got.grid_thw == grid and got.resize.original_size == (64, 48)
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)
    assert got.timestamps == pytest.approx([want_idx[2 * g] / video_fps for g in range(grid[0])])
    assert got.num_tokens == grid[0] * grid[1] * grid[2] // 4


def test_total_pixel_budget_and_user_max(tmp_path):
    path = _encode(tmp_path / "v.mp4", 40, 4, w=320, h=240)
    free = process_video(str(path), min_pixels=28 * 28)
    assert free.resize.resized_size == (308, 252)  # nearest multiples of 28 (8.57 -> 9), under 768 * 28 * 28
    # total budget 40_000 px over 20 frames: per-frame cap max(min(602112, 40000 / 20 * 2), 1.05 * 784) = 4000
    tight = process_video(str(path), min_pixels=28 * 28, total_pixels=40_000)
    w, h = tight.resize.resized_size
    assert len(tight.frame_indices) == 20 and w * h <= 4000 and (w, h) == (56, 28)
    low = process_video(str(path), min_pixels=28 * 28, max_pixels=10_000)
    assert low.resize.resized_size[0] * low.resize.resized_size[1] <= 10_000


class _Counting:
    """Wraps decoded frames to count how many get converted to RGB."""

    def __init__(self, frame, counter):
        self._frame, self._counter = frame, counter

    def __getattr__(self, name):
        return getattr(self._frame, name)

    def to_ndarray(self, **kw):
        self._counter["converted"] += 1
        return self._frame.to_ndarray(**kw)


def test_sparse_decoding_seeks_and_converts_only_kept_frames(tmp_path, monkeypatch):
    path = _encode(tmp_path / "long.mp4", 300, 30, gop=10)  # 10 s, a keyframe every 10 frames
    counter = {"decoded": 0, "converted": 0}
    original = video_reader.VideoReader._decode

    def counting(self):
        for frame in original(self):
            counter["decoded"] += 1
            yield _Counting(frame, counter)

    monkeypatch.setattr(video_reader.VideoReader, "_decode", counting)
    calls = []
    threads = torch.get_num_threads()
    got = process_video(str(path), fps=2.0, max_frames=8, min_pixels=1, max_pixels=64 * 48,
                        progress=lambda done, total: calls.append((done, total)))
    assert torch.get_num_threads() == threads  # the resize ran on one torch thread, then gave the count back
    assert len(got.frame_indices) == 8 and got.frame_indices == _reference_sampling(300, 30, max_frames=8)[0]
    assert counter["converted"] == 8
    assert counter["decoded"] < 150, counter  # seeking skipped most of the stream
    assert calls[-1] == (8, 8) and [c[0] for c in calls] == sorted(c[0] for c in calls)
    everything = _decode_all(path)
    rw, rh = got.resize.resized_size
    want, _ = _reference_pixels([everything[i] for i in got.frame_indices], rh, rw)
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)


def test_start_end(tmp_path):
    path = _encode(tmp_path / "v.mp4", 40, 4)
    got = process_video(str(path), start=2.0, end=6.0, min_pixels=1, max_pixels=64 * 48)
    assert got.frame_indices == [8, 10, 13, 15, 17, 19, 22, 24]
    assert got.timestamps == [2.0, 3.25, 4.25, 5.5]
    frames = _decode_all(path)
    assert got.resize.resized_size == (56, 28)  # 56 x 56 would be over 64 * 48: floored
    want, _ = _reference_pixels([frames[i] for i in got.frame_indices], 28, 56)
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)


def test_frame_list_with_fps(tmp_path):
    frames = [Image.fromarray(_frame(i, 64, 48)) for i in range(3)]
    frames[1].save(tmp_path / "f1.png")
    got = process_video([frames[0], tmp_path / "f1.png", np.asarray(frames[2])], fps=1.0, min_pixels=1,
                        max_pixels=64 * 48)
    assert got.grid_thw == (2, 2, 4) and got.second_per_grid_t == 2.0 and got.timestamps == [0.0, 2.0]
    assert got.sampled_fps == 1.0 and got.frame_indices == [0, 1, 2]
    resized = [np.asarray(f.resize((56, 28), Image.Resampling.BICUBIC)) for f in frames]
    want, grid = _reference_pixels(resized, 28, 56)  # padded to 4 with the last frame
    np.testing.assert_allclose(got.pixel_values.numpy(), want, rtol=0, atol=1e-6)
    with pytest.raises(InputError, match="frame 1.*differs"):
        process_video([frames[0], Image.new("RGB", (10, 10))], fps=1.0)
    with pytest.raises(InputError, match="empty list"):
        process_video([], fps=1.0)


def test_bad_videos(tmp_path):
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00\x11 this is not a video " * 50)
    with pytest.raises(InputError, match=r"junk.mp4.*not a readable video"):
        process_video(str(junk))
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=r"empty.mp4.*zero bytes"):
        process_video(empty)
    with pytest.raises(InputError, match="no such file"):
        process_video(tmp_path / "missing.mp4")
    for ext in ("mov", "mkv"):  # written with a video stream and zero frames
        none = tmp_path / f"none.{ext}"
        with av.open(str(none), "w") as c:
            s = c.add_stream("libx264", rate=4)
            s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
            c.start_encoding()
        with pytest.raises(InputError, match=rf"none.{ext}.*(no video stream|no frames|not a readable video)"):
            process_video(str(none))
    one = _encode(tmp_path / "one.mp4", 1, 4)
    with pytest.raises(InputError, match=r"<\d+ bytes>.*need at least 2"):
        process_video(one.read_bytes())
    png = tmp_path / "still.png"
    Image.new("RGB", (8, 8)).save(png)
    with pytest.raises(InputError):
        process_video(str(png))
    with pytest.raises(InputError, match="unsupported source type"):
        process_video(3.5)


def test_truncated_video_and_failing_progress(tmp_path):
    path = _encode(tmp_path / "v.mp4", 40, 4)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(InputError, match="cut.mp4"):
        process_video(str(cut))

    def boom(done, total):
        raise RuntimeError("stop here")

    # an exception in the caller's callback ends the decode thread and reaches the caller unchanged
    with pytest.raises(RuntimeError, match="stop here"):
        process_video(str(path), progress=boom)
    import threading

    assert not any(t.name == "qwen25vl-video-decode" for t in threading.enumerate())


def test_extreme_aspect_ratio_names_the_video(tmp_path):
    path = _encode(tmp_path / "thin.mp4", 8, 4, w=1024, h=4)
    with pytest.raises(InputError, match=r"thin.mp4.*aspect ratio 256"):
        process_video(str(path))


@pytest.mark.parametrize("video_fps", [1, 2, 4, 30])
@pytest.mark.parametrize("seconds", [1, 3])
def test_encoded_short_videos_sample_like_the_formula(tmp_path, video_fps, seconds):
    n = video_fps * seconds
    path = _encode(tmp_path / "v.mp4", n, video_fps, w=32, h=32)
    try:
        want_idx, want_fps = _reference_sampling(n, video_fps)
    except ValueError:
        with pytest.raises(InputError, match="need at least 2"):
            process_video(str(path), min_pixels=1, max_pixels=32 * 32)
        return
    got = process_video(str(path), min_pixels=1, max_pixels=32 * 32)
    assert got.total_frames == n and got.video_fps == video_fps
    assert got.frame_indices == want_idx and got.sampled_fps == want_fps
    assert got.second_per_grid_t == 2 / want_fps and got.grid_thw[0] == len(want_idx) // 2
    assert got.timestamps == [want_idx[2 * g] / video_fps for g in range(len(want_idx) // 2)]


@pytest.mark.parametrize("codec", ["libx264", "libx265"])
def test_unwanted_non_reference_frames_are_not_decoded(tmp_path, codec):
    """B-frames that nothing predicts from are skipped when not sampled; every kept frame stays bit-identical."""
    if codec not in av.codecs_available:
        pytest.skip(f"this PyAV build has no {codec} encoder")
    path = tmp_path / "b.mp4"
    with av.open(str(path), "w") as c:
        s = c.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        # x264 / x265 defaults but the speed: B-frames (some of them non-reference), one keyframe only
        s.options = {"preset": "veryfast", "g": "250"} if codec == "libx264" else {"preset": "veryfast", "x265-params": "keyint=250:log-level=error"}
        for i in range(90):
            for p in s.encode(av.VideoFrame.from_ndarray(_frame(i, 64, 48), format="rgb24")):
                c.mux(p)
        for p in s.encode():
            c.mux(p)
    everything = _decode_all(path)
    with av.open(str(path)) as c:
        kinds = [f.pict_type for f in c.decode(video=0)]
    assert len(everything) == 90 and kinds.count(av.video.frame.PictureType.B) > 20, kinds
    indices = list(range(0, 90, 7))
    counts = {}
    # frame threads too: the skip setting must reach the decoder with each packet, not with a later one
    for skipping, threads in ((False, "SLICE"), (True, "SLICE"), (True, "AUTO")):
        with video_reader.open_video(path, "b.mp4") as reader:
            assert reader.can_skip
            reader.can_skip, reader.stream.thread_type = skipping, threads
            got = list(reader.frames(indices))
            counts[skipping] = reader.decoded
        assert [indices[slots[0]] for slots, _ in got] == indices
        for slots, image in got:
            np.testing.assert_array_equal(image, everything[indices[slots[0]]])
    # one keyframe: nothing to seek past, every frame up to the last sampled one (84) reaches the decoder
    assert counts[False] == 85 and counts[True] <= 70, counts  # measured: 65 (x264), 39 (x265) of 85
    full = process_video(str(path), fps=30.0, max_frames=14, min_pixels=1, max_pixels=64 * 48)
    rw, rh = full.resize.resized_size
    want, _ = _reference_pixels([everything[i] for i in full.frame_indices], rh, rw)
    np.testing.assert_allclose(full.pixel_values.numpy(), want, rtol=0, atol=1e-6)


def test_every_truncation_of_an_mp4_is_an_input_error(tmp_path):
    raw = _encode(tmp_path / "v.mp4", 20, 4).read_bytes()
    moov = raw.find(b"moov")  # x264 in mp4 writes the index last: cuts through it leave streams without a decoder
    assert moov > 0
    cuts = sorted(set(range(moov - 8, len(raw), 7)) | {1, 8, 100, moov // 2})
    outcomes = []
    for cut in cuts:
        try:
            process_video(raw[:cut], min_pixels=1, max_pixels=64 * 48)
            outcomes.append("ok")  # a cut through the trailing metadata leaves a playable file
        except InputError as err:
            outcomes.append(str(err).split(": ", 1)[1])
    assert outcomes[:4].count("ok") == 0 and outcomes.count("ok") < len(cuts) // 4, outcomes
    assert any("no decoder" in o for o in outcomes), outcomes  # the path that raised AttributeError before


def test_audio_only_and_corrupt_streams(tmp_path):
    audio = tmp_path / "sound.mp4"
    with av.open(str(audio), "w") as c:
        s = c.add_stream("aac", rate=8000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.sample_rate = 8000
        for p in list(s.encode(frame)) + list(s.encode()):
            c.mux(p)
    with pytest.raises(InputError, match=r"sound.mp4.*no video stream"):
        process_video(str(audio))
    raw = bytearray(_encode(tmp_path / "v.mp4", 20, 4).read_bytes())
    rng = np.random.default_rng(0)
    for trial in range(20):  # random bytes written over a real file: every failure is an InputError
        bad = bytearray(raw)
        for pos in rng.integers(0, len(bad), 30):
            bad[pos] = int(rng.integers(0, 256))
        try:
            process_video(bytes(bad), min_pixels=1, max_pixels=64 * 48)
        except InputError:
            pass


def test_frame_size_is_checked_from_the_header_before_decoding(tmp_path, monkeypatch):
    path = _encode(tmp_path / "big.mp4", 4, 4, w=320, h=240)

    def never(self):
        raise AssertionError("decoded a video whose header was over the cap")

    monkeypatch.setattr(video_reader.VideoReader, "_decode", never)
    with pytest.raises(InputError, match=r"big.mp4.*320x240 = 76800 pixels are over the cap max_frame_pixels=76799"):
        process_video(str(path), max_frame_pixels=76_799)
    frames = [np.zeros((240, 320, 3), np.uint8)] * 2
    with pytest.raises(InputError, match="frame 0.*76800 pixels is over the cap 76799"):
        process_video(frames, fps=1.0, max_frame_pixels=76_799)


def test_frame_list_cut_and_max_frames_like_a_video(tmp_path):
    frames = [_frame(i, 64, 48) for i in range(40)]  # 10 s at 4 fps
    path = _encode(tmp_path / "v.mp4", 40, 4)
    kw = dict(min_pixels=1, max_pixels=64 * 48)
    cut = process_video(frames, fps=4.0, start=4.0, end=8.0, **kw)
    assert cut.frame_indices == list(range(16, 33))  # every frame of the cut: 4.0 s .. 8.0 s
    assert cut.timestamps[0] == 4.0 and cut.sampled_fps == 4.0
    thinned = process_video(frames, fps=4.0, max_frames=10, **kw)
    assert thinned.frame_indices == torch.linspace(0, 39, 10).round().long().tolist()
    assert thinned.sampled_fps == pytest.approx(10 / 40 * 4.0)
    # the same cut of the encoded file at the same rate: the same frames, in the same seconds
    video = process_video(str(path), fps=4.0, start=4.0, end=8.0, **kw)
    assert video.frame_indices[0] == cut.frame_indices[0] and video.timestamps[:2] == cut.timestamps[:2]
    with pytest.raises(InputError, match="empty time range"):
        process_video(frames, fps=4.0, start=20.0, **kw)


@pytest.mark.parametrize("key, value, match", [
    ("fps", "2", "fps must be a number"), ("fps", 0, "fps must be positive"), ("fps", float("nan"), "a number"),
    ("max_frames", 2.5, "max_frames must be an integer"), ("min_frames", 0, "min_frames must be >= 1"),
    ("start", -1.0, "start must be >= 0"), ("total_pixels", -5, "total_pixels must be positive"),
    ("max_pixels", True, "max_pixels must be a number"),
])
def test_sampling_options_are_checked(tmp_path, key, value, match):
    frames = [_frame(i, 64, 48) for i in range(4)]
    with pytest.raises(InputError, match=match):
        process_video(frames, **{"fps": 1.0, key: value})


def test_min_pixels_cannot_upscale_past_the_output_ceiling(tmp_path):
    from qwen25vl.processing.video import MAX_VIDEO_OUTPUT_PIXELS

    frames = [_frame(i, 64, 48) for i in range(6)]
    path = _encode(tmp_path / "v.mp4", 12, 4)
    for source in (frames, str(path)):
        with pytest.raises(InputError, match=rf"over the ceiling of {MAX_VIDEO_OUTPUT_PIXELS}.*lower min_pixels"):
            process_video(source, fps=2.0, min_pixels=10**9)
    # just under it still works: 4 frames of (ceiling / 4) pixels each would be allowed
    assert process_video(frames[:2], fps=2.0, min_pixels=28 * 28 * 64).grid_thw[0] == 1
