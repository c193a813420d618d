"""Sampling, prefill/decode, streaming and batched generation."""
