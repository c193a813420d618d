"""Coordinate frames: the resized image the model saw versus the original image (or the real screen).

Qwen2.5-VL answers in absolute pixels of the *resized* input (the `smart_resize` output), not of the image the user
passed, and not in Qwen2-VL's 0-1000 grid. Every task maps through a `Frame`, built from the processor's `ResizeInfo`
or from plain sizes; mapping is a pure scale per axis (the processor resizes the whole image, no crop or pad).
"""

from __future__ import annotations

from dataclasses import dataclass

from qwen25vl.errors import InputError

# The official checkpoints' preprocessor_config.json limits (SPEC section 4): what the processor uses when a message
# gives none. Tasks pass their limits explicitly in the message so the frame computed here is the one the model saw.
DEFAULT_MIN_PIXELS = 56 * 56
DEFAULT_MAX_PIXELS = 28 * 28 * 16384


def _size(value, name: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in value)
    except (TypeError, ValueError):
        raise InputError(f"{name} must be (width, height), got {value!r}") from None
    if w <= 0 or h <= 0:
        raise InputError(f"{name} must be positive, got {value!r}")
    return w, h


@dataclass(frozen=True)
class Frame:
    """A pair of pixel frames: `resized_size` (what the model saw) and `original_size`, both (width, height)."""

    original_size: tuple[int, int]
    resized_size: tuple[int, int]

    def __post_init__(self):
        object.__setattr__(self, "original_size", _size(self.original_size, "original_size"))
        object.__setattr__(self, "resized_size", _size(self.resized_size, "resized_size"))

    @property
    def scale(self) -> tuple[float, float]:
        """Original pixels per resized pixel, (sx, sy)."""
        return self.original_size[0] / self.resized_size[0], self.original_size[1] / self.resized_size[1]

    def to_original(self, x: float, y: float) -> tuple[float, float]:
        sx, sy = self.scale
        return x * sx, y * sy

    def to_resized(self, x: float, y: float) -> tuple[float, float]:
        sx, sy = self.scale
        return x / sx, y / sy

    def box_to_original(self, box) -> tuple[float, float, float, float]:
        x1, y1 = self.to_original(box[0], box[1])
        x2, y2 = self.to_original(box[2], box[3])
        return x1, y1, x2, y2

    def box_to_resized(self, box, *, integer: bool = False) -> tuple:
        """Original-frame box to the model's frame. `integer=True` makes training labels the way the official
        `process_bbox` notebook does: round, then clamp into [0, size - 1]."""
        x1, y1 = self.to_resized(box[0], box[1])
        x2, y2 = self.to_resized(box[2], box[3])
        if not integer:
            return x1, y1, x2, y2
        w, h = self.resized_size
        cx = lambda v: min(max(round(v), 0), w - 1)  # noqa: E731
        cy = lambda v: min(max(round(v), 0), h - 1)  # noqa: E731
        return cx(x1), cy(y1), cx(x2), cy(y2)


def resized_size_for(original_size, *, min_pixels: int = DEFAULT_MIN_PIXELS, max_pixels: int = DEFAULT_MAX_PIXELS,
                     factor: int = 28) -> tuple[int, int]:
    """(width, height) the processor resizes an image of `original_size` (width, height) to."""
    from qwen25vl.processing.image import smart_resize  # lazy: tasks' pure parts must import without the processor

    w, h = _size(original_size, "original_size")
    rh, rw = smart_resize(h, w, factor=factor, min_pixels=min_pixels, max_pixels=max_pixels)
    return int(rw), int(rh)


def as_frame(frame=None, *, original_size=None, resized_size=None, min_pixels: int | None = None,
             max_pixels: int | None = None, factor: int = 28) -> Frame:
    """A `Frame` from a `Frame`, a processor `ResizeInfo` (anything with original_size / resized_size), or sizes;
    with only `original_size`, the resized size is computed by `smart_resize` with the given (or default) limits."""
    if frame is not None:
        if isinstance(frame, Frame):
            return frame
        try:
            return Frame(tuple(frame.original_size), tuple(frame.resized_size))
        except AttributeError:
            raise InputError(f"frame must be a Frame or ResizeInfo, got {type(frame).__name__}") from None
    if original_size is None:
        raise InputError("a coordinate frame needs a ResizeInfo or original_size")
    if resized_size is None:
        resized_size = resized_size_for(original_size, min_pixels=min_pixels or DEFAULT_MIN_PIXELS,
                                        max_pixels=max_pixels or DEFAULT_MAX_PIXELS, factor=factor)
    return Frame(tuple(original_size), tuple(resized_size))


def box_iou(a, b) -> float:
    """Intersection over union of two (x1, y1, x2, y2) boxes; 0 when both are empty."""
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    area = lambda r: max(0.0, r[2] - r[0]) * max(0.0, r[3] - r[1])  # noqa: E731
    union = area(a) + area(b) - inter
    return inter / union if union > 0 else 0.0


def iou_matrix(boxes_a, boxes_b) -> list[list[float]]:
    """IoU of every box in `boxes_a` (rows) against every box in `boxes_b` (columns)."""
    return [[box_iou(a, b) for b in boxes_b] for a in boxes_a]


def match_boxes(pred, truth, threshold: float = 0.5) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by descending IoU: (pred index, truth index, iou) for pairs at or above threshold."""
    pairs = sorted(((iou, i, j) for i, row in enumerate(iou_matrix(pred, truth)) for j, iou in enumerate(row)),
                   reverse=True)
    used_p, used_t, out = set(), set(), []
    for iou, i, j in pairs:
        if iou < threshold:
            break
        if i not in used_p and j not in used_t:
            used_p.add(i)
            used_t.add(j)
            out.append((i, j, iou))
    return out
