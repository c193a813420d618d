"""A key/value cache allocated once per request, with per-row write offsets (rows may sit at different lengths).

Slots are used left to right; each row writes at its own `lengths[b]`. Padding (left padding of a batched prompt, or
the gap after joining caches of different lengths) stays in the cache as slots whose `key_valid` is False, so the
mask, not the layout, keeps it out of attention. M-RoPE needs one number per row to keep positioning text after a
prompt with images, `rope_deltas` (max position + 1 - valid tokens); it lives here, not on the model.

One forward with T new tokens per row: the model (optionally) calls `stage(valid)`, then each layer calls
`update(layer, k, v)`, then the model calls `advance(T, valid)` once.

A cache never grows by itself: `max_len` and `capacity` are fixed at allocation. The server's scheduler grows it on
demand with `resized` (a new allocation, the running rows' used slots copied once), doubling the short dimension, so
n tokens per row cost O(log n) copies; rows join (`add_rows`) and leave (`remove_rows`) within capacity in place.
"""

from __future__ import annotations

import torch

from qwen25vl.errors import InputError


class KVCache:
    def __init__(self, num_layers: int, batch: int, max_len: int, num_kv_heads: int, head_dim: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str | None = None,
                 capacity: int | None = None):
        capacity = batch if capacity is None else capacity
        if min(num_layers, capacity, max_len, num_kv_heads, head_dim) <= 0 or batch < 0 or capacity < batch:
            raise InputError(f"KVCache sizes must be positive, got layers {num_layers}, batch {batch}, "
                             f"capacity {capacity}, max_len {max_len}, kv heads {num_kv_heads}, head_dim {head_dim}")
        shape = (num_layers, capacity, num_kv_heads, max_len, head_dim)
        # (k, v, lengths, key_valid, rope_deltas) for every slot; the running rows are the first `batch` of them
        self._store = (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device),
                       torch.zeros(capacity, dtype=torch.long, device=device),
                       torch.zeros(capacity, max_len, dtype=torch.bool, device=device),
                       torch.zeros(capacity, dtype=torch.long, device=device))
        self._rows = batch
        self._host_lengths = [0] * batch  # a host copy: decode steps need no device-to-host sync
        self._parent: tuple[KVCache, int] | None = None  # (cache, first row) of a `rows_view`
        self._bind()

    def _bind(self) -> None:
        """Point k, v, lengths, key_valid, rope_deltas at the running rows (views: nothing is copied)."""
        k, v, lengths, key_valid, deltas = self._store
        n = self._rows
        self.k, self.v = k[:, :n], v[:, :n]  # (L, B, Hkv, max_len, D)
        self.lengths = lengths[:n]  # read-only outside this class
        self.key_valid, self.rope_deltas = key_valid[:n], deltas[:n]
        self._pending: torch.Tensor | None = None  # (B, T) validity of the tokens being written
        self._step: tuple | None = None  # (T, slot index, mask) shared by every layer of one forward

    @classmethod
    def for_model(cls, model, batch: int, max_len: int, capacity: int | None = None) -> KVCache:
        cfg = model.config.text
        weight = model.model.embed_tokens.weight
        return cls(cfg.num_hidden_layers, batch, max_len, cfg.num_key_value_heads, cfg.head_dim,
                   weight.dtype, weight.device, capacity=capacity)

    # --- sizes --------------------------------------------------------------------------------------------------
    @property
    def num_layers(self) -> int:
        return self.k.shape[0]

    @property
    def batch(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def capacity(self) -> int:
        """Rows preallocated: `add_rows` opens up to capacity - batch more without copying."""
        return self._store[0].shape[1]

    def is_empty(self) -> bool:
        return self.used() == 0

    def used(self) -> int:
        """Slots used by the longest row (max of `lengths`)."""
        return max(self._host_lengths, default=0)

    def row_used(self, row: int) -> int:
        """Slots used by one running row (its `lengths` entry, read from the host copy: no device sync)."""
        if not 0 <= row < self._rows:
            raise InputError(f"row {row} outside {self._rows} running rows")
        return self._host_lengths[row]

    def num_valid(self) -> torch.Tensor:
        """(B,) long: real (non-padding) tokens seen per row."""
        return self.key_valid.sum(-1)

    # --- one forward --------------------------------------------------------------------------------------------
    def stage(self, valid: torch.Tensor | None) -> None:
        """Declare which of the next T tokens per row are real (False = padding) before the layers run."""
        self._pending = None if valid is None else valid.to(self.key_valid.device).bool()
        self._step = None

    def update(self, layer: int, k_new: torch.Tensor, v_new: torch.Tensor):
        """Write (B, Hkv, T, D) at each row's offset; return k, v (B, Hkv, S, D) and mask (B, 1, T, S) bool.

        S = max(lengths) + T. mask[b, 0, i, s]: slot s holds a real token at or before new token i, or s is token i's
        own slot (so a padding query still attends to something and never produces NaN).
        """
        batch, _, steps, _ = k_new.shape
        if batch != self.batch:
            raise InputError(f"cache holds {self.batch} rows but the forward has {batch}")
        if self._step is None or self._step[0] != steps:
            self._step = self._plan(steps)
        _, slots, mask, span = self._step
        if slots is None:  # every row at the same offset: a slice write
            start = self._host_lengths[0]
            self.k[layer, :, :, start : start + steps] = k_new
            self.v[layer, :, :, start : start + steps] = v_new
        else:
            rows = torch.arange(batch, device=slots.device)[:, None]
            # (B, Hkv, max_len, D) viewed as (B, max_len, Hkv, D) so (row, slot) pairs index one token each
            self.k[layer].transpose(1, 2)[rows, slots] = k_new.transpose(1, 2)
            self.v[layer].transpose(1, 2)[rows, slots] = v_new.transpose(1, 2)
        return self.k[layer, :, :, :span], self.v[layer, :, :, :span], mask

    def _plan(self, steps: int):
        top = self.used()
        if top + steps > self.max_len:
            raise InputError(f"KV cache overflow: {top} slots used + {steps} new tokens > max_len {self.max_len}")
        span = top + steps
        device = self.key_valid.device
        offsets = self.lengths[:, None] + torch.arange(steps, device=device)  # (B, T) slot of each new token
        same = len(set(self._host_lengths)) == 1
        valid_new = (torch.ones(self.batch, steps, dtype=torch.bool, device=device) if self._pending is None
                     else self._pending)
        if valid_new.shape != (self.batch, steps):
            raise InputError(f"staged validity has shape {tuple(valid_new.shape)}, expected {(self.batch, steps)}")
        key_valid = self.key_valid[:, :span].clone()
        key_valid.scatter_(1, offsets, valid_new)
        slot = torch.arange(span, device=device)
        mask = key_valid[:, None, :] & (slot[None, None, :] <= offsets[:, :, None])  # (B, T, S)
        mask |= slot[None, None, :] == offsets[:, :, None]
        return steps, (None if same else offsets), mask[:, None], span

    def advance(self, steps: int, valid: torch.Tensor | None = None) -> None:
        """After the layers: mark the T written slots (valid, default all) and move every row's offset by T."""
        if valid is None:
            valid = self._pending
        if valid is None:
            valid = torch.ones(self.batch, steps, dtype=torch.bool, device=self.key_valid.device)
        if steps == 0:
            return
        offsets = self.lengths[:, None] + torch.arange(steps, device=self.lengths.device)
        if self.used() + steps > self.max_len:
            raise InputError(f"KV cache overflow: advancing {steps} slots past max_len {self.max_len}")
        self.key_valid.scatter_(1, offsets, valid.to(self.key_valid.device).bool())
        self.lengths += steps
        self._host_lengths = [n + steps for n in self._host_lengths]
        self._pending = None
        self._step = None
        if self._parent is not None:  # a rows_view: its tensors are the parent's; the host copy is not
            parent, first = self._parent
            parent._host_lengths[first : first + self._rows] = self._host_lengths
            parent._step = None

    # --- rows ---------------------------------------------------------------------------------------------------
    def select(self, rows) -> KVCache:
        """A cache with only these rows (a list / tensor of indices, or a (B,) bool tensor)."""
        idx = torch.as_tensor(rows, device=self.lengths.device)
        if idx.dtype == torch.bool:
            idx = torch.nonzero(idx).flatten()
        idx = idx.long()
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.batch):
            raise InputError(f"select rows {idx.tolist()} outside batch {self.batch}")
        if idx.numel() == 0:
            raise InputError("select needs at least one row")
        out = self._empty_like(idx.numel(), self.max_len)
        host = [self._host_lengths[i] for i in idx.tolist()]
        used = max(host)  # slots beyond every kept row's length hold nothing worth copying
        out.k[:, :, :, :used] = self.k[:, idx, :, :used]
        out.v[:, :, :, :used] = self.v[:, idx, :, :used]
        out.lengths.copy_(self.lengths[idx])
        out._host_lengths = host
        out.key_valid.copy_(self.key_valid[idx])
        out.rope_deltas.copy_(self.rope_deltas[idx])
        return out

    def concat(self, other: KVCache) -> KVCache:
        """Rows of self then rows of other, in one cache of max_len = the larger of the two."""
        if (self.num_layers, self.k.shape[2], self.k.shape[4], self.k.dtype) != (
                other.num_layers, other.k.shape[2], other.k.shape[4], other.k.dtype):
            raise InputError("concat needs caches of equal layers, kv heads, head dim and dtype, got "
                             f"{tuple(self.k.shape)} {self.k.dtype} and {tuple(other.k.shape)} {other.k.dtype}")
        out = self._empty_like(self.batch + other.batch, max(self.max_len, other.max_len))
        for part, rows in ((self, slice(0, self.batch)), (other, slice(self.batch, None))):
            used = part.used()
            out.k[:, rows, :, :used] = part.k[:, :, :, :used]
            out.v[:, rows, :, :used] = part.v[:, :, :, :used]
            out.lengths[rows] = part.lengths
            out.key_valid[rows, : part.max_len] = part.key_valid
            out.rope_deltas[rows] = part.rope_deltas
        out._host_lengths = self._host_lengths + other._host_lengths
        return out

    def _empty_like(self, batch: int, max_len: int) -> KVCache:
        return KVCache(self.num_layers, batch, max_len, self.k.shape[2], self.k.shape[4], self.k.dtype,
                       self.k.device)

    # --- preallocated slots: rows join and leave in place --------------------------------------------------------
    def add_rows(self, count: int) -> range:
        """Open `count` empty rows after the running ones, in preallocated slots: the running rows are not copied.

        A reused slot's old keys stay in memory but are marked invalid, so no mask lets them in."""
        start = self._rows
        if count < 1 or start + count > self.capacity:
            raise InputError(f"cannot add {count} rows to a cache of {start} rows and capacity {self.capacity}")
        _, _, lengths, key_valid, deltas = self._store
        lengths[start : start + count] = 0
        key_valid[start : start + count] = False
        deltas[start : start + count] = 0
        self._rows += count
        self._host_lengths += [0] * count
        self._bind()
        return range(start, start + count)

    def rows_view(self, rows: range) -> KVCache:
        """A cache over running rows [start, stop) that shares this one's storage: a forward on it (a prefill of
        newly added rows) writes straight into their slots, and its offsets are mirrored here."""
        if rows.step != 1 or rows.start < 0 or rows.stop > self._rows or len(rows) == 0:
            raise InputError(f"rows_view needs a non-empty run of rows within {self._rows}, got {rows}")
        view = KVCache.__new__(KVCache)
        view._store = tuple(t[:, rows.start : rows.stop] if t.dim() == 5 else t[rows.start : rows.stop]
                            for t in self._store)
        view._rows = len(rows)
        view._host_lengths = self._host_lengths[rows.start : rows.stop]
        view._parent = (self, rows.start)
        view._bind()
        return view

    def copy_row(self, src: int, dst: int) -> None:
        """Make running row `dst` a copy of row `src` (its used slots, offsets, validity and rope delta)."""
        k, v, lengths, key_valid, deltas = self._store
        used = self._host_lengths[src]
        k[:, dst, :, :used] = k[:, src, :, :used]
        v[:, dst, :, :used] = v[:, src, :, :used]
        lengths[dst], deltas[dst] = lengths[src], deltas[src]
        key_valid[dst] = key_valid[src]
        self._host_lengths[dst] = used
        self._step = None

    def remove_rows(self, drop) -> list[int]:
        """Free these running rows in place. The last rows move into the holes (one row copied per hole below the
        new count; the others stay where they are). Returns, for each row now running, its index before the call."""
        gone = set(int(i) for i in drop)
        if any(i < 0 or i >= self._rows for i in gone):
            raise InputError(f"remove_rows {sorted(gone)} outside {self._rows} rows")
        keep = self._rows - len(gone)
        order = list(range(self._rows))
        movers = [i for i in range(keep, self._rows) if i not in gone]
        for hole, src in zip(sorted(i for i in gone if i < keep), movers):
            self.copy_row(src, hole)
            order[hole] = src
        self._rows = keep
        self._host_lengths = self._host_lengths[:keep]
        self._bind()
        return order[:keep]

    def resized(self, max_len: int, capacity: int) -> KVCache:
        """The running rows in a new cache of more slots per row or more rows (a copy: the one time rows move)."""
        if max_len < self.used() or capacity < self._rows:
            raise InputError(f"resized cache of max_len {max_len}, capacity {capacity} cannot hold {self._rows} "
                             f"rows of up to {self.used()} slots")
        out = KVCache(self.num_layers, self._rows, max_len, self.k.shape[2], self.k.shape[4], self.k.dtype,
                      self.k.device, capacity=capacity)
        used = self.used()
        keep = min(max_len, self.max_len)
        out.k[:, :, :, :used] = self.k[:, :, :, :used]
        out.v[:, :, :, :used] = self.v[:, :, :, :used]
        out.lengths.copy_(self.lengths)
        out.key_valid[:, :keep] = self.key_valid[:, :keep]
        out.rope_deltas.copy_(self.rope_deltas)
        out._host_lengths = list(self._host_lengths)
        return out
