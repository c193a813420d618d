"""Stop strings over streamed text.

A stop string may arrive split over several tokens, so a stream must hold back any tail of the text that could still
grow into a stop string; it is released once the next text shows it was not one. The returned text never contains a
stop string nor any piece of one.
"""

from __future__ import annotations

from typing import Sequence


def find_stop(text: str, stops: Sequence[str], start: int = 0) -> int | None:
    """Index where the earliest stop string begins in text (searching from `start`), or None."""
    best = None
    for stop in stops:
        i = text.find(stop, start)
        if i >= 0 and (best is None or i < best):
            best = i
    return best


def partial_stop_len(text: str, stops: Sequence[str]) -> int:
    """Length of the longest tail of text that is a proper prefix of some stop string (what must be held back)."""
    longest = 0
    for stop in stops:
        for n in range(min(len(stop) - 1, len(text)), longest, -1):
            if text.endswith(stop[:n]):
                longest = n
                break
    return longest


class StopStringFilter:
    """Feed text deltas in, get the deltas that are safe to show out; `stopped` turns True at a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.max_len = max((len(s) for s in self.stops), default=0)
        self.text = ""  # everything received
        self.emitted = 0  # characters of `text` already released
        self.stopped = False

    def push(self, delta: str) -> str:
        if self.stopped or not delta:
            return ""
        search_from = max(0, len(self.text) - self.max_len + 1)  # a new match must overlap the new text
        self.text += delta
        if not self.stops:
            return self._release(len(self.text))
        cut = find_stop(self.text, self.stops, search_from)
        if cut is not None:
            self.stopped = True
            self.text = self.text[:cut]
            return self._release(cut)
        return self._release(len(self.text) - partial_stop_len(self.text, self.stops))

    def flush(self) -> str:
        """At the end of generation (not at a stop string), the held-back tail was not a stop string after all."""
        return "" if self.stopped else self._release(len(self.text))

    def _release(self, upto: int) -> str:
        upto = max(upto, self.emitted)
        out = self.text[self.emitted : upto]
        self.emitted = upto
        return out
