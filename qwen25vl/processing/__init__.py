"""Images, video, tokenizer, chat template and the processor. No nn.Module here."""
