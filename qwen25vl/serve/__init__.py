"""OpenAI-compatible HTTP server with continuous batching."""
