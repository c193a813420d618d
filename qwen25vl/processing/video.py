"""Videos -> vision-tower input, with qwen-vl-utils' sampling rules and a decoder that only pays for what it keeps.

Sampling (qwen-vl-utils `smart_nframes` / `calculate_video_frame_range`, decord/torchcodec readers): n frames =
duration x fps, clamped to [min_frames, max_frames] and to the frame count, floored to the temporal patch (2); frame
indices = linspace(start, end, n) rounded (in float32, as torch.linspace computes them); sampled fps =
n / frames in range x video fps; second_per_grid_t = 2 / sampled fps. Frames: one smart_resize for all, with a per
frame cap max(min(768*28*28, total_pixels / n * 2), 1.05 * min_pixels); resized as torchvision does it for
qwen-vl-utils (bicubic with antialias on the float frames, clamped and rounded back to uint8), then rescaled and
normalised like images.

Decoding (PyAV) streams: one demux pass indexes the packets (frame count and keyframes, no decoding); then the
decoder, on its own thread, seeks to a keyframe whenever a whole stretch of unwanted frames can be skipped, does not
decode unwanted frames that nothing references (H.264 / HEVC non-reference B-frames), and converts to RGB only the
frames it keeps; the calling thread resizes them as they come and normalises each complete frame group straight
into pixel_values, so memory holds the output plus a few frames.
"""

from __future__ import annotations

import math
import threading
from contextlib import contextmanager
from queue import Empty, Full, Queue
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from qwen25vl.errors import InputError
from qwen25vl.processing.image import (
    DEFAULT_CONFIG,
    ImageProcessorConfig,
    ResizeInfo,
    patchify_normalize,
    smart_resize,
)
from qwen25vl.processing.media import (
    DEFAULT_MAX_FRAME_PIXELS,
    DEFAULT_MAX_VIDEO_BYTES,
    DEFAULT_TIMEOUT_S,
    describe,
    load_image,
    resolve_source,
)
from qwen25vl.processing.video_reader import open_video

FPS = 2.0
FPS_MIN_FRAMES = 4
FPS_MAX_FRAMES = 768
FRAME_FACTOR = 2
VIDEO_MIN_PIXELS = 128 * 28 * 28
VIDEO_MAX_PIXELS = 768 * 28 * 28
VIDEO_TOTAL_PIXELS = int(128000 * 28 * 28 * 0.9)  # qwen-vl-utils reads it from the (misnamed) VIDEO_MAX_PIXELS env var
# The most a video's resized frames may hold together, whatever min_pixels / total_pixels ask (2.2 GB of
# pixel_values at 12 bytes a frame pixel): min_pixels wins over the total budget in qwen-vl-utils' rule
MAX_VIDEO_OUTPUT_PIXELS = 2 * VIDEO_TOTAL_PIXELS

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class ProcessedVideo:
    pixel_values: torch.Tensor  # (grid_t * grid_h * grid_w, 1176) float32, merge-aware row order
    grid_thw: tuple[int, int, int]
    second_per_grid_t: float
    timestamps: list[float]  # seconds (in the source video) of the first frame of each frame group
    sampled_fps: float
    frame_indices: list[int]
    resize: ResizeInfo
    video_fps: float = 0.0
    total_frames: int = 0
    merge_size: int = 2

    @property
    def num_tokens(self) -> int:
        t, h, w = self.grid_thw
        return t * h * w // (self.merge_size * self.merge_size)


def _ceil_by(x: float, k: int) -> int:
    return math.ceil(x / k) * k


def _floor_by(x: float, k: int) -> int:
    return math.floor(x / k) * k


def smart_nframes(total_frames: int, video_fps: float, *, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES,
                  max_frames: int = FPS_MAX_FRAMES, name: str = "video") -> int:
    """How many frames to sample from `total_frames` at `video_fps` (qwen-vl-utils' formula)."""
    if fps <= 0 or video_fps <= 0:
        raise InputError(f"{name}: fps must be positive, got sampling fps {fps} and video fps {video_fps}")
    lo = _ceil_by(min_frames, FRAME_FACTOR)
    hi = _floor_by(min(max_frames, total_frames), FRAME_FACTOR)
    n = total_frames / video_fps * fps
    n = _floor_by(min(min(max(n, lo), hi), total_frames), FRAME_FACTOR)
    if not FRAME_FACTOR <= n <= total_frames:
        raise InputError(f"{name}: {total_frames} frame(s) in range; need at least {FRAME_FACTOR} to sample, got {n}")
    return n


def frame_range(total_frames: int, video_fps: float, start: float | None, end: float | None, name: str = "video"):
    """(first, last, count) frame of the [start, end] seconds window (qwen-vl-utils' rounding: ceil, floor)."""
    if total_frames <= 0:
        raise InputError(f"{name}: no frames")
    if start is None and end is None:
        return 0, total_frames - 1, total_frames
    duration = total_frames / video_fps
    first = math.ceil(max(0.0, min(start, duration)) * video_fps) if start is not None else 0
    last = min(math.floor(max(0.0, min(end, duration)) * video_fps), total_frames - 1) if end is not None else total_frames - 1
    if first >= last:
        raise InputError(f"{name}: empty time range start={start} end={end} (frames {first}..{last} of {total_frames} at {video_fps:g} fps)")
    return first, last, last - first + 1


def sample_frames(total_frames: int, video_fps: float, *, fps: float = FPS, min_frames: int = FPS_MIN_FRAMES,
                  max_frames: int = FPS_MAX_FRAMES, start: float | None = None, end: float | None = None,
                  name: str = "video") -> tuple[list[int], float]:
    """Frame indices to decode and the sampled fps, from the frame count alone (no decoding)."""
    first, last, count = frame_range(total_frames, video_fps, start, end, name)
    n = smart_nframes(count, video_fps, fps=fps, min_frames=min_frames, max_frames=max_frames, name=name)
    # torch.linspace in float32 is what the reference rounds; float64 rounds differently on long videos
    indices = torch.linspace(first, last, n).round().long().tolist()
    return indices, n / max(count, 1e-6) * video_fps


def frame_pixel_limits(nframes: int, min_pixels: int | None, max_pixels: int | None, total_pixels: int | None):
    """(min, max) pixels per frame: the total budget spread over frame pairs; a user max may only lower it."""
    lo = VIDEO_MIN_PIXELS if min_pixels is None else int(min_pixels)
    total = VIDEO_TOTAL_PIXELS if total_pixels is None else int(total_pixels)
    hi = max(min(VIDEO_MAX_PIXELS, total / nframes * FRAME_FACTOR), int(lo * 1.05))
    if max_pixels is not None:
        hi = min(hi, max_pixels)
    return lo, hi


def resize_frames(frames: np.ndarray, height: int, width: int, out: np.ndarray | None = None,
                  scratch: np.ndarray | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, height, width, 3) uint8 as torchvision's tensor resize (bicubic, antialias).

    Writes into `out` when given (same shape, uint8); `scratch`, a float32 array of the input's shape, is reused
    for the float copy of the input (a fresh 11 MB buffer per 720p frame costs page faults on this kind of VM)."""
    if frames.shape[1:3] == (height, width):
        if out is None:
            return frames
        out[...] = frames
        return out
    # uint8 -> float32 and the rounding back run in numpy: torch's intra-op threads spin-wait against the decoder
    # thread and other processes on a busy 2-core machine (measured 5x slower than one thread); only the
    # interpolation itself is torch's (the reference's own kernel)
    if scratch is not None and scratch.shape == frames.shape:
        np.copyto(scratch, frames, casting="unsafe")
        src = scratch
    else:
        src = frames.astype(np.float32)
    x = torch.from_numpy(src).permute(0, 3, 1, 2)  # (T, H, W, C) -> (T, C, H, W) view
    y = F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False, antialias=True)
    y = y.permute(0, 2, 3, 1).numpy()  # -> (T, h, w, C) view
    # torchvision clamps bicubic output of uint8 input, then rounds (half to even, as np.rint) back to uint8
    np.clip(y, 0, 255, out=y)
    np.rint(y, out=y)
    if out is None:
        out = np.empty((frames.shape[0], height, width, 3), dtype=np.uint8)
    np.copyto(out, y, casting="unsafe")  # exact: y holds integers in [0, 255]
    return out


def _frame_size(height: int, width: int, lo, hi, config: ImageProcessorConfig, name: str,
                nframes: int) -> tuple[int, int]:
    """The resized frame size, checked (with `nframes` frames, padded to the temporal patch) against
    MAX_VIDEO_OUTPUT_PIXELS before anything is allocated."""
    try:
        rh, rw = smart_resize(height, width, config.factor, lo, hi)
    except InputError as e:
        raise InputError(f"{name}: {e}") from None
    total = _ceil_by(nframes, config.temporal_patch_size) * rh * rw
    if total > MAX_VIDEO_OUTPUT_PIXELS:
        raise InputError(f"{name}: {nframes} frames of {rw}x{rh} = {total} pixels, over the ceiling of "
                         f"{MAX_VIDEO_OUTPUT_PIXELS} (min_pixels {lo}, max_pixels {int(hi)}): lower min_pixels")
    return rh, rw


def _finish(frames: np.ndarray, indices: list[int], sampled_fps: float, video_fps: float, total: int,
            original: tuple[int, int], config: ImageProcessorConfig, pixels: np.ndarray | None = None) -> ProcessedVideo:
    """`frames`: (n, h, w, 3) uint8, or any array of that shape when `pixels` is already computed."""
    n, rh, rw, _ = frames.shape
    if pixels is None:
        pixels = patchify_normalize(frames, config)
    tp = config.temporal_patch_size
    grid = (math.ceil(n / tp), rh // config.patch_size, rw // config.patch_size)
    spgt = tp / sampled_fps
    stamps = [indices[g * tp] / video_fps for g in range(grid[0])]
    return ProcessedVideo(torch.from_numpy(pixels), grid, spgt, stamps, sampled_fps, list(indices),
                          ResizeInfo(original, (rw, rh)), video_fps, total, config.merge_size)


def process_video(
    source: Any,
    *,
    fps: float = FPS,
    min_frames: int = FPS_MIN_FRAMES,
    max_frames: int = FPS_MAX_FRAMES,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    total_pixels: int | None = None,
    start: float | None = None,
    end: float | None = None,
    progress: Progress | None = None,
    config: ImageProcessorConfig | None = None,
    timeout: float = DEFAULT_TIMEOUT_S,
    max_bytes: int = DEFAULT_MAX_VIDEO_BYTES,
    max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS,
) -> ProcessedVideo:
    """A video file / bytes / URL, or a list of frames (paths, images, arrays) at `fps` -> ProcessedVideo.

    `start` / `end` (seconds) cut both kinds; a frame list's frames are its whole video at `fps`: all frames of the
    cut are used, evenly thinned to `max_frames`. Bounds: each source frame's width * height <= `max_frame_pixels`
    (a file's from its stream header, before decoding); downloads <= `max_bytes`; the output <= `total_pixels`.
    """
    config = config or DEFAULT_CONFIG
    is_list = isinstance(source, (list, tuple))
    name = f"video (list of {len(source)} frames)" if is_list else f"video {describe(source)}"
    check_video_options(name, fps=fps, min_frames=min_frames, max_frames=max_frames, min_pixels=min_pixels,
                        max_pixels=max_pixels, total_pixels=total_pixels, start=start, end=end)
    pixel_limits = (min_pixels, max_pixels, total_pixels)
    if is_list:
        indices, sampled_fps = frame_list_indices(len(source), fps, max_frames=max_frames, start=start, end=end,
                                                  name=name)
        return _process_frame_list(source, indices, sampled_fps, fps, pixel_limits, progress, config, timeout,
                                   max_frame_pixels, name)
    resolved = resolve_source(source, what="video", timeout=timeout, max_bytes=max_bytes)
    if resolved is None:
        raise InputError(f"{name}: unsupported source type {type(source).__name__} "
                         "(expected a path, URL, data URL, bytes or a list of frames)")
    with open_video(resolved, name, max_frame_pixels) as video:
        indices, sampled_fps = sample_frames(video.total_frames, video.fps, fps=fps, min_frames=min_frames,
                                             max_frames=max_frames, start=start, end=end, name=name)
        return _decode_video(video, indices, sampled_fps, pixel_limits, progress, config)


_INTEGER_OPTIONS = ("min_frames", "max_frames")
_OPTIONAL_POSITIVE = ("min_pixels", "max_pixels", "total_pixels")


def check_video_options(name: str, **options) -> None:
    """Types and ranges of the sampling options: numbers (ints for frame counts), finite; fps and pixel budgets > 0,
    frame counts >= 1, start / end >= 0. None leaves an optional one unset."""
    for key, value in options.items():
        if value is None and (key in _OPTIONAL_POSITIVE or key in ("start", "end")):
            continue
        number = isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool)
        if key in _INTEGER_OPTIONS:
            number = number and float(value).is_integer()
        if not number or not math.isfinite(value):
            kind = "an integer" if key in _INTEGER_OPTIONS else "a number"
            raise InputError(f"{name}: {key} must be {kind}, got {value!r}")
        low_ok = value >= 0 if key in ("start", "end") else (value >= 1 if key in _INTEGER_OPTIONS else value > 0)
        if not low_ok:
            bound = ">= 0" if key in ("start", "end") else (">= 1" if key in _INTEGER_OPTIONS else "positive")
            raise InputError(f"{name}: {key} must be {bound}, got {value!r}")


def _decode_video(video, indices: list[int], sampled_fps: float, pixel_limits, progress, config) -> ProcessedVideo:
    """Decode the sampled frames, resizing and normalising them group by group straight into pixel_values."""
    lo, hi = frame_pixel_limits(len(indices), *pixel_limits)
    width, height = video.size
    rh, rw = _frame_size(height, width, lo, hi, config, video.name, len(indices))
    n, tp = len(indices), config.temporal_patch_size
    group_rows = (rh // config.patch_size) * (rw // config.patch_size)
    # np.empty: numpy asks for huge pages on large buffers (first writes cheaper); filled group by group below
    pixels = np.empty((math.ceil(n / tp) * group_rows, 3 * tp * config.patch_size ** 2), dtype=np.float32)
    group = np.empty((tp, rh, rw, 3), dtype=np.uint8)  # the resized frames of the frame group being filled
    resized = np.empty((1, rh, rw, 3), dtype=np.uint8)
    scratch = np.empty((1, height, width, 3), dtype=np.float32)
    done = 0
    with _one_torch_thread():
        for slots, frame in _prefetch(video.frames(indices)):
            if frame.shape[:2] != (height, width):
                frame = resize_frames(frame[None], height, width)[0]  # a mid-stream size change: follow the first
            # one frame at a time: no full-size batch of floats is ever held
            resize_frames(frame[None], rh, rw, out=resized, scratch=scratch)
            # slots arrive in order (sorted indices; a repeated index takes consecutive slots): each complete
            # frame group is normalised into pixel_values now, while the decoder thread works on the next frames
            for slot in slots:
                group[slot % tp] = resized[0]
                if slot % tp == tp - 1 or slot == n - 1:
                    g = slot // tp
                    pixels[g * group_rows:(g + 1) * group_rows] = patchify_normalize(group[:slot % tp + 1], config)
            done += len(slots)
            if progress is not None:
                progress(done, n)
    shape_only = np.broadcast_to(group[:1], (n, rh, rw, 3))
    return _finish(shape_only, indices, sampled_fps, video.fps, video.total_frames, (width, height), config, pixels)


@contextmanager
def _one_torch_thread():
    """Resize on this thread's core only while the decoder thread works on the other: a second OpenMP thread per
    frame spin-waits against the decoder (measured on 2 cores, 10-minute 720p video: 30 s -> 24 s wall, 6 s less
    CPU). torch's thread count is per thread once a thread has used it, plus a default that threads starting in
    the meantime take up; both are restored on exit."""
    before = torch.get_num_threads()
    if before == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _prefetch(frames: Iterator, depth: int = 4) -> Iterator:
    """Run a decoding generator on its own thread, `depth` frames ahead: FFmpeg decodes and swscale converts
    without the GIL while this thread resizes the previous frames, so the two overlap on two cores."""
    queue: Queue = Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def produce():
        try:
            for item in frames:
                while not stop.is_set():
                    try:
                        queue.put(item, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(end)
        except BaseException as e:  # re-raised in the consumer: an InputError names the video
            queue.put(e)

    worker = threading.Thread(target=produce, name="qwen25vl-video-decode", daemon=True)
    worker.start()
    try:
        while True:
            item = queue.get()
            if item is end:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue, then let it finish
            try:
                queue.get_nowait()
            except Empty:
                pass
            worker.join(timeout=0.05)


def frame_list_indices(total: int, fps: float, *, max_frames: int = FPS_MAX_FRAMES, start: float | None = None,
                       end: float | None = None, name: str = "video") -> tuple[list[int], float]:
    """Frames of a list taken as a video at `fps`: every frame of the [start, end] cut (a list has no frames in
    between to sample more from, so min_frames adds none), evenly thinned to max_frames; and the sampled fps."""
    if total == 0:
        raise InputError(f"{name}: empty list")
    first, last, count = frame_range(total, fps, start, end, name)
    cap = _floor_by(max_frames, FRAME_FACTOR)
    if cap < FRAME_FACTOR:
        raise InputError(f"{name}: max_frames={max_frames}; need at least {FRAME_FACTOR}")
    if count <= cap:
        return list(range(first, last + 1)), float(fps)
    indices = torch.linspace(first, last, cap).round().long().tolist()  # the rounding sample_frames uses
    return indices, cap / count * fps


def _process_frame_list(frames: Sequence[Any], indices: list[int], sampled_fps: float, fps: float, pixel_limits,
                        progress, config, timeout, max_frame_pixels: int, name: str) -> ProcessedVideo:
    """The chosen frames, each resized (PIL bicubic, as qwen-vl-utils' fetch_image) as soon as it is loaded, so memory
    holds one full-size frame and the resized ones.

    Unlike qwen-vl-utils (which applies the image limits to each frame), the video limits apply, so a long list of
    frames costs what the same video would.
    """
    lo, hi = frame_pixel_limits(_ceil_by(len(indices), FRAME_FACTOR), *pixel_limits)
    out, size = None, None
    for slot, i in enumerate(indices):
        try:
            image = load_image(frames[i], timeout=timeout, max_image_pixels=max_frame_pixels)
        except InputError as e:
            raise InputError(f"video frame {i}: {e}") from None
        if out is None:
            size = image.size
            rh, rw = _frame_size(size[1], size[0], lo, hi, config, name, len(indices))
            out = np.empty((len(indices), rh, rw, 3), dtype=np.uint8)
        elif image.size != size:
            raise InputError(f"video frame {i} {describe(frames[i])}: size {image.size} differs from the first "
                             f"frame's {size}")
        out[slot] = np.asarray(image.resize((rw, rh), Image.Resampling.BICUBIC))
        if progress is not None:
            progress(slot + 1, len(indices))
    return _finish(out, indices, sampled_fps, float(fps), len(frames), size, config)
