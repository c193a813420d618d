"""Training recipes that read top to bottom: pretraining stages 1-3 and SFT (`qwen25vl train ...`)."""
