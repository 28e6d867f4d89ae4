"""stune trial trainer: one fine-tune of a sentence-transformers model (no Ray here)."""
