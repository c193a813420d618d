"""The slot cache's sizing rule (`Scheduler._fit`): how many rows and token slots an allocation gets. Allocations
come in powers of two and growth doubles the short dimension, so n tokens or rows cost O(log n) copies."""

from __future__ import annotations


def pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): allocations come in few sizes, growth doubles."""
    return 1 << max(n - 1, 0).bit_length()


def slot_shape(current: tuple[int, int] | None, rows: int, tokens: int, *, floor: tuple[int, int],
               most: tuple[int, int | None]) -> tuple[int, int]:
    """(rows, token slots per row) of the allocation that holds `rows` rows of `tokens` slots: the first one
    (`current` None) at least `floor`, else `current` with each dimension that is too small doubled (or raised to
    what is needed); rows capped at most[0] and slots at most[1] (None: no cap), never below what is needed."""
    if current is None:
        capacity, length = max(pow2(rows), floor[0]), max(pow2(tokens), floor[1])
    else:
        have_rows, have_len = current
        capacity = have_rows if rows <= have_rows else max(rows, 2 * have_rows)
        length = have_len if tokens <= have_len else max(pow2(tokens), 2 * have_len)
    capacity = max(rows, min(capacity, most[0]))
    if most[1] is not None:
        length = max(tokens, min(length, most[1]))
    return capacity, length
