"""Pure PyTorch Qwen2.5-VL: attention, vision tower, language model, KV cache. No I/O here."""
