"""Deduplication: MinHash signatures of a record's text (a stats operator, computed in parallel), then global
decisions over every live row in input order, so the first of a group is kept and the result does not depend on
how the rows were sharded or scheduled.

    - {op: minhash, num_perm: 64, ngram: 3}
    - {op: near_dup, threshold: 0.8}            # MinHash LSH (datasketch) over the `minhash` stat
    - {op: media_hash}
    - {op: exact_dup, stat: media_hash}         # exact duplicates of the media by content hash
"""

from __future__ import annotations

import re

from qwen25vl.data.pipeline.ops import GlobalOp, StatsOp, answer_texts, question_text, register
from qwen25vl.errors import ConfigError, InputError

_WORD = re.compile(r"\w+", re.UNICODE)
SCHEME = "affine32"  # datasketch >= 2's permutation scheme (32-bit values); near_dup must be told the same


def shingles(text: str, n: int) -> list[bytes]:
    """Word n-grams of the lower-cased text (characters for unspaced scripts), as bytes for hashing."""
    words = _WORD.findall(text.lower())
    if len(words) < n and len(text) > n and not any(c.isspace() for c in text.strip()):
        words = [c for c in text.lower() if not c.isspace()]
    if len(words) < n:
        return [" ".join(words).encode()] if words else []
    return [" ".join(words[i:i + n]).encode() for i in range(len(words) - n + 1)]


@register("minhash")
class MinHashStats(StatsOp):
    """`minhash`: the signature (num_perm ints) of the question and answers' word n-gram shingles."""

    def __init__(self, num_perm: int = 64, ngram: int = 3, seed: int = 1, scheme: str = SCHEME):
        super().__init__(num_perm=num_perm, ngram=ngram, seed=seed, scheme=scheme)
        self.num_perm, self.ngram, self.seed, self.scheme = int(num_perm), int(ngram), int(seed), scheme
        self._template = None

    def signature(self, text: str) -> list[int]:
        from datasketch import MinHash

        if self._template is None:  # the permutations are drawn once; copies share them
            self._template = MinHash(num_perm=self.num_perm, seed=self.seed, scheme=self.scheme)
        m = self._template.copy()
        grams = shingles(text, self.ngram)
        if grams:
            m.update_batch(grams)
        return [int(v) for v in m.hashvalues]

    def compute(self, rows):
        return [{"minhash": self.signature(question_text(r) + "\n" + "\n".join(answer_texts(r)))} for r in rows]


@register("near_dup")
class NearDup(GlobalOp):
    """Drop a row whose MinHash signature is near (estimated Jaccard >= threshold) an earlier kept row's: LSH finds
    the candidates, the signatures' agreement confirms them."""

    def __init__(self, threshold: float = 0.8, stat: str = "minhash", reason: str = "near_duplicate",
                 scheme: str = SCHEME):
        if not 0 < float(threshold) <= 1:
            raise ConfigError(f"near_dup threshold must be in (0, 1], got {threshold!r}")
        super().__init__(threshold=threshold, stat=stat, reason=reason, scheme=scheme)
        self.threshold, self.stat, self.reason, self.scheme = float(threshold), stat, reason, scheme

    def decide_all(self, stats):
        import numpy as np
        from datasketch import LeanMinHash, MinHashLSH

        out: list[str | None] = []
        lsh, kept = None, {}
        dtype = np.uint32 if self.scheme == "affine32" else np.uint64
        for i, s in enumerate(stats):
            values = s.get(self.stat)
            if values is None:
                raise InputError(f"near_dup: no {self.stat!r} stat on the row; put a minhash operator before it")
            values = np.asarray(values, dtype=dtype)
            if lsh is None:
                lsh = MinHashLSH(threshold=self.threshold, num_perm=len(values))
            m = LeanMinHash(seed=1, hashvalues=values, scheme=self.scheme)
            # LSH returns band collisions; the estimated Jaccard decides (no false positives from the bands)
            if any(float(np.mean(kept[key] == values)) >= self.threshold for key in lsh.query(m)):
                out.append(self.reason)
            else:
                lsh.insert(i, m)
                kept[i] = values
                out.append(None)
        return out


@register("exact_dup")
class ExactDup(GlobalOp):
    """Drop a row whose `stat` (default `media_hash`) equals an earlier kept row's; None values never match."""

    def __init__(self, stat: str = "media_hash", reason: str | None = None):
        super().__init__(stat=stat, reason=reason)
        self.stat, self.reason = stat, reason or f"duplicate_{stat}"

    def decide_all(self, stats):
        seen, out = set(), []
        for s in stats:
            if self.stat not in s:
                raise InputError(f"exact_dup: no {self.stat!r} stat on the row; compute it earlier in the pipeline")
            key = s[self.stat]
            key = tuple(key) if isinstance(key, list) else key
            if key is not None and key in seen:
                out.append(self.reason)
            else:
                if key is not None:
                    seen.add(key)
                out.append(None)
        return out
