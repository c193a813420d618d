"""Decision operators: keep or drop a row from its stats alone.

    - {op: threshold, stat: ngram_repeat, max: 0.3, reason: repetition}
    - {op: flag, stat: format_error, reason: malformed_answer}        # drops when the stat is truthy
    - {op: threshold, stat: answer_chars, min: 200, when: {domain: coding}}   # a domain-specific rule

`when` applies the rule only to rows whose stats equal the given values. A stat the row lacks is an error (the
stats operator is missing from the pipeline, or comes after the filter), not a silent keep.
"""

from __future__ import annotations

from qwen25vl.data.pipeline.ops import FilterOp, register
from qwen25vl.errors import ConfigError, InputError


class _StatRule(FilterOp):
    def __init__(self, stat: str, reason: str | None = None, when: dict | None = None, **settings):
        if not isinstance(stat, str) or not stat:
            raise ConfigError(f"{self.op_name}: stat must be a stats name, got {stat!r}")
        if when is not None and not isinstance(when, dict):
            raise ConfigError(f"{self.op_name}: when must be a mapping of stat -> value, got {when!r}")
        super().__init__(stat=stat, reason=reason, when=when, **settings)
        self.stat, self.reason, self.when = stat, reason or stat, when or {}

    @property
    def label(self) -> str:
        return f"{self.op_name}:{self.stat}"

    def value(self, stats: dict):
        if self.stat not in stats:
            raise InputError(f"{self.op_name}: no stat {self.stat!r} on the row (have {sorted(stats)}); put the "
                             f"operator that computes it earlier in the pipeline")
        return stats[self.stat]

    def applies(self, stats: dict) -> bool:
        return all(stats.get(k) == v for k, v in self.when.items())


@register("threshold")
class Threshold(_StatRule):
    """Drop when the stat is below `min` or above `max` (None values are dropped as `<reason>:missing`)."""

    def __init__(self, stat: str, min: float | None = None, max: float | None = None, **kw):
        if min is None and max is None:
            raise ConfigError(f"threshold on {stat!r}: give min, max or both")
        super().__init__(stat, min=min, max=max, **kw)
        self.low, self.high = min, max

    def decide(self, stats):
        if not self.applies(stats):
            return None
        value = self.value(stats)
        if value is None:
            return f"{self.reason}:missing"
        if self.low is not None and value < self.low:
            return f"{self.reason}:low"
        if self.high is not None and value > self.high:
            return f"{self.reason}:high"
        return None


@register("flag")
class Flag(_StatRule):
    """Drop when the stat is truthy; a string value (such as a format error's kind) is kept in the reason."""

    def decide(self, stats):
        if not self.applies(stats):
            return None
        value = self.value(stats)
        if not value:
            return None
        return f"{self.reason}:{value}" if isinstance(value, str) and len(value) <= 40 else self.reason


@register("keep_values")
class KeepValues(_StatRule):
    """Keep only rows whose stat is one of `values` (for example a set of domains)."""

    def __init__(self, stat: str, values: list, **kw):
        if not isinstance(values, list) or not values:
            raise ConfigError(f"keep_values on {stat!r}: values must be a non-empty list")
        super().__init__(stat, values=values, **kw)
        self.values = set(values)

    def decide(self, stats):
        if not self.applies(stats):
            return None
        return None if self.value(stats) in self.values else f"{self.reason}:other"
