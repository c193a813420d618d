"""Vision features computed once per item and optionally reused across calls.

A prompt's images (and videos) are encoded once, at prefill. With a `VisionCache`, each item's features are kept,
keyed by a hash of its pixel_values bytes and grid, in an LRU bounded by bytes: asking again about the same picture
skips the tower. A cache belongs to one model (features depend on its weights).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict

import torch


def item_key(kind: str, pixel_values: torch.Tensor, grid: tuple[int, int, int]) -> str:
    data = pixel_values.detach().contiguous().cpu()
    digest = hashlib.blake2b(digest_size=20)
    digest.update(f"{kind}|{tuple(grid)}|{data.dtype}|{tuple(data.shape)}".encode())
    digest.update(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"")
    return digest.hexdigest()


class VisionCache:
    """LRU map content hash -> features (tokens, hidden), bounded by the features' bytes."""

    def __init__(self, max_bytes: int = 512 * 2**20):
        self.max_bytes = int(max_bytes)
        self.bytes = 0
        self.hits = 0
        self.misses = 0
        self._items: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> torch.Tensor | None:
        feats = self._items.get(key)
        if feats is None:
            self.misses += 1
            return None
        self._items.move_to_end(key)
        self.hits += 1
        return feats

    def put(self, key: str, feats: torch.Tensor) -> None:
        size = feats.numel() * feats.element_size()
        if size > self.max_bytes:
            return  # bigger than the whole budget: not worth evicting everything for
        if key in self._items:
            self.bytes -= self._nbytes(self._items.pop(key))
        self._items[key] = feats
        self.bytes += size
        while self.bytes > self.max_bytes:
            _, old = self._items.popitem(last=False)
            self.bytes -= self._nbytes(old)

    @staticmethod
    def _nbytes(t: torch.Tensor) -> int:
        return t.numel() * t.element_size()

    def clear(self) -> None:
        self._items.clear()
        self.bytes = 0


def encode_items(model, kind: str, pixel_values: torch.Tensor, grid_thw: torch.Tensor, cache: VisionCache | None):
    """Features of all items in order, (sum tokens, hidden); only the items missing from the cache hit the tower.

    kind: "image" or "video" (calls model.encode_images / encode_videos). Without a cache: one tower call.
    """
    encode = model.encode_images if kind == "image" else model.encode_videos
    if cache is None:
        return encode(pixel_values, grid_thw)
    grids = [tuple(int(x) for x in g) for g in grid_thw.tolist()]
    sizes = [t * h * w for t, h, w in grids]  # patch rows per item
    pieces = torch.split(pixel_values, sizes)
    keys = [item_key(kind, p, g) for p, g in zip(pieces, grids)]
    found = [cache.get(k) for k in keys]
    missing, first_of = [], {}  # the same picture twice in one call is encoded once
    for i, f in enumerate(found):
        if f is None and keys[i] not in first_of:
            first_of[keys[i]] = i
            missing.append(i)
    if missing:
        feats = encode(torch.cat([pieces[i] for i in missing]), grid_thw[missing])
        merge = feats.shape[0] / sum(sizes[i] for i in missing)  # tokens per patch (1 / merge_size^2)
        counts = [round(sizes[i] * merge) for i in missing]
        for i, f in zip(missing, torch.split(feats, counts)):
            cache.put(keys[i], f)
            found[i] = f
        found = [f if f is not None else found[first_of[k]] for f, k in zip(found, keys)]
    return torch.cat(found)
