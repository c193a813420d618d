"""Builders of tiny tokenizers and checkpoints for tests, examples and the embedded model's recipes."""
