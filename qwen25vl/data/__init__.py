"""Training data: records (JSONL of OpenAI-style messages), converters, encoding into samples, packing, loaders."""
