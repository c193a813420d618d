"""Choosing each running row's next token: penalties, one batched `sample` call for rows without state of their
own, per-row draws for seeded and JSON-constrained rows, and OpenAI logprob entries."""

from __future__ import annotations

import torch

from qwen25vl.generation.sampling import sample
from qwen25vl.serve.json_mode import token_byte_table
from qwen25vl.serve.rows import Row


class RowSampler:
    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self._token_bytes = None

    def token_bytes(self) -> list:
        """Bytes of every token id (JSON mode and logprobs), built on first use."""
        if self._token_bytes is None:
            self._token_bytes = token_byte_table(self.tokenizer, self.vocab_size)
        return self._token_bytes

    def _penalize(self, rows: list[Row], logits: torch.Tensor) -> torch.Tensor:
        asking = [i for i, r in enumerate(rows) if r.counts is not None]
        if not asking:
            return logits
        logits = logits.clone()
        for i in asking:
            logits[i] = rows[i].penalize(logits[i])
        return logits

    def _logprobs(self, rows: list[Row], logits: torch.Tensor, tokens: list[int]) -> list:
        """OpenAI logprob entries for the rows that ask (None for the others), from the model's distribution
        after the penalties and before temperature and filtering (what vLLM reports too)."""
        out: list = [None] * len(rows)
        for i, row in enumerate(rows):
            k = row.request.top_logprobs
            if k is None:
                continue
            logp = torch.log_softmax(logits[i].float(), dim=-1)  # (V,)
            top = torch.topk(logp, k) if k else None
            entry = self._entry(tokens[i], float(logp[tokens[i]]))
            entry["top_logprobs"] = [] if top is None else [
                self._entry(int(t), float(v)) for v, t in zip(top.values.tolist(), top.indices.tolist())]
            out[i] = entry
        return out

    def _entry(self, token: int, logprob: float) -> dict:
        raw = self.token_bytes()[token] if token < self.vocab_size else None
        if raw is None:  # special tokens: their name is their text
            text = self.tokenizer.decode([token], skip_special_tokens=False)
            raw = text.encode("utf-8")
        return {"token": raw.decode("utf-8", errors="replace"), "logprob": max(logprob, -9999.0),
                "bytes": list(raw)}

    def sample(self, rows: list[Row], logits: torch.Tensor) -> tuple[list[int], list]:
        """logits (B, V) -> one token per row, and the logprob entries of the rows that ask for them.

        Rows without state of their own share one batched `sample` call (each with its own params); seeded rows
        draw from their own generator (so a seed gives the same text whatever else is running) and JSON rows are
        masked first, one row at a time.
        """
        logits = self._penalize(rows, logits)
        own = {i for i, r in enumerate(rows) if r.json is not None or r.generator is not None}
        shared = [i for i in range(len(rows)) if i not in own]
        tokens = [0] * len(rows)
        if shared:
            sub = logits if len(shared) == len(rows) else logits[shared]
            seen = None
            if any(rows[i].seen is not None for i in shared):
                seen = torch.zeros(sub.shape, dtype=torch.bool, device=sub.device)  # (B_shared, V)
                for j, i in enumerate(shared):
                    if rows[i].seen is not None:
                        seen[j] = rows[i].seen[0]
            picked = sample(sub, [rows[i].params for i in shared], None, seen).tolist()
            for j, i in enumerate(shared):
                tokens[i] = picked[j]
        for i in sorted(own):
            row, row_logits = rows[i], logits[i]
            if row.json is not None:
                row_logits = row.json.mask(row_logits, row.params.max_new_tokens - row.generated)
            tokens[i] = int(sample(row_logits[None], row.params, row.generator, row.seen)[0])
        return tokens, self._logprobs(rows, logits, tokens)
