"""Reading a video file with PyAV: a packet index from one demux pass, then sparse decoding of the frames asked for.

The frame size is checked against a cap from the stream header before any frame is decoded (and again per decoded
frame: a stream can change size). Every failure is an `InputError` naming the item.
"""

from __future__ import annotations

import io
import math
import os
from array import array
from pathlib import Path
from typing import Sequence

import numpy as np

from qwen25vl.errors import InputError
from qwen25vl.processing.media import DEFAULT_MAX_FRAME_PIXELS


class VideoReader:
    """A PyAV container with a packet index: frame count, fps, size, and `frames(indices)` that decodes sparsely.

    The index comes from one demux pass (packets are read, not decoded). Frames are numbered in presentation
    order, like decord's and torchcodec's indices.
    """

    def __init__(self, container, name: str, max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS):
        self.container, self.name, self.max_frame_pixels = container, name, max_frame_pixels
        if not container.streams.video:
            raise InputError(f"{name}: no video stream")
        self.stream = stream = container.streams.video[0]
        ctx = stream.codec_context
        if ctx is None:  # FFmpeg found no decoder for the stream (corrupt header or unknown codec)
            raise InputError(f"{name}: no decoder for its video stream (corrupt header or unsupported codec)")
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self.size = (ctx.width, ctx.height)
        if self.fps <= 0 or not math.isfinite(self.fps) or self.size[0] <= 0 or self.size[1] <= 0:
            raise InputError(f"{name}: unreadable stream header (fps {self.fps}, size {self.size})")
        self._check_frame_size(*self.size)  # from the header, before a single frame is decoded
        self.pts, self.key_before, untimed = _packet_index(container, stream, name)
        self.total_frames = len(self.pts)
        if self.total_frames == 0:
            raise InputError(f"{name}: the video stream has no frames")
        # Frame threads only with cores to spare: process_video already keeps two busy (this decoder and the resize
        # on the calling thread), and on 2 cores frame threads cost CPU for no gain (10-minute 720p: 17.5 s with
        # PyAV's default slice threading, 19.4 s with frame threads). x264 writes one slice per frame, so slice
        # threading decodes on one core, as the reference readers' default PyAV settings do.
        stream.thread_type = "AUTO" if _cores() > 2 else "SLICE"
        # Unwanted frames that no other frame references (H.264 / HEVC non-reference B-frames: about half of x264's
        # default output) are not decoded at all: the decoder is told per packet. Only where every packet has a pts
        # (frames are matched to the index by pts, so a skipped frame cannot shift the numbering) and for codecs
        # whose FFmpeg decoder discards exactly the pictures nothing predicts from (checked bit for bit in tests).
        self.can_skip = untimed == 0 and ctx.name in _SKIP_NONREF_CODECS
        self._keep_pts: set[int] | None = None
        self.decoded = 0  # frames the decoder returned, for tests and benchmarks

    def _check_frame_size(self, width: int, height: int) -> None:
        if width * height > self.max_frame_pixels:
            raise InputError(f"{self.name}: frames of {width}x{height} = {width * height} pixels are over the cap "
                             f"max_frame_pixels={self.max_frame_pixels}")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.container.close()

    def frames(self, indices: Sequence[int], seek_gap: int = 8):
        """Yield (slots, (H, W, 3) uint8) for the sorted frame `indices`; slots = positions in `indices` (repeats
        share one decode). Seeks to a keyframe when more than `seek_gap` unwanted frames precede it."""
        wanted: dict[int, list[int]] = {}
        for slot, idx in enumerate(indices):
            wanted.setdefault(int(idx), []).append(slot)
        targets = sorted(wanted)
        index_of = {int(p): i for i, p in enumerate(self.pts)}
        self._keep_pts = {int(self.pts[t]) for t in targets} if self.can_skip else None
        pos, ti = -1, 0  # pos: index of the last decoded frame; ti: the next target
        while ti < len(targets):
            sought = int(self.key_before[targets[ti]])
            self._seek(sought)
            for frame in self._decode():
                pos = index_of.get(frame.pts, pos + 1) if frame.pts is not None else pos + 1
                if targets[ti] <= pos:
                    # converted to RGB only here; a frame missing from the stream takes the next one's place
                    image = self._rgb(frame)
                    slots = []
                    while ti < len(targets) and targets[ti] <= pos:
                        slots += wanted[targets[ti]]
                        ti += 1
                    yield slots, image
                    if ti == len(targets):
                        return
                ahead = int(self.key_before[targets[ti]])
                if ahead > pos + seek_gap and ahead > sought:
                    break  # a keyframe well ahead precedes the next wanted frame: seek there instead
            else:
                if ti < len(targets):
                    raise InputError(f"{self.name}: decoding ended before frame {targets[ti]} of {self.total_frames}")

    def _rgb(self, frame) -> np.ndarray:
        self._check_frame_size(frame.width, frame.height)  # a stream may change size mid-way
        try:
            return frame.to_ndarray(format="rgb24")
        except Exception as e:  # av.FFmpegError / ValueError: a pixel format swscale cannot convert
            raise InputError(f"{self.name}: cannot convert a frame to RGB ({e})") from None

    def _seek(self, key: int):
        try:
            self.container.seek(int(self.pts[key]), stream=self.stream, backward=True, any_frame=False)
        except Exception as e:
            raise InputError(f"{self.name}: cannot seek to frame {key} ({e})") from None

    def _decode(self):
        """Frames from the current position on; packets of frames outside `_keep_pts` are decoded only if some
        other frame references them (the codec's AVDISCARD_NONREF, set per packet: the decoder reads it when the
        packet is submitted, frame threads included)."""
        ctx, keep, skipping = self.stream.codec_context, self._keep_pts, False
        ctx.skip_frame = "DEFAULT"  # a previous pass may have stopped while skipping
        try:
            for packet in self.container.demux(self.stream):
                if keep is not None:
                    skip = packet.size > 0 and packet.pts is not None and packet.pts not in keep
                    if skip != skipping:
                        ctx.skip_frame, skipping = ("NONREF" if skip else "DEFAULT"), skip
                for frame in packet.decode():
                    self.decoded += 1
                    yield frame
        except Exception as e:  # av.FFmpegError: a corrupt packet or an unsupported codec
            raise InputError(f"{self.name}: cannot decode ({e})") from None


def _packet_index(container, stream, name: str):
    """One demux pass: (pts in presentation order, last keyframe at or before each frame, packets without a pts)."""
    pts, keys, untimed = array("q"), bytearray(), 0  # 9 bytes a packet: a long video's index stays small
    try:
        for packet in container.demux(stream):
            if packet.size and packet.pts is not None:
                pts.append(packet.pts)
                keys.append(bool(packet.is_keyframe))
            elif packet.size:
                untimed += 1
    except Exception as e:  # av.FFmpegError and its many subclasses
        raise InputError(f"{name}: cannot read packets ({e})") from None
    order = np.argsort(np.frombuffer(pts, dtype=np.int64), kind="stable")
    key = np.frombuffer(keys, dtype=np.uint8).astype(bool)[order]
    key[:1] = True  # decoding can always start at the first frame
    # last keyframe at or before each frame: where a seek for that frame lands
    key_before = np.maximum.accumulate(np.where(key, np.arange(len(key)), 0)) if len(key) else key
    return np.frombuffer(pts, dtype=np.int64)[order], key_before, untimed


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


# FFmpeg decoders whose skip_frame=NONREF drops only pictures that no later picture predicts from
_SKIP_NONREF_CODECS = frozenset({"h264", "hevc"})


def open_video(resolved: Path | bytes, name: str, max_frame_pixels: int = DEFAULT_MAX_FRAME_PIXELS) -> VideoReader:
    """Open a local path or in-memory bytes with PyAV (the `video` extra) and index it; frames over
    `max_frame_pixels` (declared in the header, or met while decoding) are an InputError."""
    try:
        import av
    except ImportError:
        raise InputError(f"{name}: decoding video needs PyAV (pip install 'qwen25vl[video]')") from None
    try:
        container = av.open(io.BytesIO(resolved) if isinstance(resolved, bytes) else os.fspath(resolved))
    except Exception as e:  # av.FFmpegError (InvalidDataError & co.), OSError
        raise InputError(f"{name}: not a readable video ({e})") from None
    try:
        return VideoReader(container, name, max_frame_pixels)
    except BaseException:
        container.close()
        raise
