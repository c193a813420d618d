"""The server's knobs: where it listens, who may call it, and the limits a request must stay within.

Every limit has a name; a request over one gets a 400 whose message names that limit and its value, so a client can
tell which knob (or which part of its request) to change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from qwen25vl.serve.fetch import FetchPolicy


@dataclass(frozen=True)
class Limits:
    max_image_pixels: int = 1280 * 28 * 28  # per image (and per video frame) after resizing
    max_request_pixels: int = 16384 * 28 * 28  # all images and video frames of one request, after resizing
    max_frames: int = 256  # per video (sampled frames, or frames given as a list)
    max_decoded_pixels: int = 100_000_000  # an image's own size before resizing (decompression bombs)
    max_frame_pixels: int = 3840 * 2160  # a video's own frame size before resizing (checked from the stream header)
    max_prompt_tokens: int = 32768  # vision tokens included
    max_tokens: int = 4096  # the most a request may ask to generate per choice
    max_n: int = 16
    max_media_items: int = 64  # images and videos in one request, counted before any is fetched or decoded
    max_token_chars: int = 64  # the longest token of the vocabulary, in characters (the app sets it from the tokenizer)
    default_max_tokens: int = 512  # when the request does not say


@dataclass(frozen=True)
class ServeSettings:
    model_name: str = "qwen2.5-vl"
    api_key: Optional[str] = None  # when set, every /v1 call needs "Authorization: Bearer <key>"
    allow_private_urls: bool = False
    local_roots: tuple[Path, ...] = ()
    max_fetch_bytes: int = 32 * 1024 * 1024
    max_body_bytes: int = 64 * 1024 * 1024  # a request body (data URLs included); more is answered 413 unread
    fetch_timeout: float = 10.0
    max_batch: int = 32  # rows (sequences) decoded together
    max_queue: int = 256  # requests waiting for a slot; more are answered 429
    request_timeout: float = 600.0  # seconds from arrival to the last token
    prefill_tokens_per_step: int = 8192
    vision_cache_bytes: int = 256 * 2**20
    # KV-cache token slots per row never grow past this (None: no bound); a request that could outgrow it is a 400
    max_slot_tokens: Optional[int] = None
    limits: Limits = field(default_factory=Limits)

    def fetch_policy(self) -> FetchPolicy:
        return FetchPolicy(allow_private=self.allow_private_urls, local_roots=tuple(self.local_roots),
                           max_bytes=self.max_fetch_bytes, timeout=self.fetch_timeout)
